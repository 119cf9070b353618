"""The collapse guard: a run whose evaluation score gets worse than its best by a margin, several evaluations in a
row, goes back to its best checkpoint (optionally with lower learning rates) or stops.

GAN training often gets better and then worse with nothing to stop it (StudioGAN's DCGAN log: FID 49 at 42k steps,
137 by 200k). Retention already keeps the best-FID checkpoint; this decides when to return to it. The decision is
made on the main rank, which evaluates, and shared with the others; the guard's state is in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from gand.config import GandConfig
from gand.errors import Diverged

LOWER_IS_BETTER = {"fid": True, "kid_mean": True, "is_mean": False}


class Collapsed(Diverged):
    """The guard stopped the run (guard.action: stop, or guard.max_rollbacks spent). Exit code 3, as Diverged."""


@dataclass
class CollapseGuard:
    action: str  # rollback | stop
    metric: str  # an evaluation score: fid, kid_mean (lower is better), is_mean (higher is better)
    margin: float  # relative: 0.1 = worse than the best by more than 10%
    patience: int  # evaluations in a row
    lr_factor: float  # learning rates are multiplied by this at each roll-back
    max_rollbacks: int
    best: float | None = None
    best_checkpoint: str | None = None
    streak: int = 0  # evaluations in a row worse than the best by more than the margin
    rollbacks: int = 0
    lr_scale: float = 1.0  # the product of lr_factor over the roll-backs so far

    @classmethod
    def from_config(cls, cfg: GandConfig) -> CollapseGuard | None:
        guard = cfg.guard
        if guard.action == "off":
            return None
        return cls(guard.action, guard.metric, guard.margin, guard.patience, guard.lr_factor, guard.max_rollbacks)

    def observe(self, scores: dict[str, float], checkpoint: str) -> str:
        """One evaluation, landed on `checkpoint`: "ok", "rollback" (to `best_checkpoint`) or "stop"."""
        value = scores[self.metric]
        lower = LOWER_IS_BETTER[self.metric]
        finite = math.isfinite(value)  # a NaN/Inf score never becomes the best; it counts as worse
        if finite and (self.best is None or (value < self.best if lower else value > self.best)):
            self.best, self.best_checkpoint, self.streak = value, checkpoint, 0
            return "ok"
        if self.best is None:
            return "ok"  # nothing to compare with yet
        worse = not finite or (
            value > self.best * (1 + self.margin) if lower else value < self.best * (1 - self.margin)
        )
        self.streak = self.streak + 1 if worse else 0
        if self.streak < self.patience:
            return "ok"
        self.streak = 0
        if self.action == "stop" or self.rollbacks >= self.max_rollbacks:
            return "stop"
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        return "rollback"

    def state_dict(self) -> dict[str, Any]:
        return {
            name: value
            for name, value in asdict(self).items()
            if name in ("best", "best_checkpoint", "streak", "rollbacks", "lr_scale")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def set_learning_rates(optimizers_and_base_rates, scale: float) -> None:
    """Each optimizer's parameter groups to its configured learning rate times `scale` (the guard's)."""
    for optimizer, base in optimizers_and_base_rates:
        for group in optimizer.param_groups:
            group["lr"] = base * scale
