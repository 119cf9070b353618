"""Optimisers per network, from the config, and the generator's exponential moving average."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from gand.config import OptimizerConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig, fused: bool = False) -> torch.optim.Optimizer:
    """`fused`: Adam's and SGD's single-kernel update, with its step counter on the device (the parameters must
    already be on their device); RMSprop has none and keeps torch's default (foreach: one kernel per group)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused or None
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}")


class GeneratorEMA:
    """A copy of G whose weights trail G's: w_ema <- beta * w_ema + (1 - beta) * w; buffers are copied.

    beta follows from a half-life in images, so the smoothing means the same thing at any batch size.
    """

    def __init__(self, generator: nn.Module, half_life_kimg: float):
        self.model = copy.deepcopy(generator).requires_grad_(False)
        self.half_life_images = half_life_kimg * 1000

    @torch.no_grad()
    def update(self, generator: nn.Module, images_per_update: int) -> None:
        # A half-life of 0 (a burn-in's start, R3GAN) makes the EMA follow G exactly.
        beta = 0.5 ** (images_per_update / self.half_life_images) if self.half_life_images > 0 else 0.0
        # One foreach kernel per call for all tensors instead of one launch per tensor.
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in generator.parameters()], 1.0 - beta)
        own, other = list(self.model.buffers()), list(generator.buffers())
        if own:
            torch._foreach_copy_(own, other)
