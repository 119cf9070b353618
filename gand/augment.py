"""Differentiable augmentation (after Zhao et al. 2020, "DiffAugment") for training on small datasets.

The same random transforms are applied to real and generated images before every discriminator call, in both
the D and the G step; they are differentiable, so G learns through them and does not learn to produce them.
Images are N x C x H x W in the model's value range; each transform draws its randomness per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def _color(images: torch.Tensor) -> torch.Tensor:
    n = images.shape[0]
    rand = lambda: torch.rand(n, 1, 1, 1, device=images.device, dtype=images.dtype)  # noqa: E731
    images = images + (rand() - 0.5)  # brightness
    channel_mean = images.mean(dim=1, keepdim=True)
    images = (images - channel_mean) * (rand() * 2) + channel_mean  # saturation
    pixel_mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - pixel_mean) * (rand() + 0.5) + pixel_mean  # contrast


def _translation(images: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio x its size, filling with zeros."""
    n, _, height, width = images.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), device=images.device)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), device=images.device)
    rows = torch.arange(height, device=images.device).view(1, height, 1) - dy + 1
    cols = torch.arange(width, device=images.device).view(1, 1, width) - dx + 1
    padded = F.pad(images, (1, 1, 1, 1))  # index 0 and -1 of the padded image are zeros
    rows = rows.clamp(0, height + 1).expand(n, height, width)
    cols = cols.clamp(0, width + 1).expand(n, height, width)
    batch = torch.arange(n, device=images.device).view(n, 1, 1).expand(n, height, width)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def _cutout(images: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ratio x the size per image, at a random position."""
    n, _, height, width = images.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height - cut_h + 1, (n, 1, 1), device=images.device)
    left = torch.randint(0, width - cut_w + 1, (n, 1, 1), device=images.device)
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return images * (~inside).unsqueeze(1).to(images.dtype)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def augment(images: torch.Tensor, policy: Sequence[str]) -> torch.Tensor:
    for name in policy:
        images = AUGMENTATIONS[name](images)
    return images
