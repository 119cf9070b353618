"""Cosine burn-in schedules (R3GAN, Huang et al. NeurIPS 2024, section 4): learning rate, R1/R2 weight, Adam's beta2
and the EMA half-life move from a start value to an end value along half a cosine over the first `burn_in.kimg`
thousand real images.

Each value is a function of `images_seen` alone, set on the host before every step: a resumed run (which restores
images_seen) continues the schedules exactly, and nothing is read back from the device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gand.config import GandConfig, StartEnd


def cosine(start: float, end: float, progress: float) -> float:
    """start at progress 0, end at progress >= 1, half a cosine between (flat at both ends)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class BurnIn:
    images: float  # the burn-in's length in real images
    schedules: dict[str, StartEnd]  # "lr", "gamma", "beta2", "ema_half_life_kimg" -> (start, end)

    @classmethod
    def from_config(cls, cfg: GandConfig) -> BurnIn | None:
        burn_in = cfg.burn_in
        if burn_in.kimg is None or not burn_in.scheduled:
            return None
        return cls(burn_in.kimg * 1000, {name: getattr(burn_in, name) for name in burn_in.scheduled})

    def values(self, images_seen: int) -> dict[str, float]:
        """Each scheduled value at `images_seen` (real images drawn by all ranks)."""
        progress = images_seen / self.images
        return {name: cosine(start, end, progress) for name, (start, end) in self.schedules.items()}

    def apply(self, images_seen: int, recipe, optimizers, ema, lr_scale: float = 1.0) -> tuple:
        """Set this step's values: learning rates (times `lr_scale`, the collapse guard's) and beta2 in the
        optimizers' parameter groups, the EMA's half-life; returns (the recipe with this step's penalty weights, the
        values for the log line)."""
        values = self.values(images_seen)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                if "lr" in values:
                    group["lr"] = values["lr"] * lr_scale
                if "beta2" in values and "betas" in group:
                    group["betas"] = (group["betas"][0], values["beta2"])
        if "ema_half_life_kimg" in values and ema is not None:
            ema.half_life_images = values["ema_half_life_kimg"] * 1000
        if "gamma" in values:
            recipe = dataclasses.replace(
                recipe,
                r1_gamma=values["gamma"] if recipe.r1_gamma else 0.0,
                r2_gamma=values["gamma"] if recipe.r2_gamma else 0.0,
            )
        return recipe, {f"burn_in_{name}": round(value, 8) for name, value in values.items()}
