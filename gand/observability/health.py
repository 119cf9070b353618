"""GAN health signals, as plain tensor functions: what D thinks of real and fake images, how its gradients look,
how varied G's samples are, and whether D has been winning for too long.

Computed only on logging steps (and sample steps for diversity), so their cost stays off most steps.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from gand.observability.report import DiscriminatorOutputs

VANISHING_GRADIENT = 0.01  # the Duke report's threshold: |grad| below it counts as vanished


def discriminator_outputs(real_logits: torch.Tensor, fake_logits: torch.Tensor, critic: bool) -> DiscriminatorOutputs:
    """Mean D(x) and D(G(z)) as probabilities, and D's accuracy on each (column 0 of D's output).

    A Wasserstein critic has no zero point, so "right" means on the right side of the midpoint between the real
    and fake means; for logit-based losses (non-saturating, minimax, hinge) the threshold is 0.
    """
    real, fake = real_logits[:, 0].detach().float(), fake_logits[:, 0].detach().float()
    threshold = (real.mean() + fake.mean()) / 2 if critic else torch.zeros((), device=real.device)
    return DiscriminatorOutputs(
        real=torch.sigmoid(real).mean(),
        fake=torch.sigmoid(fake).mean(),
        accuracy_real=(real > threshold).float().mean(),
        accuracy_fake=(fake < threshold).float().mean(),
    )


def layer_group(parameter_name: str) -> str:
    """`blocks.3.conv.weight` -> `blocks.3`; `head.weight` -> `head`: few, stable label values."""
    parts = parameter_name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" and len(parts) > 1 else parts[0]


def gradient_stats(module: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The gradient's L2 norm, and per layer group the share of gradient entries below VANISHING_GRADIENT."""
    squares = []
    small: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for name, param in module.named_parameters():
        if param.grad is None:
            continue
        grad = param.grad.detach().float()
        squares.append(grad.pow(2).sum())
        group = layer_group(name)
        small[group] = small.get(group, 0) + (grad.abs() < VANISHING_GRADIENT).sum()
        counts[group] = counts.get(group, 0) + grad.numel()
    if not squares:
        return torch.zeros(()), {}
    norm = torch.stack(squares).sum().sqrt()
    return norm, {group: small[group].float() / counts[group] for group in small}


def sample_diversity(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise distance between generated images over the same for real ones, both at 16 px.

    About 1 for a generator as varied as the data; towards 0 when samples look alike (mode collapse)."""
    return float(_mean_pairwise_distance(fake) / _mean_pairwise_distance(real).clamp_min(1e-8))


def _mean_pairwise_distance(images: torch.Tensor) -> torch.Tensor:
    small = F.adaptive_avg_pool2d(images.detach().float(), 16).flatten(1)
    distances = torch.cdist(small, small)
    count = small.shape[0]
    return distances.sum() / max(count * (count - 1), 1)


class DominanceWindow:
    """Whether D has been right about nearly everything (real and fake) for a whole window of log points: the
    state in which G's gradients vanish and training rarely recovers (the Duke and Rice reports' failures)."""

    def __init__(self, points: int = 20, accuracy: float = 0.95):
        self.accuracy = accuracy
        self.recent: deque[float] = deque(maxlen=points)

    def update(self, acc_real: float, acc_fake: float) -> bool:
        self.recent.append(min(acc_real, acc_fake))
        return len(self.recent) == self.recent.maxlen and min(self.recent) >= self.accuracy
