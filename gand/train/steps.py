"""The two moves of the adversarial game: one discriminator update and one generator update.

Everything a move needs that does not change between steps is in a `Recipe`, built once from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gand.augment import AdaptiveAugment, augment
from gand.config import GandConfig
from gand.data.loader import DataPosition
from gand.losses import ADVERSARIAL_LOSSES, LeCamAnchors, Objective, gradient_penalty, zero_centred_penalty
from gand.models import Sampling, build_from_config, from_uint8
from gand.observability.health import discriminator_outputs
from gand.observability.report import NetworkReport, StepReport
from gand.train.engine import Engine, Trained
from gand.train.feed import DeviceBatch
from gand.train.optim import build_optimizer


@dataclass(frozen=True)
class Recipe:
    objective: Objective
    augment_policy: tuple[str, ...]
    gradient_penalty: float
    weight_clip: float | None
    sampling: Sampling  # latent size, class sampling, value range: the models' contract, shared with evaluation
    critic: bool = False  # a Wasserstein critic: its outputs have no zero point (health statistics need to know)
    ada: AdaptiveAugment | None = None  # adaptive augmentation's state (mutable: p moves during training)
    r1_gamma: float = 0.0
    r2_gamma: float = 0.0
    penalty_every: int = 1

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
            lecam_weight=loss.lecam_weight,
            lecam=LeCamAnchors() if loss.lecam_weight else None,
        )
        return cls(
            objective=objective,
            augment_policy=tuple(cfg.augment.policy),
            gradient_penalty=loss.gradient_penalty,
            weight_clip=loss.weight_clip,
            sampling=Sampling.from_config(cfg, num_classes),
            critic=loss.adversarial in ("wasserstein", "rpgan"),  # RpGAN's logits mean something only as gaps
            ada=AdaptiveAugment(cfg.augment.target, cfg.augment.speed_kimg * 1000) if cfg.augment.target else None,
            r1_gamma=loss.r1_gamma,
            r2_gamma=loss.r2_gamma,
            penalty_every=loss.penalty_every,
        )

    @property
    def latent_dim(self) -> int:
        return self.sampling.latent_dim

    @property
    def num_classes(self) -> int:
        """Classes G is conditioned on / the class head predicts; 0 = none."""
        return self.sampling.num_classes

    @property
    def sample_classes(self) -> bool:
        """Whether generated images get class labels (AC-GAN)."""
        return self.sampling.sample_classes

    @property
    def value_range(self) -> tuple[float, float]:
        return self.sampling.value_range

    def latent(self, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.sampling.latent(count, device)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment with the config's policy: always, or with adaptive augmentation's current probability."""
        probability = None if self.ada is None else self.ada.probability(images.device)
        return augment(images, self.augment_policy, probability)

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (on the device) -> float32 in G's output range: [-1, 1] for tanh, [0, 1] for sigmoid."""
        return from_uint8(images, self.value_range)


def discriminator_update(
    engine: Engine, d: Trained, g: Trained, recipe: Recipe, batch: DeviceBatch, report: StepReport
) -> NetworkReport:
    """Real images towards "real", generated ones towards "fake" (plus class/style terms and penalties).

    `batch` holds uint8 images already on the device; they become the model's value range here. The batch is split
    into engine.accumulation_steps pieces whose gradients add up to the whole batch's; BatchNorm normalises each piece
    with its own statistics, as it would on a smaller batch. The loss terms go into `report.discriminator`; on a
    detailed (logging) step also D's outputs on the first piece and its gradient statistics. Nothing is read back
    from the device. Returns `report.discriminator`.
    """
    real_all = recipe.model_input(batch.images)
    steps = engine.accumulation_steps
    pieces = list(zip(real_all.chunk(steps), batch.labels.chunk(steps), strict=True))
    net = report.discriminator = NetworkReport()
    for index, (real, labels) in enumerate(pieces):
        with engine.accumulate(d, last=index == len(pieces) - 1):
            with engine.autocast():
                z, fake_classes = recipe.latent(real.shape[0], engine.device)
                with torch.no_grad():
                    fake = engine.layout(g(z, fake_classes))
                real, fake = recipe.augment(real), recipe.augment(fake)
                real_out, fake_out = d(real), d(fake)
                if recipe.ada is not None:
                    recipe.ada.observe(real_out[:, 0])
                parts = recipe.objective.discriminator(real_out, fake_out, labels, fake_classes)
                if recipe.gradient_penalty:
                    parts["gp"] = recipe.gradient_penalty * gradient_penalty(d, real, fake)
                if report.penalties_due:  # lazy regularisation: every penalty_every-th step, weighted as many times
                    lazy = recipe.penalty_every / 2
                    if recipe.r1_gamma:
                        parts["r1"] = recipe.r1_gamma * lazy * zero_centred_penalty(d, real)
                    if recipe.r2_gamma:
                        parts["r2"] = recipe.r2_gamma * lazy * zero_centred_penalty(d, fake)
            engine.backward(d, sum(parts.values()))
            if report.detailed and index == 0:
                report.d_outputs = discriminator_outputs(real_out, fake_out, recipe.critic)
        _add(net.losses, parts, len(pieces))
    if report.detailed:
        engine.gradient_stats(d, net)
    engine.step(d)
    if recipe.weight_clip is not None:
        engine.clamp_parameters(d, recipe.weight_clip)
    return net


