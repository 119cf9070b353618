"""The training loop. Everything it uses is built first, from the config; then it reads top to bottom."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gand.checkpoint.contents import SavedRun
from gand.checkpoint.lease import LeaseLost
from gand.checkpoint.manager import Checkpoint, CheckpointManager, CorruptCheckpoint
from gand.checkpoint.progress import ProgressMarker
from gand.checkpoint.uploader import RetryPolicy
from gand.config import GandConfig, default_loader_workers
from gand.data.loader import ImageLoader
from gand.data.manifest import PackedManifest, check_dataset, read_manifest
from gand.errors import DataError, StoppedAtOnce
from gand.notices import NoticeWatcher
from gand.observability.curves import LossHistory
from gand.observability.logging import configure_logging
from gand.observability.metrics import TrainingMetrics
from gand.observability.report import StepReport
from gand.observability.trackers import Trackers, new_run_ids
from gand.storage import is_local, redact
from gand.train.control import Decision, FiniteWatch, RunControl, StopNow, StopWhileWaiting
from gand.train.engine import Engine, build_engine, deepspeed_safe_globals
from gand.train.feed import DeviceBatch, DeviceFeed
from gand.train.guard import Collapsed, CollapseGuard, set_learning_rates
from gand.train.launch import lost_a_peer
from gand.train.optim import GeneratorEMA
from gand.train.periodic import Evaluation, Outputs, SampleGrid, Saves, StepLog, Throughput
from gand.train.schedules import BurnIn
from gand.train.snapshot import (
    CheckpointIO,
    Networks,
    check_resumable,
    classes_to_train,
    fixed_sample_inputs,
    preload_weights,
    resumed_counters,
    return_to_best,
    roll_back_after_nan,
    training_parts,
    weights_finite,
)
from gand.train.state import TrainState, seed_everything
from gand.train.steps import Recipe, build_networks, discriminator_update, generator_update
from gand.train.stops import (
    exit_without_the_lease,
    finish_uploads,
    refuse_to_start_over,
    report_uploads,
    stop_after_peer_loss,
    stop_after_signal,
    stop_before_training,
    stop_without_saving,
    take_lease,
)


def train(cfg: GandConfig, fresh: bool = False) -> TrainState:
    """Train until train.max_steps, resuming from the newest committed checkpoint unless `fresh`.

    Raises (exit codes in gand.errors; every stop's own in gand.train.stops):
    - Preempted (75) after a SIGTERM/SIGINT and a committed save (or, when the stop came while waiting, with a
      commit to resume from); StoppedAtOnce (1) after a second signal;
    - LeaseLost (75) when another trainer took the run over, PeerLost (75) when another rank vanished mid-collective;
      either is StorageError (1) instead when no commit of the run is known;
    - Diverged (3) after too many NaN roll-backs, Collapsed (3) when the collapse guard stops the run;
    - StorageError (1) when the final checkpoint did not commit; ConfigError (2) for a config or dataset that
      cannot train or resume.
    """
    engine = build_engine(cfg.precision, cfg.memory, cfg.train.batch_size, cfg.tracking, cfg.tracking_dir)
    local_log = Path(cfg.run_dir) / "train.jsonl" if engine.is_main and is_local(cfg.run_dir) else None
    configure_logging(engine.rank, engine.is_main, local_log, run_name=cfg.run.name)
    log = structlog.get_logger("gand.train")
    seed_everything(cfg.train.seed + engine.rank)  # ranks draw different noise; wrapping syncs the initial weights
    control = RunControl(engine, cfg.checkpoint, cfg.train.max_steps)
    control.install_signal_handlers()  # from here on a SIGTERM means "save at the next step boundary"
    checkpoints = _checkpoint_manager(cfg, engine)
    at_once = False
    try:
        start = Start.find(cfg, fresh, engine, control, checkpoints)
        if start.state.step >= cfg.train.max_steps:
            log.info("already_complete", step=start.state.step, hint="raise train.max_steps to train further")
            engine.close()
            return start.state
        return Training.build(cfg, engine, control, checkpoints, start).run()
    except StopNow as second:
        at_once = True  # no storage calls from here: the lease expires by itself (or frees with this process)
        known = checkpoints.known_commit
        log.warning("stopped_at_once", signal=str(second), last_commit=known, exit_code=StoppedAtOnce.exit_code)
        raise StoppedAtOnce(
            f"stopped at once by a second {second} without waiting for the save; the same command "
            f"resumes from {known or 'the newest committed checkpoint, if any'}"
        ) from None
    except LeaseLost as lost:  # found by a save, or agreed at a step boundary
        exit_without_the_lease(checkpoints, str(lost), log)
    except RuntimeError as error:
        if not lost_a_peer(error):
            raise
        stop_after_peer_loss(checkpoints, error, log)
    finally:
        control.restore_signal_handlers()
        if control.notices is not None:
            control.notices.close()
        if checkpoints.lease is not None and not at_once:
            checkpoints.lease.release()  # the next trainer may start at once


@dataclass
class Start:
    """Where training starts: the dataset, the checkpoint to resume (None: step 0) with its counters and history,
    and what PROGRESS.json said before this process."""

    manifest: PackedManifest
    num_classes: int  # the class head's size: the dataset's, or the resumed checkpoint's
    resumed: Checkpoint | None
    state: TrainState
    history: LossHistory
    progress: ProgressMarker
    previous_progress: dict | None
    steps_lost: int | None  # steps the previous process trained past its last commit (None: not a resume)

    @property
    def restarted(self) -> bool:
        """A resume, or a Job's pod back before its first commit."""
        return self.resumed is not None or self.previous_progress is not None

    @classmethod
    def find(
        cls, cfg: GandConfig, fresh: bool, engine: Engine, control: RunControl, checkpoints: CheckpointManager
    ) -> Start:
        """The dataset checked against the config, the run's lease, `--fresh`'s deletions, the newest commit and
        what a resume checks (architecture, classes, ranks)."""
        log = structlog.get_logger("gand.train")
        manifest, _ = read_manifest(cfg.data.path)
        dataset_classes = _dataset_classes(cfg, engine, manifest, log)
        progress = ProgressMarker(checkpoints.store, cfg.checkpoint.progress_every_seconds if engine.is_main else None)
        resumed, previous_progress = _newest_commit(cfg, fresh, engine, control, checkpoints, progress, log)
        num_classes = classes_to_train(resumed, manifest, dataset_classes)
        start = cls(manifest, num_classes, resumed, TrainState(), LossHistory(), progress, previous_progress, None)
        if resumed is not None:
            check_resumable(resumed, engine, cfg, num_classes)
            start.state = resumed_counters(resumed, TrainState.from_dict(resumed.state["train"]), engine.world_size)
            start.history = LossHistory.from_state(resumed.history)
            start.steps_lost = progress.steps_lost(previous_progress, start.state.step)
            log.info(
                "resumed",
                checkpoint=resumed.name,
                step=start.state.step,
                images_seen=start.state.images_seen,
                steps_lost=start.steps_lost,
            )
        return start


@dataclass
class Training:
    """Everything the loop uses, built from the config before it starts; `run()` is the loop."""

    cfg: GandConfig
    engine: Engine
    control: RunControl
    checkpoints: CheckpointManager
    state: TrainState
    recipe: Recipe
    nets: Networks
    checkpoint_io: CheckpointIO
    guard: CollapseGuard | None
    burn_in: BurnIn | None
    progress: ProgressMarker
    outputs: Outputs
    feed: DeviceFeed
    step_log: StepLog
    samples: SampleGrid
    evaluation: Evaluation
    saves: Saves
    finite: FiniteWatch
    rollbacks: int = 0
    at_boundary: bool = True  # no batch of the current step drawn yet: the state is the last step's

    @classmethod
    def build(
        cls, cfg: GandConfig, engine: Engine, control: RunControl, checkpoints: CheckpointManager, start: Start
    ) -> Training:
        """Everything from the config, from where `start` says; the trackers start last (an outside run to close)."""
        log = structlog.get_logger("gand.train")
        resumed, state, num_classes = start.resumed, start.state, start.num_classes
        # -- networks, and everything a checkpoint holds -----------------------------------------------------
        recipe = Recipe.from_config(cfg, num_classes)
        nets = _networks(cfg, engine, recipe, num_classes, resumed)
        guard = CollapseGuard.from_config(cfg)
        tracking_run_ids = new_run_ids(SavedRun.from_state(resumed.state).tracking_run_ids if resumed else None)
        checkpoint_io = CheckpointIO(
            engine, nets, training_parts(recipe, guard), cfg, num_classes, start.manifest.class_names, tracking_run_ids
        )
        if resumed is not None:
            try:
                checkpoint_io.restore(resumed, resume=True)
            except CorruptCheckpoint as err:  # verified files without what a resume needs: not gand's own writing
                raise DataError(
                    f"{err}: it cannot be resumed. Restore the run's checkpoints, or start over with --fresh"
                ) from None

        # -- data, metrics, periodic work, trackers ----------------------------------------------------------
        loader = _loader(cfg, engine, num_classes, log)
        metrics = _metrics(cfg, engine, control, checkpoints, state if resumed else None, start.steps_lost)
        _log_start(cfg, engine, start.manifest, num_classes, state, log)
        feed = DeviceFeed(loader.batches(start=state.data_position), engine.device, engine.channels_last)
        if guard is not None and resumed is not None:
            checkpoints.pinned = {guard.best_checkpoint} if guard.best_checkpoint else set()
            if guard.lr_scale != 1.0:  # a resume restores the config's learning rates: the guard's scale again
                set_learning_rates(_base_learning_rates(cfg, nets), guard.lr_scale)
        control.interrupt_waits(lambda: feed.waiting)
        outputs = Outputs(metrics, None, start.history)
        training = cls(
            cfg=cfg,
            engine=engine,
            control=control,
            checkpoints=checkpoints,
            state=state,
            recipe=recipe,
            nets=nets,
            checkpoint_io=checkpoint_io,
            guard=guard,
            burn_in=BurnIn.from_config(cfg),
            progress=start.progress,
            outputs=outputs,
            feed=feed,
            step_log=StepLog(cfg, engine, nets, recipe, feed, loader, outputs, state),
            samples=SampleGrid(cfg, engine, nets, recipe, outputs),
            evaluation=Evaluation(cfg, engine, nets, recipe, guard, checkpoints, outputs),
            saves=Saves(checkpoint_io, checkpoints, control, outputs, state),
            finite=FiniteWatch(),
        )
        # A restart trains on if a tracker cannot start (a first start exits 2).
        resumed_step = state.step if resumed else None
        outputs.trackers = Trackers.start(engine, cfg, tracking_run_ids, resumed_step, start.restarted)
        if outputs.trackers is not None:
            tracking_run_ids.update(outputs.trackers.run_ids())  # MLflow's id exists once its run has started
        return training

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> TrainState:
        """Every step draws d_steps real batches; D learns from them on every d_every-th step (the Rice report's
        "D once every four batches"), so images_seen grows by the same amount every step. Nothing is read back
        from the device on an ordinary step: losses, statistics and the NaN check are read at logging steps and
        saves."""
        log, control, stopping_at_once = structlog.get_logger("gand.train"), self.control, False
        self.step_log.throughput = Throughput(self.state.images_seen)  # from here: build and tracker start-up excluded
        try:
            while self.state.step < self.cfg.train.max_steps:
                report = self._step_report()
                batch, schedule_fields = self._updates(report)  # D and G, the EMA, adaptive augmentation's p
                images_before = self._advance()
                evaluate = self.evaluation.due(self.state, images_before)
                # Every rank takes the same branch: stop after a signal, save when due, roll back after NaN/Inf.
                # The NaN flag is read on logging steps and before every save, the evaluation's too.
                decision = control.decide(
                    self.state.step,
                    images_before,
                    self.state.images_seen,
                    self.finite,
                    check=report.detailed or evaluate,
                )
                self._act_on_agreement(decision, log)
                saving = decision.save or (evaluate and not decision.roll_back)
                if decision.roll_back or (saving and not weights_finite(self.engine, self.nets)):
                    self._roll_back_after_nan()
                    continue
                if report.detailed:
                    self.step_log.write(self.state, report, schedule_fields)
                self.samples.maybe_write(self.state, images_before, batch)
                self._evaluate_and_save(evaluate, saving)
                report_uploads(self.checkpoints, self.outputs.metrics, log)
                if decision.stop:
                    stop_after_signal(self.checkpoints, control, self.outputs.metrics, self.state, log)
        except StopWhileWaiting:
            self._stop_while_waiting(log)
        except StopNow:
            stopping_at_once = True
            raise
        finally:
            # Flushed on every way out (a preempted run's last scalars are not lost), except a second stop
            # signal, which means "now": W&B's own exit hook finishes its run then.
            if self.outputs.trackers is not None and not stopping_at_once:
                self.outputs.trackers.close()
        self.engine.close()  # the last collective; from here each rank only waits for its own uploads
        finish_uploads(self.checkpoints, control, self.outputs.metrics, self.state, self.cfg, log)
        return self.state

    # -- one step ----------------------------------------------------------------------------------------------
    def _step_report(self) -> StepReport:
        return StepReport(
            detailed=self.step_log.due(self.state.step),  # health statistics cost a little: logging steps only
            # the k-th, 2k-th, ... D update (also when D trains every d_every-th step)
            penalties_due=(self.state.step // self.cfg.schedule.d_every + 1) % self.recipe.penalty_every == 0,
        )

    def _updates(self, report: StepReport) -> tuple[DeviceBatch, dict[str, Any]]:
        """This step's D and G updates (and the EMA's); returns the last real batch and the schedule's values."""
        engine, nets, state, schedule = self.engine, self.nets, self.state, self.cfg.schedule
        step_recipe, schedule_fields = self.recipe, {}
        if self.burn_in is not None:  # this step's lr, beta2, penalty weight and EMA half-life
            lr_scale = self.guard.lr_scale if self.guard is not None else 1.0
            optimizers = (nets.g.optimizer, nets.d.optimizer)
            step_recipe, schedule_fields = self.burn_in.apply(
                state.images_seen, self.recipe, optimizers, nets.ema, lr_scale
            )
        train_d = state.step % schedule.d_every == 0
        self.at_boundary = True  # until the step's first batch arrives, the state is the last step's
        for _ in range(schedule.d_steps):
            batch = self.feed.next()
            self.at_boundary = False
            state.record_position(batch.position)
            if train_d:
                self.finite.observe(discriminator_update(engine, nets.d, nets.g, step_recipe, batch, report).finite())
        for _ in range(schedule.g_steps):
            update = generator_update(engine, nets.g, nets.d, step_recipe, self.cfg.train.batch_size, report, batch)
            self.finite.observe(update.finite())
            if nets.ema is not None:
                with engine.full_weights(nets.g) as g_module:
                    nets.ema.update(g_module, self._images_per_batch)
        if self.recipe.ada is not None and (state.step + 1) % self.cfg.augment.adjust_every == 0:
            self.recipe.ada.adjust(self._images_per_step * self.cfg.augment.adjust_every)
        return batch, schedule_fields

    @property
    def _images_per_batch(self) -> int:
        return self.cfg.train.batch_size * self.engine.world_size

    @property
    def _images_per_step(self) -> int:
        return self._images_per_batch * self.cfg.schedule.d_steps

    def _advance(self) -> int:
        """The counters past this step; returns images seen before it (periodic work counts in images too)."""
        images_before = self.state.images_seen
        self.state.advance(images=self._images_per_step)
        self.progress.update(self.state.step, self.state.images_seen, self.checkpoints.known_commit)
        return images_before

    # -- what a step may end in ------------------------------------------------------------------------------
    def _act_on_agreement(self, decision: Decision, log) -> None:
        """What the ranks agreed besides stop/save/roll back: the run's lease is lost (stop publishing), or a spot
        notice came (the decision already saves now)."""
        if decision.lease_lost:
            self.outputs.metrics.record_lease(held=False, lost=True)
            self.outputs.metrics.close()
            raise LeaseLost(f"found at step {self.state.step}")
        if not decision.notice:
            return
        provider = self.cfg.checkpoint.preemption_notice
        notice = self.control.notices.notice if self.control.notices is not None else None
        log.warning(
            "preemption_notice",
            step=self.state.step,
            provider=provider,
            detail=notice.detail if notice else None,
            effect="checkpoint now, training goes on",
        )
        self.outputs.metrics.record_preemption_notice(provider)

    def _roll_back_after_nan(self) -> None:
        self.rollbacks += 1
        # With a stop pending, the wait for an upload under way is bounded by what is left of the grace.
        grace = self.control.grace_left_seconds() if self.control.stop_signal is not None else None
        self.state = roll_back_after_nan(
            self.checkpoint_io, self.checkpoints, self.state, self.rollbacks, self.cfg.checkpoint.max_rollbacks, grace
        )
        self.outputs.history.truncate(self.state.images_seen)
        self.outputs.metrics.record_rollback()

    def _evaluate_and_save(self, evaluate: bool, saving: bool) -> None:
        """The evaluation when due and the guard's verdict on it, then the save: a collapse brings the best
        checkpoint back and commits it now, or stops the run once this checkpoint has committed."""
        scores, verdict = self.evaluation.run(self.state) if evaluate else (None, None)
        if verdict == "rollback":  # the collapsed weights are not kept
            self._return_to_best(scores)
            saving, scores = True, None
        if saving:
            self.saves.save(self.state, scores)
        if verdict == "stop":
            self._stop_collapsed()

    def _return_to_best(self, scores: dict[str, float] | None) -> None:
        assert self.guard is not None
        latest = (scores or {}).get(self.guard.metric)
        base_rates = _base_learning_rates(self.cfg, self.nets)
        return_to_best(self.checkpoint_io, self.checkpoints, self.guard, base_rates, latest)
        self.outputs.metrics.record_collapse_rollback()

    def _stop_collapsed(self) -> None:
        guard = self.guard
        assert guard is not None
        self.checkpoints.wait()  # this evaluation's checkpoint commits first
        raise Collapsed(
            f"guard: {guard.metric} stayed more than {guard.margin:.0%} worse than its best "
            f"({guard.best}, {guard.best_checkpoint}) for {guard.patience} evaluations"
            + (f" after {guard.rollbacks} roll-backs" if guard.rollbacks else "")
        )

    def _stop_while_waiting(self, log) -> None:
        """The loop was blocked on data when the signal came. One rank alone at a step boundary saves as usual;
        with more ranks the others may be inside a collective, so nothing that needs them is attempted."""
        control, state = self.control, self.state
        log.warning("stop_while_waiting_for_data", signal=control.stop_signal, step=state.step)
        safe = self.at_boundary and self.finite.read() and weights_finite(self.engine, self.nets)
        if self.engine.world_size == 1 and state.step > self.saves.saved_step and safe:
            self.saves.save(state)
            stop_after_signal(self.checkpoints, control, self.outputs.metrics, state, log)
        stop_without_saving(self.checkpoints, control, self.outputs.metrics, state, log)


# -- building ----------------------------------------------------------------------------------------------------
def _newest_commit(
    cfg: GandConfig,
    fresh: bool,
    engine: Engine,
    control: RunControl,
    checkpoints: CheckpointManager,
    progress: ProgressMarker,
    log,
) -> tuple[Checkpoint | None, dict | None]:
    """The run's lease, `--fresh`'s deletions, and the newest committed checkpoint with what PROGRESS.json said
    before; refuses to start over when there is evidence of earlier training. Nothing trains yet: a stop ends any
    start-up wait at once."""
    control.interrupt_waits(lambda: True)
    try:
        take_lease(cfg, engine, checkpoints, control)  # before anything lists or deletes checkpoints
        if fresh:
            if engine.is_main:
                checkpoints.discard_all()
                progress.discard()
            engine.barrier()
        previous_progress = progress.read() if engine.is_main else None  # before this process writes its own
        resumed = checkpoints.load_latest(cfg.checkpoint.startup_timeout_seconds)
        if resumed is None and not fresh:
            refuse_to_start_over(checkpoints, previous_progress, engine)
    except StopWhileWaiting:
        stop_before_training(checkpoints, control, log)
    control.interrupt_waits(lambda: False)
    return resumed, previous_progress


def _dataset_classes(cfg: GandConfig, engine: Engine, manifest: PackedManifest, log) -> int:
    """The dataset's class count, checked against the config; a warning when one step draws more than it holds."""
    num_classes = check_dataset(manifest, cfg)
    if cfg.train.batch_size * engine.world_size > manifest.num_samples:
        log.warning(
            "batch_larger_than_dataset",
            batch_images=cfg.train.batch_size * engine.world_size,
            dataset_images=manifest.num_samples,
            effect="every batch repeats images: an epoch is shorter than a step",
            fix="lower train.batch_size or add images",
        )
    return num_classes


def _networks(
    cfg: GandConfig, engine: Engine, recipe: Recipe, num_classes: int, resumed: Checkpoint | None
) -> Networks:
    """G and D set up by the engine (a resume's weights loaded first), the EMA generator, the fixed sample inputs."""
    generator, discriminator, opt_g, opt_d = build_networks(cfg, engine, num_classes)
    preload_weights(resumed, generator, discriminator)
    ema = GeneratorEMA(generator, cfg.ema.half_life_kimg) if cfg.ema.half_life_kimg else None
    g, d = engine.setup(generator, discriminator, opt_g, opt_d)
    if ema is not None:
        ema.model.to(engine.device)
        engine.format_like_trained(ema.model)  # the same layout as G: one foreach kernel for the EMA update
    return Networks(g, d, ema, *fixed_sample_inputs(cfg, recipe))


def _loader(cfg: GandConfig, engine: Engine, num_classes: int, log) -> ImageLoader:
    if cfg.data.shuffle_buffer is not None:  # snapshots of configs list it as null
        log.warning(
            "config_field_unused",
            field="data.shuffle_buffer",
            reason="the loader draws a fresh permutation of all images each pass; remove it",
        )
    return ImageLoader(
        cfg.data.path,
        cfg.data.resolution,
        cfg.train.batch_size,
        seed=cfg.train.seed,
        rank=engine.rank,
        world_size=engine.world_size,
        workers=cfg.data.workers if cfg.data.workers is not None else default_loader_workers(),
        epoch_images=cfg.data.epoch_images,
        channels=cfg.data.channels,
        num_classes=num_classes,
        agree=engine.from_rank_zero,
        pin_memory=engine.device.type == "cuda",
        min_usable_share=cfg.data.min_usable_share,
    )


def _metrics(
    cfg: GandConfig,
    engine: Engine,
    control: RunControl,
    checkpoints: CheckpointManager,
    resumed_state: TrainState | None,
    steps_lost: int | None,
) -> TrainingMetrics:
    """The exporter (rank 0 serves it), and rank 0's spot-notice watcher: the ranks agree on notices at step
    boundaries."""
    metrics = TrainingMetrics(cfg.metrics.port if engine.is_main else None, cfg.run.name)
    metrics.record_lease(held=checkpoints.lease is not None)
    section = cfg.checkpoint
    if section.preemption_notice != "none" and engine.is_main:
        control.notices = NoticeWatcher(
            section.preemption_notice, section.notice_endpoint, section.notice_poll_seconds
        ).start()
        metrics.watch_notices(section.preemption_notice)
    if resumed_state is not None:
        metrics.record_resume(resumed_state.step, steps_lost)
    return metrics


def _log_start(
    cfg: GandConfig, engine: Engine, manifest: PackedManifest, num_classes: int, state: TrainState, log
) -> None:
    log.info(
        "train_start",
        arch=cfg.model.arch,
        resolution=cfg.data.resolution,
        dataset_images=manifest.num_samples,
        classes=num_classes,
        world_size=engine.world_size,
        device=str(engine.device),
        precision=engine.precision,
        channels_last=engine.channels_last,
        zero_stage=cfg.memory.zero_stage,
        micro_batch_size=engine.micro_batch_size,
        accumulation_steps=engine.accumulation_steps,
        images_per_step=cfg.train.batch_size * engine.world_size * cfg.schedule.d_steps,
        start_step=state.step,
        max_steps=cfg.train.max_steps,
        checkpoint_url=redact(cfg.checkpoint_url),
    )


def _checkpoint_manager(cfg: GandConfig, engine: Engine) -> CheckpointManager:
    section = cfg.checkpoint
    retry = RetryPolicy(section.retry_first_seconds, section.retry_max_seconds, section.upload_timeout_seconds)
    return CheckpointManager(
        cfg.checkpoint_url,
        engine,
        keep_last=section.keep_last,
        keep_every=section.keep_every,
        safe_globals=deepspeed_safe_globals(),
        retry=retry,
        background=section.background_upload,
    )


def _base_learning_rates(cfg: GandConfig, nets: Networks) -> list[tuple[Any, float]]:
    return [(nets.g.optimizer, cfg.optim.g.lr), (nets.d.optimizer, cfg.optim.d.lr)]
