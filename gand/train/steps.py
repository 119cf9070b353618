"""The two moves of the adversarial game: one discriminator update and one generator update.

Everything a move needs that does not change between steps is in a `Recipe`, built once from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gand.augment import augment
from gand.config import GandConfig
from gand.data.loader import Batch
from gand.losses import ADVERSARIAL_LOSSES, Objective, gradient_penalty
from gand.models import MODELS, value_range
from gand.observability.health import discriminator_outputs
from gand.train.engine import Engine, Trained


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
    critic: bool = False  # a Wasserstein critic: its outputs have no zero point (health statistics need to know)

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
            critic=loss.adversarial == "wasserstein",
        )

    def latent(self, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(count, self.latent_dim, device=device)
        classes = torch.randint(0, self.num_classes, (count,), device=device) if self.sample_classes else None
        return z, classes

    def to_model_range(self, images: torch.Tensor) -> torch.Tensor:
        """Loader images are in [-1, 1]; a sigmoid generator's world is [0, 1]."""
        low, high = self.value_range
        return images if (low, high) == (-1.0, 1.0) else (images + 1) * (high - low) / 2 + low


def discriminator_update(engine: Engine, d: Trained, g: Trained, recipe: Recipe, batch: Batch,
                         stats: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Real images towards "real", generated ones towards "fake" (plus class/style terms and penalties).

    The batch is split into engine.micro_batches pieces whose gradients add up to the whole batch's; BatchNorm
    normalises each piece with its own statistics, as it would on a smaller batch. With `stats`, D's outputs on
    the first piece and its gradient statistics are added to it (health metrics, on logging steps only).
    """
    real_all = recipe.to_model_range(engine.to_device(batch.images))
    labels_all = batch.labels.to(engine.device)
    pieces = list(zip(real_all.chunk(engine.micro_batches), labels_all.chunk(engine.micro_batches), strict=True))
    totals: dict[str, torch.Tensor] = {}
    for index, (real, labels) in enumerate(pieces):
        with engine.accumulate(d, last=index == len(pieces) - 1):
            z, fake_classes = recipe.latent(real.shape[0], engine.device)
            with torch.no_grad():
                fake = g(z, fake_classes)
            real, fake = augment(real, recipe.augment_policy), augment(fake, recipe.augment_policy)
            real_out, fake_out = d(real), d(fake)
            parts = recipe.objective.discriminator(real_out, fake_out, labels, fake_classes)
            if recipe.gradient_penalty:
                parts["gp"] = recipe.gradient_penalty * gradient_penalty(d, real, fake)
            engine.backward(d, sum(parts.values()))
            if stats is not None and index == 0:
                stats.update(discriminator_outputs(real_out, fake_out, recipe.critic))
        _add(totals, parts, len(pieces))
    if stats is not None:
        stats.update(engine.gradient_stats(d))
    engine.step(d)
    if recipe.weight_clip is not None:
        engine.clamp_parameters(d, recipe.weight_clip)
    return totals


def generator_update(engine: Engine, g: Trained, d: Trained, recipe: Recipe, count: int,
                     stats: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Make the frozen discriminator call fresh samples real (and, per the recipe, of their class / no style)."""
    totals: dict[str, torch.Tensor] = {}
    sizes = [piece.shape[0] for piece in torch.empty(count).chunk(engine.micro_batches)]
    with engine.frozen(d) as judge:
        for index, size in enumerate(sizes):
            with engine.accumulate(g, last=index == len(sizes) - 1):
                z, fake_classes = recipe.latent(size, engine.device)
                fake = augment(g(z, fake_classes), recipe.augment_policy)
                parts = recipe.objective.generator(judge(fake), fake_classes)
                engine.backward(g, sum(parts.values()))
            _add(totals, parts, len(sizes))
    if stats is not None:
        stats.update(engine.gradient_stats(g))
    engine.step(g)
    return totals


def _add(totals: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], pieces: int) -> None:
    """The batch's loss terms: the mean over micro-batches, detached (for logging)."""
    for name, value in parts.items():
        totals[name] = totals.get(name, 0) + value.detach() / pieces