def generator_update(
    engine: Engine,
    g: Trained,
    d: Trained,
    recipe: Recipe,
    count: int,
    report: StepReport,
    real: DeviceBatch | None = None,
) -> NetworkReport:
    """Make the frozen discriminator call fresh samples real (and, per the recipe, of their class / no style).

    A relativistic loss (RpGAN) compares each generated image with a real one: `real` (the step's real batch, uint8
    on the device, `count` images) is then run through the frozen D as well, in the same micro-batches.
    """
    net = report.generator = NetworkReport()
    pieces = engine.accumulation_steps
    sizes = [count // pieces + (index < count % pieces) for index in range(pieces)]
    real_pieces: list[torch.Tensor | None] = [None] * pieces
    if recipe.objective.adversarial.relativistic:
        if real is None or real.images.shape[0] != count:
            raise ValueError(f"{type(recipe.objective.adversarial).__name__} needs the step's {count} real images")
        real_pieces = list(recipe.model_input(real.images).split(sizes))
    with engine.frozen(d) as judge:
        for index, size in enumerate(sizes):
            with engine.accumulate(g, last=index == len(sizes) - 1):
                with engine.autocast():
                    z, fake_classes = recipe.latent(size, engine.device)
                    fake = recipe.augment(engine.layout(g(z, fake_classes)))
                    real_piece = real_pieces[index]
                    real_out = None if real_piece is None else judge(recipe.augment(real_piece))
                    parts = recipe.objective.generator(judge(fake), fake_classes, real_out)
                engine.backward(g, sum(parts.values()))
            _add(net.losses, parts, len(sizes))
    if report.detailed:
        engine.gradient_stats(g, net)
    engine.step(g)
    return net


def _add(totals: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], pieces: int) -> None:
    """The batch's loss terms: the mean over micro-batches, detached (for logging)."""
    for name, value in parts.items():
        totals[name] = totals.get(name, 0) + value.detach() / pieces


# -- the step functions on their own (the planner, benches and GPU tests use them without the loop) ------------
def build_networks(cfg: GandConfig, engine: Engine, num_classes: int) -> tuple[nn.Module, nn.Module, Any, Any]:
    """G and D (pure modules) from the config, on the engine's device, and their optimizers: (G, D, G's, D's)."""
    generator, discriminator = build_from_config(cfg, num_classes)
    engine.place(generator, discriminator)  # fused optimizers need their parameters on the device
    opt_g = build_optimizer(generator.parameters(), cfg.optim.g, fused=engine.fused_optimizers)
    opt_d = build_optimizer(discriminator.parameters(), cfg.optim.d, fused=engine.fused_optimizers)
    return generator, discriminator, opt_g, opt_d


def setup_networks(cfg: GandConfig, engine: Engine, num_classes: int) -> tuple[Trained, Trained]:
    """G and D from the config with their optimizers, set up by the engine (no checkpoint to load first)."""
    return engine.setup(*build_networks(cfg, engine, num_classes))


def synthetic_batch(cfg: GandConfig, batch_size: int, num_classes: int, engine: Engine) -> DeviceBatch:
    """Random uint8 images and labels already on the device, in the engine's layout: a batch without a loader."""
    side, channels = cfg.data.resolution, cfg.data.channels
    images = torch.randint(0, 256, (batch_size, channels, side, side), dtype=torch.uint8, device=engine.device)
    labels = torch.randint(0, max(num_classes, 1), (batch_size,), device=engine.device)
    return DeviceBatch(engine.layout(images), labels, [""] * batch_size, DataPosition())


def train_step(
    engine: Engine, g: Trained, d: Trained, recipe: Recipe, batch: DeviceBatch, detailed: bool = False
) -> StepReport:
    """One D update on `batch` and one G update of the same size (the default schedule), nothing read back."""
    report = StepReport(detailed=detailed)
    discriminator_update(engine, d, g, recipe, batch, report)
    generator_update(engine, g, d, recipe, batch.images.shape[0], report, batch)
    return report
