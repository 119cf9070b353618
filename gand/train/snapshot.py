"""Training's side of a checkpoint: everything training changes, saved together and brought back by one restore,
whether for a resume, a roll-back after NaN/Inf or the collapse guard's return to its best checkpoint.

The files, the weight keys and state.json are `gand.checkpoint.contents`'s; the training parts' keys are
`training_parts`'s. A new piece of training state (an augmentation probability, a schedule's progress) is one entry
there: an object with `state_dict()` and `load_state_dict()`, saved per rank and/or once, and restored by roll-backs
or by resumes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import torch

from gand import __version__
from gand.checkpoint.contents import (
    DISCRIMINATOR,
    FIXED_CLASSES,
    FIXED_NOISE,
    GENERATOR,
    GENERATOR_EMA,
    RNG,
    SavedRun,
)
from gand.checkpoint.manager import Checkpoint, CheckpointManager, CorruptCheckpoint, Snapshot
from gand.config import GandConfig
from gand.data.manifest import PackedManifest
from gand.errors import ConfigError, Diverged
from gand.train.engine import Engine, Trained
from gand.train.guard import Collapsed, CollapseGuard, set_learning_rates
from gand.train.optim import GeneratorEMA
from gand.train.state import TrainState, capture_rng, restore_rng
from gand.train.steps import Recipe

log = structlog.get_logger("gand.train")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


@dataclass
class Networks:
    """G and D in training, the EMA generator that trails G, and the fixed inputs of the sample grids."""

    g: Trained
    d: Trained
    ema: GeneratorEMA | None
    fixed_noise: torch.Tensor  # N x latent_dim, float32, on the host: the same grid all run long
    fixed_classes: torch.Tensor | None  # N, int64: row after row of 0..K-1 for a class-conditional G

    @property
    def trained(self) -> tuple[Trained, Trained]:
        return self.g, self.d


def fixed_sample_inputs(cfg: GandConfig, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sample grid's noise (seeded apart from training noise); with classes, row after row of 0..K-1."""
    seeded = torch.Generator().manual_seed(cfg.train.seed)
    noise = torch.randn(cfg.samples.count, cfg.model.latent_dim, generator=seeded)
    classes = torch.arange(cfg.samples.count) % recipe.num_classes if recipe.sample_classes else None
    return noise, classes


class RandomState:
    """This process's random-number generators (Python, NumPy, torch CPU and CUDA) as a stateful part."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state)


@dataclass(frozen=True)
class Part:
    """One piece of training state besides the networks, and where it lives in a checkpoint."""

    obj: Stateful
    per_rank: bool  # each rank keeps its own in rank-N.pt (it follows its own batches)
    shared: bool  # rank 0's copy in trainer.pt: the only copy, or (with per_rank) what every rank takes when the
    # rank count changed
    rewinds: bool  # a roll-back restores it as well as a resume (state that must go back in time with the weights)


def training_parts(recipe: Recipe, guard: CollapseGuard | None) -> dict[str, Part]:
    """Every piece of training state a checkpoint carries besides the networks, by its key in trainer.pt/rank-N.pt."""
    parts = {RNG: Part(RandomState(), per_rank=True, shared=False, rewinds=False)}
    if recipe.objective.lecam is not None:  # LeCam's moving anchors of D's outputs
        parts["lecam"] = Part(recipe.objective.lecam, per_rank=True, shared=True, rewinds=True)
    if recipe.ada is not None:  # adaptive augmentation's p and its r_t accumulator
        parts["ada"] = Part(recipe.ada, per_rank=True, shared=True, rewinds=True)
    if guard is not None:  # the best score so far and its checkpoint, the streak, roll-backs, the learning-rate scale
        parts["guard"] = Part(guard, per_rank=False, shared=True, rewinds=False)
    return parts


class CheckpointIO:
    """Saves the networks and the training parts as one checkpoint, and restores them from one."""

    def __init__(
        self,
        engine: Engine,
        networks: Networks,
        parts: dict[str, Part],
        cfg: GandConfig,
        num_classes: int,
        class_names: list[str] | None,
        tracking_run_ids: dict[str, str],
    ):
        self.engine, self.networks, self.parts = engine, networks, parts
        self.config = cfg.snapshot()
        self.num_classes = num_classes
        self.class_names = class_names[:num_classes] if class_names else None  # a resume checks their order
        self.tracking_run_ids = tracking_run_ids  # filled in as trackers start (MLflow's id exists only then)

    def save(
        self,
        checkpoints: CheckpointManager,
        state: TrainState,
        history: dict[str, Any],
        scores: dict[str, float] | None = None,
    ) -> Snapshot | None:
        """Collective: every rank calls it. None when this image count was already saved by this process."""
        nets = self.networks
        weights = {net.name: self.engine.consolidated_state_dict(net) for net in nets.trained}
        if nets.ema is not None:
            weights[GENERATOR_EMA] = nets.ema.model.state_dict()
        trainer: dict[str, Any] = {FIXED_NOISE: nets.fixed_noise, FIXED_CLASSES: nets.fixed_classes}
        rank_state: dict[str, Any] = {}
        for name, part in self.parts.items():
            part_state = part.obj.state_dict()
            if part.per_rank:
                rank_state[name] = part_state
            if part.shared:
                trainer[name] = part_state
        for net in nets.trained:
            net_state, per_rank = self.engine.optimizer_state(net)
            (rank_state if per_rank else trainer)[net.name] = net_state
        run = SavedRun(
            train=state.to_dict(),
            config=self.config,
            num_classes=self.num_classes,
            class_names=self.class_names,
            tracking_run_ids=self.tracking_run_ids,
            gand_version=__version__,
        )
        return checkpoints.save(
            state.images_seen,
            state.step,
            weights=weights,
            trainer=trainer,
            state=run.to_state(),
            rank_state=rank_state,
            history=history,
            scores=scores,
        )

    def restore(self, checkpoint: Checkpoint, resume: bool) -> TrainState:
        """Weights, optimizer state, the EMA and the parts from `checkpoint` into networks already set up; with
        `resume` also the parts that do not rewind (RNG, the guard) and the fixed sample inputs. Returns the
        checkpoint's counters; the caller decides which of them hold (a roll-back keeps the data position)."""
        own = checkpoint.rank_state or {}  # None when written by another number of ranks
        for net in self.networks.trained:
            optimizer_state = own.get(net.name) or checkpoint.trainer.get(net.name)
            if optimizer_state is None:
                raise CorruptCheckpoint(f"{checkpoint.name}: no optimizer state for the {net.name}")
            self.engine.load_network(net, checkpoint.weights[net.name], optimizer_state)
        if self.networks.ema is not None and GENERATOR_EMA in checkpoint.weights:
            self.networks.ema.model.load_state_dict(checkpoint.weights[GENERATOR_EMA])
        for name, part in self.parts.items():
            if not (resume or part.rewinds):
                continue
            part_state = own.get(name) or (checkpoint.trainer.get(name) if part.shared else None)
            if part_state is None and not part.shared:
                continue  # another rank count: this rank's own state is not in the checkpoint
            part.obj.load_state_dict(part_state or {})
        if resume:
            self.networks.fixed_noise = checkpoint.trainer[FIXED_NOISE]
            self.networks.fixed_classes = checkpoint.trainer.get(FIXED_CLASSES)
        return TrainState.from_dict(checkpoint.state["train"])


