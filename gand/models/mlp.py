"""The original GAN (Goodfellow et al. 2014) as rebuilt in the VNU report: multilayer perceptrons.

Generator: z(100) -> 256 -> 512 -> 1024 -> H*W*C, LeakyReLU(0.2), tanh. Discriminator: H*W*C -> 1024 -> 512 -> 256
-> 1, LeakyReLU(0.2) and dropout after each hidden layer. At 28x28x1 (MNIST) these are the report's Tables I-II.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from gand.models.blocks import LEAKY_SLOPE, BlockStack, init_normal, output_activation, scaled

GENERATOR_UNITS = (256, 512, 1024)
DISCRIMINATOR_UNITS = (1024, 512, 256)


class MLPGenerator(nn.Module):
    def __init__(
        self, resolution: int = 28, latent_dim: int = 100, width: float = 1.0, channels: int = 1, output: str = "tanh"
    ):
        super().__init__()
        self.shape = (channels, resolution, resolution)
        units = [latent_dim, *(scaled(u, width) for u in GENERATOR_UNITS)]
        blocks = [nn.Sequential(nn.Linear(a, b), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)) for a, b in pairwise(units)]
        blocks.append(nn.Sequential(nn.Linear(units[-1], channels * resolution**2), output_activation(output)))
        self.blocks = nn.ModuleList(blocks)
        self.apply(init_normal)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = z
        for block in self.blocks:
            x = block(x)
        return x.view(z.shape[0], *self.shape)


class MLPDiscriminator(BlockStack):
    def __init__(self, resolution: int = 28, width: float = 1.0, channels: int = 1, dropout: float = 0.3):
        super().__init__()
        units = [channels * resolution**2, *(scaled(u, width) for u in DISCRIMINATOR_UNITS)]
        hidden = [
            nn.Sequential(nn.Linear(a, b), nn.LeakyReLU(LEAKY_SLOPE, inplace=True), nn.Dropout(dropout))
            for a, b in pairwise(units)
        ]
        hidden[0].insert(0, nn.Flatten())  # images in, vectors on
        self.blocks = nn.ModuleList([*hidden, nn.Linear(units[-1], 1)])
        self.apply(init_normal)


def build(spec) -> tuple[nn.Module, nn.Module]:
    generator = MLPGenerator(spec.resolution, spec.latent_dim, spec.width, spec.channels, spec.g_output)
    discriminator = MLPDiscriminator(spec.resolution, spec.width, spec.channels, spec.d_dropout)
    return generator, discriminator
