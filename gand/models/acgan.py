"""AC-GAN (Odena, Olah & Shlens 2017), the CIFAR-10 network of the Duke report's Tables 7-8, at 32 px.

Generator: [z, one-hot(class)] -> linear to 4x4x384 (ReLU) -> 5x5 stride-2 transposed convs 192 (BN, ReLU),
96 (BN, ReLU), 3 (tanh). Discriminator: 3x3 convs 16/32/64/128/256/512 with strides 2,1,2,1,2,1, BatchNorm on all
but the first, LeakyReLU(0.2) and dropout 0.5 after each, then one linear layer to 1 source logit + K class
logits (the table's "Linear 11" for CIFAR-10). The table's "Linear 384" is read as 384 channels at 4x4: three
stride-2 layers reach 32 px only from 4x4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gand.models.blocks import LEAKY_SLOPE, BlockStack, init_normal, output_activation, scaled

RESOLUTIONS = (32,)
G_CHANNELS = (384, 192, 96)
D_CHANNELS = (16, 32, 64, 128, 256, 512)
D_STRIDES = (2, 1, 2, 1, 2, 1)


class ACGANGenerator(nn.Module):
    def __init__(
        self,
        num_classes: int,
        latent_dim: int = 100,
        width: float = 1.0,
        channels: int = 3,
        batch_norm: bool = True,
        output: str = "tanh",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.c0, c1, c2 = (scaled(c, width) for c in G_CHANNELS)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(latent_dim + num_classes, self.c0 * 16), nn.ReLU(inplace=True)),
                _up(self.c0, c1, batch_norm, nn.ReLU(inplace=True)),
                _up(c1, c2, batch_norm, nn.ReLU(inplace=True)),
                _up(c2, channels, False, output_activation(output)),
            ]
        )
        self.apply(init_normal)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("AC-GAN's generator is class-conditional: pass labels")
        x = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        x = self.blocks[0](x).view(z.shape[0], self.c0, 4, 4)
        for block in self.blocks[1:]:
            x = block(x)
        return x


def _up(c_in: int, c_out: int, batch_norm: bool, act: nn.Module) -> nn.Sequential:
    # 5x5, stride 2, padding 2, output_padding 1: exactly doubles the side
    layers: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 5, 2, 2, output_padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(act)
    return nn.Sequential(*layers)


class ACGANDiscriminator(BlockStack):
    def __init__(
        self, num_classes: int, width: float = 1.0, channels: int = 3, batch_norm: bool = True, dropout: float = 0.5
    ):
        super().__init__()
        widths = [scaled(c, width) for c in D_CHANNELS]
        blocks = []
        c_in = channels
        for index, (c_out, stride) in enumerate(zip(widths, D_STRIDES, strict=True)):
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not (batch_norm and index))]
            if batch_norm and index:  # none on the input layer
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.LeakyReLU(LEAKY_SLOPE, inplace=True), nn.Dropout(dropout)]
            blocks.append(nn.Sequential(*layers))
            c_in = c_out
        blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(c_in * 4 * 4, 1 + num_classes)))
        self.blocks = nn.ModuleList(blocks)
        self.apply(init_normal)


def build(spec) -> tuple[nn.Module, nn.Module]:
    generator = ACGANGenerator(
        spec.num_classes, spec.latent_dim, spec.width, spec.channels, spec.g_batch_norm, spec.g_output
    )
    discriminator = ACGANDiscriminator(spec.num_classes, spec.width, spec.channels, spec.d_batch_norm, spec.d_dropout)
    return generator, discriminator
