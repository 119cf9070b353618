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


def augment(images: torch.Tensor, policy: Sequence[str], probability: torch.Tensor | None = None) -> torch.Tensor:
    """Each transform of `policy` in turn; with `probability` (a 0-d tensor p on the device, adaptive augmentation),
    each is applied to each image with probability p, drawn per image and per transform."""
    for name in policy:
        transformed = AUGMENTATIONS[name](images)
        if probability is None:
            images = transformed
        else:
            chosen = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < probability
            images = torch.where(chosen, transformed, images)
    return images


class AdaptiveAugment:
    """Adaptive discriminator augmentation (ADA; Karras et al., NeurIPS 2020, section 3): the probability p of each
    transform follows an overfitting signal r_t = E[sign(D(real))] over recent real images: p rises while r_t is
    above `target` (0.6 in the paper; D too sure of the training images), falls while below, by
    (images since the last adjustment) / `speed_images` each time (p can go from 0 to 1 in speed_images images).

    p, and the sums behind r_t, are 0-d tensors on the training device: observing and adjusting never wait for the
    GPU. With several ranks the sums are added across ranks at each adjustment, so every rank keeps the same p.
    `state_dict` belongs in the checkpoint.
    """

    STATE = ("p", "r_t", "_signs", "_count")  # the 0-d tensors that are its state

    def __init__(self, target: float, speed_images: float, device: torch.device | str = "cpu"):
        self.target, self.speed_images = target, speed_images
        self.p = torch.zeros((), device=device)
        self.r_t = torch.zeros((), device=device)  # the last adjustment's signal (for logs and metrics)
        self._signs = torch.zeros((), device=device)
        self._count = torch.zeros((), device=device)

    def probability(self, device: torch.device) -> torch.Tensor:
        """p on `device` (the state moves there on first use: a run builds this before it knows its device)."""
        if self.p.device != device:
            for name in self.STATE:
                setattr(self, name, getattr(self, name).to(device))
        return self.p

    def observe(self, real_logits: torch.Tensor) -> None:
        """Count the signs of D's real/fake logits on real training images (N,)."""
        self.probability(real_logits.device)
        with torch.no_grad():
            self._signs += real_logits.detach().float().sign().sum()
            self._count += real_logits.numel()

    def adjust(self, images: int) -> None:
        """Move p after `images` real images (all ranks) since the last adjustment; start counting anew."""
        with torch.no_grad():
            sums = torch.stack([self._signs, self._count])
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(sums)
            observed = sums[1] > 0  # no D update since the last adjustment (D trains every d_every-th step): keep p
            r_t = sums[0] / sums[1].clamp(min=1)
            moved = (self.p + torch.sign(r_t - self.target) * (images / self.speed_images)).clamp(0.0, 1.0)
            self.r_t = torch.where(observed, r_t, self.r_t)
            self.p = torch.where(observed, moved, self.p)
            self._signs, self._count = torch.zeros_like(self._signs), torch.zeros_like(self._count)

    def log_fields(self) -> dict[str, float]:
        """p and r_t for a logging step's line (reads two device scalars: logging steps only)."""
        return {"augment_p": round(float(self.p), 5), "augment_rt": round(float(self.r_t), 4)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().clone() for name in self.STATE}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.STATE:
            if name in state:
                setattr(self, name, state[name].to(self.p.device))
