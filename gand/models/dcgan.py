"""DCGAN (Radford, Metz & Chintala 2016) at any power-of-two resolution from 32 px.

Generator: z -> 4x4 by a transposed conv, then stride-2 transposed convs doubling the side, BatchNorm + ReLU,
tanh out. Discriminator: stride-2 convs with LeakyReLU(0.2), BatchNorm on all but the first, a 4x4 valid conv to
one logit. Weights from N(0, 0.02), BatchNorm scales from N(1, 0.02), as in the paper. At 64 px and width 1 this
is the paper's 64-128-256-512 network.

Switches for the reports' variants: BatchNorm off in G and/or D (the VNU ablation), LeakyReLU in G, dropout in D
(the Columbia report's regulariser); the WGAN critic is this D with a Wasserstein loss (logits are never squashed).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from gand.models.blocks import BlockStack, down_block, init_normal, output_activation, scaled, up_block

BASE_CHANNELS = 64
MAX_MULTIPLIER = 8  # 8 x 64 = 512 channels at the coarsest stage, as in the paper


def stage_channels(resolution: int, width: float) -> list[int]:
    """Channels at 4x4, 8x8, ... up to resolution/2 (coarse to fine), for G; D uses them fine to coarse."""
    if resolution < 32 or resolution & (resolution - 1):
        raise ValueError(f"DCGAN needs a power-of-two resolution of at least 32 px, got {resolution}")
    stages = int(math.log2(resolution)) - 2  # number of stride-2 layers between 4x4 and the image
    base = scaled(BASE_CHANNELS, width)
    return [base * min(2 ** (stages - 1 - i), MAX_MULTIPLIER) for i in range(stages)]


class DCGANGenerator(nn.Module):
    def __init__(
        self,
        resolution: int = 64,
        latent_dim: int = 100,
        width: float = 1.0,
        channels: int = 3,
        batch_norm: bool = True,
        act: str = "relu",
        output: str = "tanh",
        widths: list[int] | None = None,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        widths = widths or stage_channels(resolution, width)
        blocks = [up_block(latent_dim, widths[0], 1, 0, batch_norm, act)]  # 1x1 -> 4x4
        blocks += [up_block(c_in, c_out, 2, 1, batch_norm, act) for c_in, c_out in pairwise(widths)]
        blocks.append(
            nn.Sequential(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), output_activation(output))
        )
        self.blocks = nn.ModuleList(blocks)
        self.apply(init_normal)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = z.view(z.shape[0], self.latent_dim, 1, 1)
        for block in self.blocks:
            x = block(x)
        return x


class DCGANDiscriminator(BlockStack):
    def __init__(
        self,
        resolution: int = 64,
        width: float = 1.0,
        channels: int = 3,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = stage_channels(resolution, width)[::-1]  # fine to coarse
        blocks = [
            down_block(channels, widths[0], False, dropout, bias=not batch_norm)
        ]  # no BN on the input layer (paper)
        blocks += [down_block(c_in, c_out, batch_norm, dropout) for c_in, c_out in pairwise(widths)]
        # 4x4 -> 1x1: N x 1, the real/fake logit (bias-free, as the reference)
        blocks.append(nn.Sequential(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Flatten()))
        self.blocks = nn.ModuleList(blocks)
        self.apply(init_normal)


def build(spec) -> tuple[nn.Module, nn.Module]:
    generator = DCGANGenerator(
        spec.resolution,
        spec.latent_dim,
        spec.width,
        spec.channels,
        spec.g_batch_norm,
        spec.g_activation,
        spec.g_output,
    )
    discriminator = DCGANDiscriminator(spec.resolution, spec.width, spec.channels, spec.d_batch_norm, spec.d_dropout)
    return generator, discriminator
