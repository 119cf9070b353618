"""The training loop's periodic work: the log line (with the exporter, the trackers and the history), the sample grid
and the evaluation (with the collapse guard's verdict), each an object that knows when it is due, and the save, which
`RunControl`'s agreed decision calls."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from gand.checkpoint.manager import CheckpointManager, checkpoint_name
from gand.config import GandConfig
from gand.data.loader import ImageLoader
from gand.eval.fid import Evaluator
from gand.eval.samples import generate, grid_pixels, png_bytes, sampling_mode
from gand.observability.curves import LossHistory, loss_curve_png
from gand.observability.health import DominanceWindow, sample_diversity
from gand.observability.metrics import TrainingMetrics
from gand.observability.report import HostNumbers, StepReport
from gand.observability.trackers import Trackers
from gand.storage import Store
from gand.train.control import RunControl, count_due
from gand.train.engine import Engine
from gand.train.feed import DeviceBatch, DeviceFeed
from gand.train.guard import CollapseGuard
from gand.train.snapshot import CheckpointIO, Networks
from gand.train.state import TrainState
from gand.train.steps import Recipe

log = structlog.get_logger("gand.train")


def due(step: int, every_steps: int, max_steps: int) -> bool:
    """Periodic work happens every N steps and once more at the very end."""
    return step % every_steps == 0 or step == max_steps


class Throughput:
    """Images per second since the previous call."""

    def __init__(self, images_seen: int):
        self.images, self.time = images_seen, time.perf_counter()

    def images_per_second(self, images_seen: int) -> float:
        now = time.perf_counter()
        rate = (images_seen - self.images) / max(now - self.time, 1e-9)
        self.images, self.time = images_seen, now
        return rate


@dataclass
class Outputs:
    """Where a run's numbers go besides the log: the Prometheus exporter, the trackers (None: none configured) and
    the history that checkpoints carry and charts draw."""

    metrics: TrainingMetrics
    trackers: Trackers | None
    history: LossHistory


class StepLog:
    """Logging steps: the step's report read once (one collective, one copy) into the log line, the exporter, the
    trackers and the history. Nothing is read back from the device on other steps."""

    def __init__(
        self,
        cfg: GandConfig,
        engine: Engine,
        nets: Networks,
        recipe: Recipe,
        feed: DeviceFeed,
        loader: ImageLoader,
        outputs: Outputs,
        state: TrainState,
    ):
        self.every_steps, self.max_steps = cfg.train.log_every_steps, cfg.train.max_steps
        self.engine, self.nets, self.recipe, self.feed, self.loader = engine, nets, recipe, feed, loader
        self.outputs = outputs  # read at each use: trackers start after the loop's objects are built
        self.first_step = state.step
        self.throughput = Throughput(state.images_seen)
        self.dominance = DominanceWindow()

    def due(self, step: int) -> bool:
        """Whether the step starting at `step` logs. The first step of every start does too: a CPU run of CAN-256
        takes minutes to its first log_every_steps, and the first step (warm-up, compilation) shows it is alive."""
        return due(step + 1, self.every_steps, self.max_steps) or step == self.first_step

    def write(self, state: TrainState, report: StepReport, schedule_fields: dict[str, Any]) -> None:
        logged = report.read(self.engine.mean_across_ranks, self.engine.world_size, self.host_numbers(state))
        augment_fields = self.recipe.ada.log_fields() if self.recipe.ada is not None else {}
        if augment_fields:
            self.outputs.metrics.record_augment(augment_fields["augment_p"], augment_fields["augment_rt"])
        log.info(
            "train_step",
            step=state.step,
            images_seen=state.images_seen,
            epoch=state.epoch,
            **logged.log_fields(),
            **schedule_fields,
            **augment_fields,
        )
        self.outputs.metrics.record_step(logged)
        if self.outputs.trackers is not None:
            self.outputs.trackers.log_step(state.step, logged, {**schedule_fields, **augment_fields})
        self.outputs.metrics.record_damaged_shards(len(self.loader.damaged_shards))
        self.outputs.history.record_step(logged)
        if self.engine.device.type == "cuda":
            self.outputs.metrics.record_gpu_memory(
                torch.cuda.memory_allocated(), torch.cuda.memory_reserved(), torch.cuda.max_memory_allocated()
            )

    def host_numbers(self, state: TrainState) -> HostNumbers:
        """What a logging step knows on the host: progress, throughput, data counts, learning rates, fp16 scaling."""
        engine, nets = self.engine, {net.name: net for net in self.nets.trained}
        scales = {name: engine.loss_scale(net) for name, net in nets.items()}
        return HostNumbers(
            step=state.step,
            images_seen=state.images_seen,
            epoch=state.epoch,
            images_per_second=self.throughput.images_per_second(state.images_seen),
            data=self.feed.counts_since_last_read(),
            learning_rates={name: engine.learning_rate(net) for name, net in nets.items()},
            loss_scales={name: scale for name, scale in scales.items() if scale is not None},
            skipped_steps={name: net.skipped_steps for name, net in nets.items() if scales[name] is not None},
            d_dominating=lambda out: self.dominance.update(out.accuracy_real, out.accuracy_fake),
        )


class SampleGrid:
    """The fixed-noise grid and the loss curve that led to it, side by side in the run's samples folder."""

    def __init__(self, cfg: GandConfig, engine: Engine, nets: Networks, recipe: Recipe, outputs: Outputs):
        self.every_steps, self.every_images = cfg.samples.every_steps, cfg.samples.every_images
        self.max_steps, self.run_name = cfg.train.max_steps, cfg.run.name
        self.engine, self.nets, self.recipe = engine, nets, recipe
        self.outputs = outputs  # read at each use: trackers start after the loop's objects are built
        self.store = Store(cfg.run_dir)

    def maybe_write(self, state: TrainState, images_before: int, batch: DeviceBatch) -> None:
        if count_due(state.step, images_before, state.images_seen, self.every_steps, self.every_images, self.max_steps):
            self.write(state, batch)

    def write(self, state: TrainState, batch: DeviceBatch) -> None:
        engine, nets, recipe = self.engine, self.nets, self.recipe
        # Every rank runs G on the same fixed noise: under ZeRO-3 its forward gathers weights collectively.
        with (
            engine.full_weights(nets.g) as g_module,
            sampling_mode(nets.ema.model if nets.ema is not None else g_module, recipe) as sampler,
        ):
            images = generate(
                sampler,
                nets.fixed_noise.to(engine.device),
                None if nets.fixed_classes is None else nets.fixed_classes.to(engine.device),
            )
        if not engine.is_main:
            return
        grid = grid_pixels(images, value_range=recipe.value_range)
        self.store.write_bytes(f"samples/step-{state.step:06d}.png", png_bytes(grid))
        if self.outputs.trackers is not None:
            self.outputs.trackers.log_grid(state.step, grid)
        curve = loss_curve_png(self.outputs.history, title=f"{self.run_name}: losses up to step {state.step}")
        self.store.write_bytes(f"samples/step-{state.step:06d}-losses.png", curve)
        self.outputs.metrics.record_diversity(sample_diversity(images, recipe.model_input(batch.images)))


