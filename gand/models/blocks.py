"""Layers the model families share: DCGAN-style up/down blocks, initialisation, activation choice."""

from __future__ import annotations

import torch
from torch import nn

LEAKY_SLOPE = 0.2


class BlockStack(nn.Module):
    """A network that is its `.blocks`, applied in order (the discriminators' shape)."""

    blocks: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    raise ValueError(f"unknown activation {name!r}")


def output_activation(name: str) -> nn.Module:
    """tanh gives [-1, 1], sigmoid [0, 1]; the trainer scales real images to match (see value_range)."""
    return {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[name]


def init_normal(module: nn.Module) -> None:
    """Weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0: DCGAN's recipe, also used by the Duke tables."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def up_block(c_in: int, c_out: int, stride: int, padding: int, batch_norm: bool, act: str) -> nn.Sequential:
    """4x4 transposed conv: stride 1 / padding 0 makes 4x4 from 1x1, stride 2 / padding 1 doubles the side."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(activation(act))
    return nn.Sequential(*layers)


def down_block(c_in: int, c_out: int, batch_norm: bool, dropout: float, bias: bool | None = None) -> nn.Sequential:
    """4x4 stride-2 conv halving the side, optional BatchNorm, LeakyReLU(0.2), optional dropout.

    Biases only where BatchNorm does not follow, unless `bias` says otherwise.
    """
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm if bias is None else bias)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))