def preload_weights(checkpoint: Checkpoint | None, generator: torch.nn.Module, discriminator: torch.nn.Module) -> None:
    """A resume's weights into the pure modules before the engine sets them up: DDP starts every rank from rank 0's
    weights, and ZeRO partitions what the module holds."""
    if checkpoint is not None:
        generator.load_state_dict(checkpoint.weights[GENERATOR])
        discriminator.load_state_dict(checkpoint.weights[DISCRIMINATOR])


# -- what a resume checks --------------------------------------------------------------------------------------------
# Settings that change the networks' shapes or the meaning of their weights: a checkpoint cannot carry over.
ARCHITECTURE_FIELDS = (("data", "resolution"), ("data", "channels"), ("optim", "g"), ("optim", "d"))


def classes_to_train(resumed: Checkpoint | None, manifest: PackedManifest, num_classes: int) -> int:
    """The class head's size: the dataset's, or a resumed checkpoint's when the dataset gained classes since (their
    images are left out). Raises ConfigError when the classes it was trained on are not the dataset's first ones."""
    if resumed is None:
        return num_classes
    saved = SavedRun.from_state(resumed.state)
    if saved.class_names and list(manifest.class_names or [])[: len(saved.class_names)] != saved.class_names:
        raise ConfigError(
            f"the dataset's classes are not the ones {resumed.name} was trained on: {saved.class_names} then, "
            f"{manifest.class_names} now (a dataset packed again sorts its classes afresh); their label indices "
            "would mean other classes. Train on the original dataset, or start a new run (--fresh or another "
            "run.name)"
        )
    saved_classes = saved.num_classes or 0
    if 0 < saved_classes < num_classes:  # class names only grow: the saved ones keep their indices
        # What the running process already did (leave the new classes out) is what a resume does too; refusing
        # (exit 2) would end a Kubernetes Job for good over one new folder.
        log.warning(
            "dataset_classes_grew",
            model_classes=saved_classes,
            dataset_classes=num_classes,
            effect="images of the new classes are left out (gand_data_samples_skipped_total{reason=unknown_class})",
            to_use_them="start a new run: another run.name or checkpoint.url, or --fresh",
        )
        return saved_classes
    return num_classes