class Evaluation:
    """FID/KID/IS of the sampling generator (the EMA when there is one) every eval.every_kimg, on the main rank,
    and the collapse guard's verdict on it, agreed by every rank. Evaluations land on a checkpoint, so its manifest
    carries the scores and retention can keep the best."""

    def __init__(
        self,
        cfg: GandConfig,
        engine: Engine,
        nets: Networks,
        recipe: Recipe,
        guard: CollapseGuard | None,
        checkpoints: CheckpointManager,
        outputs: Outputs,
    ):
        self.every_images = max(1, round(cfg.eval.every_kimg * 1000)) if cfg.eval.every_kimg else None
        self.max_steps = cfg.train.max_steps
        on_main = self.every_images is not None and engine.is_main
        self.evaluator = Evaluator(cfg, recipe.sampling, engine.device) if on_main else None
        self.engine, self.nets, self.guard, self.checkpoints = engine, nets, guard, checkpoints
        self.outputs = outputs  # read at each use: trackers start after the loop's objects are built

    def due(self, state: TrainState, images_before: int) -> bool:
        return bool(self.every_images) and count_due(
            state.step, images_before, state.images_seen, None, self.every_images, self.max_steps
        )

    def run(self, state: TrainState) -> tuple[dict[str, float] | None, str | None]:
        """(scores on the main rank, else None; the guard's verdict on every rank: "rollback", "stop" or None)."""
        scores = self.scores(state)
        return scores, self._verdict(self.guard, scores, state) if self.guard is not None else None

    def scores(self, state: TrainState) -> dict[str, float] | None:
        with self.engine.full_weights(self.nets.g) as g_module:  # every rank: ZeRO-3 gathers the weights collectively
            if self.evaluator is None:
                return None
            started = time.perf_counter()
            scores = self.evaluator(self.nets.ema.model if self.nets.ema is not None else g_module)
        log.info(
            "evaluated",
            step=state.step,
            images_seen=state.images_seen,
            seconds=round(time.perf_counter() - started, 1),
            **{name: round(value, 4) for name, value in scores.items()},
        )
        self.outputs.metrics.record_eval(scores)
        if self.outputs.trackers is not None:
            self.outputs.trackers.log_scores(state.step, scores)
        self.outputs.history.record(state.images_seen, {f"eval:{name}": value for name, value in scores.items()})
        return scores

    def _verdict(self, guard: CollapseGuard, scores: dict[str, float] | None, state: TrainState) -> str | None:
        """Every rank: the main rank's verdict (it alone has the scores) and the guard's state after it, shared.
        Retention keeps the guard's best checkpoint whatever the metric."""
        verdict = guard.observe(scores, checkpoint_name(state.images_seen)) if scores else None
        verdict, guard_state = self.engine.gather_objects((verdict, guard.state_dict()))[0]
        guard.load_state_dict(guard_state)
        self.checkpoints.pinned = {guard.best_checkpoint} if guard.best_checkpoint else set()
        return verdict


class Saves:
    """Checkpoints: one snapshot of everything (`CheckpointIO`), uploaded in the background
    (checkpoint.background_upload) or before `save` returns."""

    def __init__(
        self,
        checkpoint_io: CheckpointIO,
        checkpoints: CheckpointManager,
        control: RunControl,
        outputs: Outputs,
        state: TrainState,
    ):
        self.checkpoint_io, self.checkpoints, self.control = checkpoint_io, checkpoints, control
        self.outputs = outputs
        self.saved_step = state.step  # the newest step saved (or resumed from) by this process

    def save(self, state: TrainState, scores: dict[str, float] | None = None) -> None:
        snapshot = self.checkpoint_io.save(self.checkpoints, state, self.outputs.history.to_state(), scores)
        self.control.saved()
        self.saved_step = state.step
        if snapshot is not None:
            log.info(
                "checkpoint_snapshot",
                checkpoint=snapshot.name,
                step=state.step,
                stall_seconds=round(snapshot.stall_seconds, 4),
            )
            self.outputs.metrics.record_snapshot(snapshot.stall_seconds, sum(map(len, snapshot.files.values())))
