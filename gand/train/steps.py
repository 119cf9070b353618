"""The two moves of the adversarial game: one discriminator update and one generator update.

Everything a move needs that does not change between steps is in a `Recipe`, built once from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gand.augment import augment
from gand.config import GandConfig
from gand.data.loader import Batch
from gand.losses import ADVERSARIAL_LOSSES, Objective, clip_weights, gradient_penalty
from gand.models import MODELS, value_range
from gand.train.engine import Engine


@dataclass(frozen=True)
class Recipe:
    objective: Objective
    augment_policy: tuple[str, ...]
    gradient_penalty: float
    weight_clip: float | None
    latent_dim: int
    num_classes: int  # classes G is conditioned on / the class head predicts; 0 = none
    sample_classes: bool  # whether generated images get class labels (AC-GAN)
    value_range: tuple[float, float]

    @classmethod
    def from_config(cls, cfg: GandConfig, num_classes: int) -> Recipe:
        loss = cfg.loss
        objective = Objective(
            adversarial=ADVERSARIAL_LOSSES[loss.adversarial](),
            class_mode=loss.class_mode,
            class_weight=loss.class_weight,
            real_labels=loss.real_labels,
            fake_labels=loss.fake_labels,
            label_flip=loss.label_flip,
        )
        sample_classes = MODELS[cfg.model.arch].conditional or loss.class_mode == "auxiliary"
        return cls(
            objective=objective,
            augment_policy=tuple(cfg.augment.policy),
            gradient_penalty=loss.gradient_penalty,
            weight_clip=loss.weight_clip,
            latent_dim=cfg.model.latent_dim,
            num_classes=num_classes,
            sample_classes=sample_classes,
            value_range=value_range(cfg.model.g_output),
        )

    def latent(self, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(count, self.latent_dim, device=device)
        classes = torch.randint(0, self.num_classes, (count,), device=device) if self.sample_classes else None
        return z, classes

    def to_model_range(self, images: torch.Tensor) -> torch.Tensor:
        """Loader images are in [-1, 1]; a sigmoid generator's world is [0, 1]."""
        low, high = self.value_range
        return images if (low, high) == (-1.0, 1.0) else (images + 1) * (high - low) / 2 + low


@dataclass
class Networks:
    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def discriminator_update(engine: Engine, nets: Networks, recipe: Recipe, batch: Batch) -> dict[str, torch.Tensor]:
    """Real images towards "real", generated ones towards "fake" (plus class/style terms and penalties)."""
    real = recipe.to_model_range(batch.images.to(engine.device, non_blocking=True))
    z, fake_classes = recipe.latent(real.shape[0], engine.device)
    with torch.no_grad():
        fake = nets.generator(z, fake_classes)
    real, fake = augment(real, recipe.augment_policy), augment(fake, recipe.augment_policy)
    parts = recipe.objective.discriminator(
        nets.discriminator(real), nets.discriminator(fake), batch.labels.to(engine.device), fake_classes
    )
    if recipe.gradient_penalty:
        parts["gp"] = recipe.gradient_penalty * gradient_penalty(nets.discriminator, real, fake)
    nets.opt_d.zero_grad(set_to_none=True)
    engine.backward(sum(parts.values()))
    nets.opt_d.step()
    if recipe.weight_clip is not None:
        clip_weights(engine.unwrap(nets.discriminator), recipe.weight_clip)
    return parts


def generator_update(engine: Engine, nets: Networks, recipe: Recipe, count: int) -> dict[str, torch.Tensor]:
    """Make the frozen discriminator call fresh samples real (and, per the recipe, of their class / no style)."""
    z, fake_classes = recipe.latent(count, engine.device)
    with engine.frozen(nets.discriminator) as judge:
        fake = augment(nets.generator(z, fake_classes), recipe.augment_policy)
        parts = recipe.objective.generator(judge(fake), fake_classes)
        nets.opt_g.zero_grad(set_to_none=True)
        engine.backward(sum(parts.values()))
    nets.opt_g.step()
    return parts
