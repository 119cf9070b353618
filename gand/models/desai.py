"""The Rice report's "easier" generator and its discriminator, after Desai (2018), at 32 px (any multiple of 4).

Generator: dense -> (R/2)x(R/2)x128, 5x5 conv 128, one 4x4 stride-2 transposed conv 128 (the only upsampling),
two 5x5 convs 128, a 5x5 conv to the image channels, tanh; LeakyReLU(0.2) between layers.
Discriminator: 3x3 conv 128, 4x4 stride-2 convs 64 and 32, dense from (R/4)x(R/4)x32 (2048 at 32 px) to 1.
The report's point: one transposed conv instead of a stack of them avoids the checkerboard patterns it saw.
"""

from __future__ import annotations

import torch
from torch import nn

from gand.models.blocks import LEAKY_SLOPE, BlockStack, init_normal, output_activation, scaled

GENERATOR_CHANNELS = 128
DISCRIMINATOR_CHANNELS = (128, 64, 32)


def _leaky() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


class DesaiGenerator(nn.Module):
    def __init__(
        self, resolution: int = 32, latent_dim: int = 100, width: float = 1.0, channels: int = 3, output: str = "tanh"
    ):
        super().__init__()
        if resolution % 4:
            raise ValueError(f"the Desai generator needs a resolution divisible by 4, got {resolution}")
        self.latent_dim = latent_dim
        self.start_side = resolution // 2
        c = scaled(GENERATOR_CHANNELS, width)
        self.c = c
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(latent_dim, c * self.start_side**2), _leaky()),
                nn.Sequential(nn.Conv2d(c, c, 5, 1, 2), _leaky()),
                nn.Sequential(nn.ConvTranspose2d(c, c, 4, 2, 1), _leaky()),  # R/2 -> R
                nn.Sequential(nn.Conv2d(c, c, 5, 1, 2), _leaky()),
                nn.Sequential(nn.Conv2d(c, c, 5, 1, 2), _leaky()),
                nn.Sequential(nn.Conv2d(c, channels, 5, 1, 2), output_activation(output)),
            ]
        )
        self.apply(init_normal)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.blocks[0](z).view(z.shape[0], self.c, self.start_side, self.start_side)
        for block in self.blocks[1:]:
            x = block(x)
        return x


class DesaiDiscriminator(BlockStack):
    def __init__(self, resolution: int = 32, width: float = 1.0, channels: int = 3, dropout: float = 0.0):
        super().__init__()
        c1, c2, c3 = (scaled(c, width) for c in DISCRIMINATOR_CHANNELS)
        features = c3 * (resolution // 4) ** 2
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(channels, c1, 3, 1, 1), _leaky()),
                nn.Sequential(nn.Conv2d(c1, c2, 4, 2, 1), _leaky()),
                nn.Sequential(nn.Conv2d(c2, c3, 4, 2, 1), _leaky()),
                nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(features, 1)),
            ]
        )
        self.apply(init_normal)


def build(spec) -> tuple[nn.Module, nn.Module]:
    generator = DesaiGenerator(spec.resolution, spec.latent_dim, spec.width, spec.channels, spec.g_output)
    discriminator = DesaiDiscriminator(spec.resolution, spec.width, spec.channels, spec.d_dropout)
    return generator, discriminator