def check_resumable(resumed: Checkpoint, engine: Engine, cfg: GandConfig, num_classes: int) -> None:
    """An architecture change is an error naming the fields; ZeRO needs the same ranks and stage."""
    saved = SavedRun.from_state(resumed.state)
    now = cfg.snapshot()
    fields = [("model", name) for name in now["model"]] + list(ARCHITECTURE_FIELDS)
    changed = []
    for section, name in fields:
        before, after = saved.config.get(section, {}).get(name), now[section][name]
        if section == "optim":  # the optimiser kind decides the state's layout; its rates may change freely
            before, after = (before or {}).get("name"), after["name"]
        if before is not None and before != after:
            changed.append(f"{section}.{name}{'.name' if section == 'optim' else ''}: {before!r} -> {after!r}")
    if saved.num_classes is not None and saved.num_classes != num_classes:
        changed.append(f"dataset classes: {saved.num_classes} -> {num_classes}")
    if changed:
        raise ConfigError(
            f"checkpoint {resumed.name} was trained with a different architecture ({'; '.join(changed)}); "
            f"keep the old settings to resume, or start over with --fresh or a new run.name"
        )
    stage = saved.config.get("memory", {}).get("zero_stage", 0)
    if (stage or cfg.memory.zero_stage) and (stage != cfg.memory.zero_stage or resumed.world_size != engine.world_size):
        raise ConfigError(
            f"memory.zero_stage: {resumed.name} was written with ZeRO stage {stage} on {resumed.world_size} ranks; "
            f"resume with the same (now: stage {cfg.memory.zero_stage}, {engine.world_size} ranks), or start a new "
            "run from its exported weights"
        )


def resumed_counters(resumed: Checkpoint, saved: TrainState, world_size: int) -> TrainState:
    """The checkpoint's counters for this many ranks: models and optimizers carry over to another rank count (DDP
    keeps them whole), each rank's data slice is recomputed from the batches all ranks drew."""
    if resumed.world_size != world_size:
        saved.epoch_batches = saved.epoch_batches * resumed.world_size // world_size
        saved.data_stream_batch = saved.data_stream_batch * resumed.world_size // world_size
        log.warning(
            "world_size_changed",
            checkpoint=resumed.name,
            saved_ranks=resumed.world_size,
            ranks=world_size,
            effect="models and optimizers resume; data order and noise differ from an uninterrupted run from here on",
        )
    return saved


# -- the ways back ---------------------------------------------------------------------------------------------------
def weights_finite(engine: Engine, nets: Networks) -> bool:
    """Before saving: a NaN can hide in the weights a step before it shows in a loss. Same answer on every rank
    (the weights are the same everywhere; ZeRO-3 gathers them), so no collective is needed to agree. One device
    sync per network."""
    for net in nets.trained:
        with engine.full_weights(net) as module:
            flags = [torch.isfinite(p).all() for p in module.parameters()]
            if flags and not bool(torch.stack(flags).all()):
                return False
    return True


def roll_back_after_nan(
    checkpoint_io: CheckpointIO,
    checkpoints: CheckpointManager,
    state: TrainState,
    rollbacks: int,
    max_rollbacks: int,
    grace_seconds: float | None = None,
) -> TrainState:
    """Back to the newest commit after a NaN/Inf; the data stream goes on, so the offending batch is skipped.
    Raises Diverged after `max_rollbacks` (checkpoint.max_rollbacks) or when there is nothing to go back to."""
    log.warning("non_finite_loss", step=state.step, rollbacks=rollbacks, max_rollbacks=max_rollbacks)
    if rollbacks > max_rollbacks:
        raise Diverged(
            f"losses turned NaN/Inf at step {state.step} after {max_rollbacks} roll-backs (checkpoint.max_rollbacks); "
            "lower the learning rates, use fp32 or bf16, or add a gradient penalty / spectral norm"
        )
    checkpoints.wait(grace_seconds)  # the newest snapshot may still be uploading
    newest = checkpoints.load_latest()
    if newest is None:
        raise Diverged(f"losses turned NaN/Inf at step {state.step}, before any checkpoint to roll back to")
    try:
        rolled = checkpoint_io.restore(newest, resume=False)
    except CorruptCheckpoint as err:
        raise Diverged(f"losses turned NaN/Inf at step {state.step}; cannot roll back: {err}") from None
    rolled.record_position(state.data_position)
    log.warning("rolled_back", checkpoint=newest.name, step=rolled.step, images_seen=rolled.images_seen)
    return rolled


def return_to_best(
    checkpoint_io: CheckpointIO,
    checkpoints: CheckpointManager,
    guard: CollapseGuard,
    base_learning_rates: list[tuple[Any, float]],
    latest: float | None,
) -> None:
    """The collapse guard's roll-back: the best checkpoint's networks, optimizers and parts, with the guard's
    learning-rate scale; step and images_seen go on (they count the images drawn, and later checkpoints must not
    reuse names). Raises Collapsed when it cannot be read or lacks what a restore needs."""
    checkpoints.wait()
    if guard.best_checkpoint is None:
        raise Collapsed("guard: no best checkpoint to go back to")
    try:
        best = checkpoints.load_named(guard.best_checkpoint)
        checkpoint_io.restore(best, resume=False)
    except CorruptCheckpoint as err:
        raise Collapsed(f"guard: cannot go back to the best checkpoint: {err}") from None
    set_learning_rates(base_learning_rates, guard.lr_scale)  # a burn-in scales its own each step
    log.warning(
        "collapse_rolled_back",
        checkpoint=best.name,
        metric=guard.metric,
        best=guard.best,
        latest=latest,
        rollbacks=guard.rollbacks,
        lr_scale=guard.lr_scale,
    )
