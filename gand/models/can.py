"""CAN: Creative Adversarial Networks (Elgammal et al. 2017), the Rice report's 256 px target system.

Generator (DCGAN-style, BatchNorm + ReLU): z(100) -> 4x4x1024 -> 8x8x1024 -> 16x16x512 -> 32x32x256 -> 64x64x128
-> 128x128x64 -> 256x256x3, tanh. The 128 px variant stops one stage earlier.
Discriminator: six 4x4 stride-2 convs (32, 64, 128, 256, 512, 512), LeakyReLU(0.2), BatchNorm on all but the
first, then two dense heads on the flattened features: real/fake (1024 -> 512 -> 1) and style (1024 -> 512 -> K).
Output: N x (1 + K), column 0 the real/fake logit, columns 1..K the style logits.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from gand.models.blocks import LEAKY_SLOPE, down_block, init_normal, scaled
from gand.models.dcgan import DCGANGenerator

GENERATOR_CHANNELS = (1024, 1024, 512, 256, 128, 64)  # at 4, 8, 16, 32, 64, 128 px
DISCRIMINATOR_CHANNELS = (32, 64, 128, 256, 512, 512)
HEAD_UNITS = (1024, 512)
RESOLUTIONS = (128, 256)


def generator_channels(resolution: int, width: float) -> list[int]:
    stages = int(math.log2(resolution)) - 2
    return [scaled(c, width) for c in GENERATOR_CHANNELS[:stages]]


class CANDiscriminator(nn.Module):
    def __init__(
        self,
        resolution: int,
        num_classes: int,
        width: float = 1.0,
        channels: int = 3,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = [scaled(c, width) for c in DISCRIMINATOR_CHANNELS]
        trunk = [down_block(channels, widths[0], False, dropout, bias=not batch_norm)]
        trunk += [down_block(c_in, c_out, batch_norm, dropout) for c_in, c_out in pairwise(widths)]
        side = resolution // 2 ** len(widths)
        features = widths[-1] * side * side
        self.blocks = nn.ModuleList(trunk)
        self.real_fake = _head(features, 1, width)
        self.style = _head(features, num_classes, width)
        self.apply(init_normal)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block in self.blocks:
            x = block(x)
        x = x.flatten(1)
        return torch.cat([self.real_fake(x), self.style(x)], dim=1)


def _head(features: int, outputs: int, width: float) -> nn.Sequential:
    hidden = [scaled(units, width) for units in HEAD_UNITS]
    return nn.Sequential(
        nn.Linear(features, hidden[0]),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        nn.Linear(hidden[0], hidden[1]),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        nn.Linear(hidden[1], outputs),
    )


def build(spec) -> tuple[nn.Module, nn.Module]:
    generator = DCGANGenerator(
        spec.resolution,
        spec.latent_dim,
        spec.width,
        spec.channels,
        spec.g_batch_norm,
        spec.g_activation,
        spec.g_output,
        widths=generator_channels(spec.resolution, spec.width),
    )
    discriminator = CANDiscriminator(
        spec.resolution, spec.num_classes, spec.width, spec.channels, spec.d_batch_norm, spec.d_dropout
    )
    return generator, discriminator
