"""Adversarial losses as plain functions of discriminator logits, and their registry.

Logits, not probabilities: `softplus(-x)` is `-log(sigmoid(x))` computed without overflow, so these equal the
papers' BCE-on-sigmoid losses while staying finite in bf16 and fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class NonSaturatingLoss:
    """Goodfellow et al. 2014 with the generator maximising log D(G(z)) (the DCGAN paper's choice)."""

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(-fake_logits).mean()


ADVERSARIAL_LOSSES = {
    "nonsaturating": NonSaturatingLoss,
}
