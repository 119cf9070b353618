"""DCGAN (Radford, Metz & Chintala 2016) at any power-of-two resolution from 32 px.

Generator: z -> 4x4 by a transposed conv, then stride-2 transposed convs doubling the side, BatchNorm + ReLU,
tanh out. Discriminator: stride-2 convs with LeakyReLU(0.2), BatchNorm on all but the first, a 4x4 valid conv to
one logit. Weights from N(0, 0.02), BatchNorm scales from N(1, 0.02), as in the paper. At 64 px and width 1 this
is the paper's 64-128-256-512 network.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

BASE_CHANNELS = 64
MAX_MULTIPLIER = 8  # 8 x 64 = 512 channels at the coarsest stage, as in the paper


def stage_channels(resolution: int, width: float) -> list[int]:
    """Channels at 4x4, 8x8, ... up to resolution/2 (coarse to fine), for G; D uses them fine to coarse."""
    if resolution < 32 or resolution & (resolution - 1):
        raise ValueError(f"DCGAN needs a power-of-two resolution of at least 32 px, got {resolution}")
    stages = int(math.log2(resolution)) - 2  # number of stride-2 layers between 4x4 and the image
    base = max(1, round(BASE_CHANNELS * width))
    return [base * min(2 ** (stages - 1 - i), MAX_MULTIPLIER) for i in range(stages)]


def init_dcgan_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, resolution: int = 64, latent_dim: int = 100, width: float = 1.0, channels: int = 3):
        super().__init__()
        self.latent_dim = latent_dim
        widths = stage_channels(resolution, width)
        blocks = [_up_block(latent_dim, widths[0], stride=1, padding=0)]  # 1x1 -> 4x4
        blocks += [_up_block(c_in, c_out, stride=2, padding=1) for c_in, c_out in pairwise(widths)]
        blocks.append(nn.Sequential(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()))
        self.blocks = nn.ModuleList(blocks)
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], self.latent_dim, 1, 1)
        for block in self.blocks:
            x = block(x)
        return x


class DCGANDiscriminator(nn.Module):
    def __init__(self, resolution: int = 64, width: float = 1.0, channels: int = 3):
        super().__init__()
        widths = stage_channels(resolution, width)[::-1]  # fine to coarse
        blocks = [_down_block(channels, widths[0], batch_norm=False)]  # no BN on the input layer (paper)
        blocks += [_down_block(c_in, c_out, batch_norm=True) for c_in, c_out in pairwise(widths)]
        blocks.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))  # 4x4 -> 1x1 logit
        self.blocks = nn.ModuleList(blocks)
        self.apply(init_dcgan_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block in self.blocks:
            x = block(x)
        return x.flatten()  # logits, one per image


def _up_block(c_in: int, c_out: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _down_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def build(spec) -> tuple[nn.Module, nn.Module]:
    generator = DCGANGenerator(spec.resolution, spec.latent_dim, spec.width, spec.channels)
    discriminator = DCGANDiscriminator(spec.resolution, spec.width, spec.channels)
    return generator, discriminator
