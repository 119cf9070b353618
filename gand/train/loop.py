"""The training loop. Everything it uses is built first, from the config; then it reads top to bottom."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog
import torch

from gand import __version__
from gand.checkpoint.lease import LeaseLost
from gand.checkpoint.manager import Checkpoint, CheckpointManager, CorruptCheckpoint, Snapshot, checkpoint_name
from gand.checkpoint.progress import ProgressMarker
from gand.checkpoint.uploader import RetryPolicy
from gand.config import GandConfig, default_loader_workers
from gand.data.loader import ImageLoader
from gand.data.manifest import check_dataset, read_manifest
from gand.errors import (
    ConfigError,
    Diverged,
    PeerLost,
    StoppedAtOnce,
    StorageError,
)
from gand.eval.fid import Evaluator
from gand.eval.samples import generate, grid_pixels, png_bytes, sampling_mode
from gand.notices import NoticeWatcher
from gand.observability.curves import LossHistory, loss_curve_png
from gand.observability.health import DominanceWindow, sample_diversity
from gand.observability.logging import configure_logging
from gand.observability.metrics import TrainingMetrics
from gand.observability.report import HostNumbers, StepReport
from gand.observability.trackers import Trackers, new_run_ids
from gand.storage import Store, is_local, redact
from gand.train.control import FiniteWatch, RunControl, StopNow, StopWhileWaiting, count_due
from gand.train.engine import Engine, Trained, build_engine, deepspeed_safe_globals, lost_a_peer
from gand.train.feed import DeviceBatch, DeviceFeed
from gand.train.guard import Collapsed, CollapseGuard, set_learning_rates
from gand.train.optim import GeneratorEMA
from gand.train.schedules import BurnIn
from gand.train.state import TrainState, capture_rng, restore_rng, seed_everything
from gand.train.steps import Recipe, build_networks, discriminator_update, generator_update
from gand.train.stops import (
    commit_to_resume_from,
    exit_without_the_lease,
    refuse_to_start_over,
    report_uploads,
    stop_after_signal,
    stop_before_training,
    stop_without_saving,
    take_lease,
    wait_for_uploads,
)


def train(cfg: GandConfig, fresh: bool = False) -> TrainState:
    """Train until train.max_steps, resuming from the newest committed checkpoint unless `fresh`.

    Raises Preempted (exit 75) after a SIGTERM/SIGINT and a committed save (or, when the stop came while waiting,
    with a commit to resume from), StoppedAtOnce (exit 1) after a second signal, Diverged (exit 3) after too many
    NaN roll-backs.
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
        return _train(cfg, fresh, engine, control, checkpoints, log)
    except StopNow as second:
        at_once = True  # no storage calls from here: the lease expires by itself (or frees with this process)
        known = checkpoints.known_commit
        log.warning("stopped_at_once", signal=str(second), last_commit=known, exit_code=StoppedAtOnce.exit_code)
        raise StoppedAtOnce(f"stopped at once by a second {second} without waiting for the save; the same command "
                            f"resumes from {known or 'the newest committed checkpoint, if any'}") from None  # fmt: skip
    except LeaseLost as lost:  # found by a save, or agreed at a step boundary
        exit_without_the_lease(checkpoints, str(lost), log)
    except RuntimeError as error:
        # Another node vanished (a spot preemption past its grace, a crash). Its checkpoint cannot commit without
        # the lost ranks' parts, so there is nothing to wait for: exit 75 (Kubernetes restarts the Job without
        # counting a failure) when this run has a commit to resume from, else 1.
        if not lost_a_peer(error):
            raise
        first_line = str(error).splitlines()[0][:300]
        known = commit_to_resume_from(checkpoints)
        exit_code = PeerLost.exit_code if known else StorageError.exit_code
        log.warning("peer_lost", error=first_line, last_commit=known, exit_code=exit_code)
        message = f"another rank stopped in the middle of a collective ({first_line}); "
        if known is None:
            raise StorageError(message + "no committed checkpoint of this run was found") from None
        raise PeerLost(message + f"run the same command to resume from {known}") from None
    finally:
        control.restore_signal_handlers()
        if control.notices is not None:
            control.notices.close()
        if checkpoints.lease is not None and not at_once:
            checkpoints.lease.release()  # the next trainer may start at once


def _train(cfg: GandConfig, fresh: bool, engine: Engine, control: RunControl, checkpoints: CheckpointManager,
           log) -> TrainState:  # fmt: skip
    # -- build everything ----------------------------------------------------------------------------------
    manifest, _ = read_manifest(cfg.data.path)
    num_classes = check_dataset(manifest, cfg)
    if cfg.train.batch_size * engine.world_size > manifest.num_samples:
        log.warning("batch_larger_than_dataset", batch_images=cfg.train.batch_size * engine.world_size,
                    dataset_images=manifest.num_samples, effect="every batch repeats images: an epoch is shorter "
                    "than a step", fix="lower train.batch_size or add images")  # fmt: skip
    generator, discriminator, opt_g, opt_d = build_networks(cfg, engine, num_classes)  # set up after a resume
    recipe = Recipe.from_config(cfg, num_classes)
    fixed_noise, fixed_classes = _fixed_sample_inputs(cfg, recipe)
    progress = ProgressMarker(checkpoints.store, cfg.checkpoint.progress_every_seconds if engine.is_main else None)
    run_store = Store(cfg.run_dir)
    state = TrainState()
    history = LossHistory()

    # Nothing trains yet: a stop ends any start-up wait (another trainer's lease, storage that is down) at once.
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
    steps_lost = None
    if resumed is not None:
        saved_names = resumed.state.get("class_names")
        if saved_names and list(manifest.class_names or [])[: len(saved_names)] != saved_names:
            raise ConfigError(
                f"the dataset's classes are not the ones {resumed.name} was trained on: {saved_names} then, "
                f"{manifest.class_names} now (a dataset packed again sorts its classes afresh); their label indices "
                "would mean other classes. Train on the original dataset, or start a new run (--fresh or another "
                "run.name)"
            )
        saved_classes = resumed.state.get("num_classes") or 0
        if 0 < saved_classes < num_classes:  # class names only grow: the saved ones keep their indices
            # What the running process already did (leave the new classes out) is what a resume does too; refusing
            # (exit 2) would end a Kubernetes Job for good over one new folder.
            log.warning("dataset_classes_grew", model_classes=saved_classes, dataset_classes=num_classes,
                        effect="images of the new classes are left out (gand_data_samples_skipped_total"
                               "{reason=unknown_class})",
                        to_use_them="start a new run: another run.name or checkpoint.url, or --fresh")  # fmt: skip
            num_classes = saved_classes
            generator, discriminator, opt_g, opt_d = build_networks(cfg, engine, num_classes)
            recipe = Recipe.from_config(cfg, num_classes)
        _check_resumable(resumed, engine, cfg, num_classes)
        generator.load_state_dict(resumed.weights["generator"])
        discriminator.load_state_dict(resumed.weights["discriminator"])
        state = _resumed_state(resumed, engine, log)
        fixed_noise, fixed_classes = resumed.trainer["fixed_noise"], resumed.trainer.get("fixed_classes")
        history = LossHistory.from_state(resumed.history)
        steps_lost = progress.steps_lost(previous_progress, state.step)
        log.info("resumed", checkpoint=resumed.name, step=state.step, images_seen=state.images_seen,
                 steps_lost=steps_lost)  # fmt: skip
    if state.step >= cfg.train.max_steps:
        log.info("already_complete", step=state.step, hint="raise train.max_steps to train further")
        engine.close()
        return state

    ema = GeneratorEMA(generator, cfg.ema.half_life_kimg) if cfg.ema.half_life_kimg else None
    if ema is not None and resumed is not None and "generator_ema" in resumed.weights:
        ema.model.load_state_dict(resumed.weights["generator_ema"])
    g, d = engine.setup(generator, discriminator, opt_g, opt_d)
    if ema is not None:
        ema.model.to(engine.device)
        engine.format_like_trained(ema.model)  # the same layout as G: one foreach kernel for the EMA update
    if resumed is not None:
        _restore_training_state(resumed, engine, g, d, recipe)
        if resumed.rank_state is not None:
            restore_rng(resumed.rank_state["rng"])
    loader = ImageLoader(
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
    if cfg.data.shuffle_buffer is not None:  # snapshots of configs list it as null
        log.warning("config_field_unused", field="data.shuffle_buffer",
                    reason="the loader draws a fresh permutation of all images each pass; remove it")  # fmt: skip
    metrics = TrainingMetrics(cfg.metrics.port if engine.is_main else None, cfg.run.name)
    metrics.record_lease(held=checkpoints.lease is not None)
    section = cfg.checkpoint
    if section.preemption_notice != "none" and engine.is_main:  # rank 0 polls; the ranks agree at step boundaries
        control.notices = NoticeWatcher(section.preemption_notice, section.notice_endpoint,
                                        section.notice_poll_seconds).start()  # fmt: skip
        metrics.watch_notices(section.preemption_notice)
    if resumed is not None:
        metrics.record_resume(state.step, steps_lost)
    tracking_run_ids = new_run_ids(_saved_tracking_ids(resumed))
    dominance = DominanceWindow()
    evaluator = Evaluator(cfg, recipe.sampling, engine.device) if cfg.eval.every_kimg and engine.is_main else None
    eval_every_images = max(1, round(cfg.eval.every_kimg * 1000)) if cfg.eval.every_kimg else None
    schedule = cfg.schedule
    images_per_batch = cfg.train.batch_size * engine.world_size
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
        micro_batch=engine.micro_batch,
        accumulation=engine.micro_batches,
        images_per_step=images_per_batch * schedule.d_steps,
        start_step=state.step,
        max_steps=cfg.train.max_steps,
        checkpoint_url=redact(cfg.checkpoint_url),
    )

    # -- the loop ------------------------------------------------------------------------------------------
    # Every step draws d_steps real batches; D learns from them on every d_every-th step (the Rice report's
    # "D once every four batches"), so images_seen grows by the same amount every step. Nothing is read back from
    # the device on an ordinary step: losses, statistics and the NaN check are read at logging steps and saves.
    feed = DeviceFeed(loader.batches(start=state.data_position), engine.device, engine.channels_last)
    burn_in = BurnIn.from_config(cfg)
    guard = CollapseGuard.from_config(cfg)
    if guard is not None and resumed is not None:
        guard.load_state_dict(resumed.trainer.get("guard") or {})
        checkpoints.pinned = {guard.best_checkpoint} if guard.best_checkpoint else set()
        if guard.lr_scale != 1.0:  # a resume restores the config's learning rates: the guard's scale again
            set_learning_rates(_base_learning_rates(cfg, g, d), guard.lr_scale)
    control.interrupt_waits(lambda: feed.waiting)
    # A restart (a resume, or a Job's pod back before its first commit) trains on if a tracker cannot start.
    restarted = resumed is not None or previous_progress is not None
    trackers = Trackers.start(engine, cfg, tracking_run_ids, state.step if resumed is not None else None, restarted)
    if trackers is not None:
        tracking_run_ids.update(trackers.run_ids())  # MLflow's id exists once its run has started
    window = Throughput(state.images_seen)
    first_step = state.step
    finite = FiniteWatch()
    rollbacks = 0
    saved_step = state.step
    at_boundary = True
    stopping_at_once = False
    try:
        while state.step < cfg.train.max_steps:
            train_d = state.step % schedule.d_every == 0
            # The first step of every start is logged too: a CPU run of CAN-256 takes minutes to its first
            # log_every_steps, and the first step (warm-up, compilation) is the one that shows the run is alive.
            log_step = _due(state.step + 1, cfg.train.log_every_steps, cfg.train.max_steps) or state.step == first_step
            report = StepReport(
                detailed=log_step,  # health statistics cost a little: logging steps only
                # the k-th, 2k-th, ... D update (also when D trains every d_every-th step)
                penalties_due=(state.step // schedule.d_every + 1) % recipe.penalty_every == 0,
            )
            step_recipe, burn_in_fields = recipe, {}
            if burn_in is not None:  # this step's lr, beta2, penalty weight and EMA half-life
                step_recipe, burn_in_fields = burn_in.apply(state.images_seen, recipe, (g.optimizer, d.optimizer), ema,
                                                            guard.lr_scale if guard is not None else 1.0)  # fmt: skip
            at_boundary = True  # until the step's first batch arrives, the state is the last step's
            for _ in range(schedule.d_steps):
                batch = feed.next()
                at_boundary = False
                state.record_position(batch.position)
                if train_d:
                    finite.observe(discriminator_update(engine, d, g, step_recipe, batch, report).finite())
            for _ in range(schedule.g_steps):
                finite.observe(
                    generator_update(engine, g, d, step_recipe, cfg.train.batch_size, report, batch).finite()
                )
                if ema is not None:
                    with engine.full_weights(g) as g_module:
                        ema.update(g_module, images_per_batch)

            if recipe.ada is not None and (state.step + 1) % cfg.augment.adjust_every == 0:
                recipe.ada.adjust(images_per_batch * schedule.d_steps * cfg.augment.adjust_every)
            images_before = state.images_seen
            state.advance(images=images_per_batch * schedule.d_steps)
            progress.update(state.step, state.images_seen, checkpoints.known_commit)
            # Evaluations land on a checkpoint, so its manifest carries the scores and retention can keep the best.
            evaluate = bool(eval_every_images) and count_due(state.step, images_before, state.images_seen, None,
                                                              eval_every_images, cfg.train.max_steps)  # fmt: skip
            # Every rank takes the same branch: stop after a signal, save when due, roll back after NaN/Inf. The NaN
            # flag is read on logging steps and before every save, the evaluation's too.
            decision = control.decide(state.step, images_before, state.images_seen, finite, check=log_step or evaluate)
            if decision.lease_lost:
                metrics.record_lease(held=False, lost=True)
                metrics.close()
                raise LeaseLost(f"found at step {state.step}")
            saving = decision.save or (evaluate and not decision.roll_back)
            if decision.notice:
                notice = control.notices.notice if control.notices is not None else None
                log.warning("preemption_notice", step=state.step, provider=section.preemption_notice,
                            detail=notice.detail if notice else None,
                            effect="checkpoint now, training goes on")  # fmt: skip
                metrics.record_preemption_notice(section.preemption_notice)
            if decision.roll_back or (saving and not _weights_finite(engine, g, d)):
                rollbacks += 1
                # With a stop pending, the wait for an upload under way is bounded by what is left of the grace.
                grace = control.grace_left_seconds() if control.stop_signal is not None else None
                state = _roll_back(checkpoints, engine, g, d, ema, state, rollbacks, cfg.checkpoint.max_rollbacks,
                                   grace, recipe)  # fmt: skip
                history.truncate(state.images_seen)
                metrics.record_rollback()
                continue

            if log_step:
                logged = report.read(engine.mean_across_ranks, engine.world_size,
                                     _host_numbers(state, window, feed, engine, g, d, dominance))  # fmt: skip
                augment_fields = recipe.ada.log_fields() if recipe.ada is not None else {}
                if augment_fields:
                    metrics.record_augment(augment_fields["augment_p"], augment_fields["augment_rt"])
                log.info("train_step", step=state.step, images_seen=state.images_seen, epoch=state.epoch,
                         **logged.log_fields(), **burn_in_fields, **augment_fields)  # fmt: skip
                metrics.record_step(logged)
                if trackers is not None:
                    trackers.log_step(state.step, logged, {**burn_in_fields, **augment_fields})
                metrics.record_damaged_shards(len(loader.damaged_shards))
                history.record_step(logged)
                if engine.device.type == "cuda":
                    metrics.record_gpu_memory(torch.cuda.memory_allocated(), torch.cuda.memory_reserved(),
                                              torch.cuda.max_memory_allocated())  # fmt: skip
            if count_due(state.step, images_before, state.images_seen, cfg.samples.every_steps,
                         cfg.samples.every_images, cfg.train.max_steps):  # fmt: skip
                _write_samples(engine, g, ema, fixed_noise, fixed_classes, recipe, batch, history, run_store,
                               metrics, cfg, state, trackers)  # fmt: skip
            scores = _evaluate(evaluator, engine, g, ema, state, history, metrics, log, trackers) if evaluate else None
            verdict = _guard_verdict(guard, scores, state, engine, checkpoints) if evaluate and guard else None
            if verdict == "rollback":  # the collapsed weights are not kept: the best ones come back and commit now
                _guard_roll_back(checkpoints, engine, g, d, ema, recipe, guard, scores, cfg, metrics, log)
                saving, scores = True, None
            if saving:
                snapshot = _save(checkpoints, engine, g, d, ema, fixed_noise, fixed_classes, state, cfg, num_classes,
                                 history, scores, manifest.class_names, recipe, guard, tracking_run_ids)  # fmt: skip
                control.saved()
                saved_step = state.step
                if snapshot is not None:
                    log.info("checkpoint_snapshot", checkpoint=snapshot.name, step=state.step,
                             stall_seconds=round(snapshot.stall_seconds, 4))  # fmt: skip
                    metrics.record_snapshot(snapshot.stall_seconds, sum(map(len, snapshot.files.values())))
            if verdict == "stop":
                checkpoints.wait()  # this evaluation's checkpoint commits first
                raise Collapsed(f"guard: {guard.metric} stayed more than {guard.margin:.0%} worse than its best "
                                f"({guard.best}, {guard.best_checkpoint}) for {guard.patience} evaluations"
                                + (f" after {guard.rollbacks} roll-backs" if guard.rollbacks else ""))  # fmt: skip
            report_uploads(checkpoints, metrics, log)
            if decision.stop:
                stop_after_signal(checkpoints, control, metrics, state, log)
    except StopWhileWaiting:
        # The loop was blocked on data when the signal came. One rank alone at a step boundary saves as usual; with
        # more ranks the others may be inside a collective, so nothing that needs them is attempted.
        log.warning("stop_while_waiting_for_data", signal=control.stop_signal, step=state.step)
        safe = at_boundary and finite.read() and _weights_finite(engine, g, d)
        if engine.world_size == 1 and state.step > saved_step and safe:
            _save(checkpoints, engine, g, d, ema, fixed_noise, fixed_classes, state, cfg, num_classes, history,
                  class_names=manifest.class_names, recipe=recipe, guard=guard,
                  tracking_run_ids=tracking_run_ids)  # fmt: skip
            stop_after_signal(checkpoints, control, metrics, state, log)
        stop_without_saving(checkpoints, control, metrics, state, log)
    except StopNow:
        stopping_at_once = True
        raise
    finally:
        # Flushed on every way out (a preempted run's last scalars are not lost), except a second stop signal,
        # which means "now": W&B's own exit hook finishes its run then.
        if trackers is not None and not stopping_at_once:
            trackers.close()

    engine.close()  # the last collective; from here each rank only waits for its own uploads
    uploaded = wait_for_uploads(checkpoints, control, cfg.checkpoint.upload_timeout_seconds)
    final = [r for r in report_uploads(checkpoints, metrics, log) if r.name == checkpoint_name(state.images_seen)]
    log.info("train_done", step=state.step, images_seen=state.images_seen, run_dir=redact(cfg.run_dir))
    metrics.close()
    if not uploaded or any(not result.committed for result in final):
        waited = cfg.checkpoint.upload_timeout_seconds if control.stop_signal is None else cfg.checkpoint.grace_seconds
        problem = final[-1].error if final else f"not finished after {waited:g} s"
        raise StorageError(
            f"training reached step {state.step}, but its checkpoint could not be uploaded to "
            f"{redact(cfg.checkpoint_url)} ({problem}); the same command resumes from the last commit"
        )
    return state


# -- helpers the loop calls ------------------------------------------------------------------------------------
def _due(step: int, every_steps: int, max_steps: int) -> bool:
    """Periodic work happens every N steps and once more at the very end."""
    return step % every_steps == 0 or step == max_steps


def _host_numbers(state: TrainState, window: Throughput, feed: DeviceFeed, engine: Engine, g: Trained, d: Trained,
                  dominance: DominanceWindow) -> HostNumbers:  # fmt: skip
    """What a logging step knows on the host: progress, throughput, data counts, learning rates, fp16 scaling."""
    nets = {net.name: net for net in (g, d)}
    scales = {name: engine.loss_scale(net) for name, net in nets.items()}
    return HostNumbers(
        step=state.step,
        images_seen=state.images_seen,
        epoch=state.epoch,
        images_per_second=window.images_per_second(state.images_seen),
        data=feed.counts_since_last_read(),
        learning_rates={name: engine.learning_rate(net) for name, net in nets.items()},
        loss_scales={name: scale for name, scale in scales.items() if scale is not None},
        skipped_steps={name: net.skipped_steps for name, net in nets.items() if scales[name] is not None},
        d_dominating=lambda out: dominance.update(out.accuracy_real, out.accuracy_fake),
    )


class Throughput:
    """Images per second since the previous call."""

    def __init__(self, images_seen: int):
        self.images, self.time = images_seen, time.perf_counter()

    def images_per_second(self, images_seen: int) -> float:
        now = time.perf_counter()
        rate = (images_seen - self.images) / max(now - self.time, 1e-9)
        self.images, self.time = images_seen, now
        return rate


def _fixed_sample_inputs(cfg: GandConfig, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sample grid's noise (seeded apart from training noise); with classes, row after row of 0..K-1."""
    seeded = torch.Generator().manual_seed(cfg.train.seed)
    noise = torch.randn(cfg.samples.count, cfg.model.latent_dim, generator=seeded)
    classes = torch.arange(cfg.samples.count) % recipe.num_classes if recipe.sample_classes else None
    return noise, classes


def _checkpoint_manager(cfg: GandConfig, engine: Engine) -> CheckpointManager:
    section = cfg.checkpoint
    retry = RetryPolicy(section.retry_first_seconds, section.retry_max_seconds, section.upload_timeout_seconds)
    return CheckpointManager(cfg.checkpoint_url, engine, keep_last=section.keep_last, keep_every=section.keep_every,
                             safe_globals=deepspeed_safe_globals(), retry=retry,
                             background=section.background_upload)  # fmt: skip


# Settings that change the networks' shapes or the meaning of their weights: a checkpoint cannot carry over.
ARCHITECTURE_FIELDS = (("data", "resolution"), ("data", "channels"), ("optim", "g"), ("optim", "d"))


def _check_resumable(resumed: Checkpoint, engine: Engine, cfg: GandConfig, num_classes: int) -> None:
    """An architecture change is an error naming the fields; ZeRO needs the same ranks and stage."""
    saved = resumed.state.get("config", {})
    now = cfg.snapshot()
    fields = [("model", name) for name in now["model"]] + list(ARCHITECTURE_FIELDS)
    changed = []
    for section, name in fields:
        before, after = saved.get(section, {}).get(name), now[section][name]
        if section == "optim":  # the optimiser kind decides the state's layout; its rates may change freely
            before, after = (before or {}).get("name"), after["name"]
        if before is not None and before != after:
            changed.append(f"{section}.{name}{'.name' if section == 'optim' else ''}: {before!r} -> {after!r}")
    saved_classes = resumed.state.get("num_classes")
    if saved_classes is not None and saved_classes != num_classes:
        changed.append(f"dataset classes: {saved_classes} -> {num_classes}")
    if changed:
        raise ConfigError(
            f"checkpoint {resumed.name} was trained with a different architecture ({'; '.join(changed)}); "
            f"keep the old settings to resume, or start over with --fresh or a new run.name"
        )
    stage = saved.get("memory", {}).get("zero_stage", 0)
    if (stage or cfg.memory.zero_stage) and (stage != cfg.memory.zero_stage or resumed.world_size != engine.world_size):
        raise ConfigError(
            f"memory.zero_stage: {resumed.name} was written with ZeRO stage {stage} on {resumed.world_size} ranks; "
            f"resume with the same (now: stage {cfg.memory.zero_stage}, {engine.world_size} ranks), or start a new "
            "run from its exported weights"
        )


def _resumed_state(resumed: Checkpoint, engine: Engine, log) -> TrainState:
    state = TrainState.from_dict(resumed.state["train"])
    if resumed.world_size != engine.world_size:
        # Models and optimizers carry over (DDP keeps them whole); each rank's data slice and RNG do not.
        drawn = state.epoch_batches * resumed.world_size
        state.epoch_batches = drawn // engine.world_size
        state.data_stream_batch = state.data_stream_batch * resumed.world_size // engine.world_size
        log.warning("world_size_changed", checkpoint=resumed.name, saved_ranks=resumed.world_size,
                    ranks=engine.world_size, effect="models and optimizers resume; data order and noise differ "
                    "from an uninterrupted run from here on")  # fmt: skip
    return state


def _saved_tracking_ids(resumed: Checkpoint | None) -> dict[str, str] | None:
    """The tracker runs a checkpoint names (early checkpoints of this version kept W&B's id alone)."""
    if resumed is None:
        return None
    legacy = resumed.state.get("tracking_run_id")
    return resumed.state.get("tracking_run_ids") or ({"wandb": legacy} if legacy else None)


def _recipe_state_parts(recipe: Recipe | None) -> dict[str, Any]:
    """The parts of a recipe that change during training and belong in the checkpoint, by checkpoint key."""
    if recipe is None:
        return {}
    parts = {"lecam": recipe.objective.lecam, "ada": recipe.ada}
    return {name: part for name, part in parts.items() if part is not None}


def _restore_training_state(resumed: Checkpoint, engine: Engine, g: Trained, d: Trained,
                            recipe: Recipe | None = None) -> None:  # fmt: skip
    """Weights, optimiser and scaler state into networks already set up by the engine; the recipe's training state
    (LeCam anchors, adaptive augmentation), this rank's own where saved (the same rank count), else the main rank's."""
    own = resumed.rank_state or {}
    for net in (g, d):
        net_state = own.get(net.name) or resumed.trainer.get(net.name)
        engine.restore(net, resumed.weights[net.name], net_state)
    for name, part in _recipe_state_parts(recipe).items():
        part.load_state_dict(own.get(name) or resumed.trainer.get(name) or {})


def _guard_verdict(guard: CollapseGuard, scores: dict | None, state: TrainState, engine: Engine,
                   checkpoints: CheckpointManager) -> str | None:  # fmt: skip
    """Every rank: the main rank's verdict on this evaluation (it alone has the scores) and the guard's state after
    it, shared. Retention keeps the guard's best checkpoint whatever the metric."""
    verdict = guard.observe(scores, checkpoint_name(state.images_seen)) if scores else None
    verdict, guard_state = engine.gather_objects((verdict, guard.state_dict()))[0]
    guard.load_state_dict(guard_state)
    checkpoints.pinned = {guard.best_checkpoint} if guard.best_checkpoint else set()
    return verdict


def _base_learning_rates(cfg: GandConfig, g: Trained, d: Trained) -> list[tuple[Any, float]]:
    return [(g.optimizer, cfg.optim.g.lr), (d.optimizer, cfg.optim.d.lr)]


def _guard_roll_back(checkpoints: CheckpointManager, engine: Engine, g: Trained, d: Trained, ema, recipe: Recipe,
                     guard: CollapseGuard, scores: dict | None, cfg: GandConfig, metrics: TrainingMetrics,
                     log) -> None:  # fmt: skip
    """Back to the best checkpoint's networks, optimizers and recipe state, with the guard's learning-rate scale;
    step and images_seen go on (they count the images drawn, and later checkpoints must not reuse names)."""
    checkpoints.wait()
    try:
        best = checkpoints.load_named(guard.best_checkpoint)
    except CorruptCheckpoint as err:
        raise Collapsed(f"guard: cannot go back to the best checkpoint: {err}") from None
    _restore_training_state(best, engine, g, d, recipe)
    if ema is not None and "generator_ema" in best.weights:
        ema.model.load_state_dict(best.weights["generator_ema"])
    set_learning_rates(_base_learning_rates(cfg, g, d), guard.lr_scale)  # a burn-in scales its own each step
    latest = (scores or {}).get(guard.metric)
    log.warning("collapse_rolled_back", checkpoint=best.name, metric=guard.metric, best=guard.best, latest=latest,
                rollbacks=guard.rollbacks, lr_scale=guard.lr_scale)  # fmt: skip
    metrics.record_collapse_rollback()


def _weights_finite(engine: Engine, g: Trained, d: Trained) -> bool:
    """Before saving: a NaN can hide in the weights a step before it shows in a loss. Same answer on every rank
    (the weights are the same everywhere; ZeRO-3 gathers them), so no collective is needed to agree. One device
    sync per network."""
    for net in (g, d):
        with engine.full_weights(net) as module:
            flags = [torch.isfinite(p).all() for p in module.parameters()]
            if flags and not bool(torch.stack(flags).all()):
                return False
    return True


def _roll_back(checkpoints: CheckpointManager, engine: Engine, g: Trained, d: Trained, ema, state: TrainState,
               rollbacks: int, max_rollbacks: int, grace_seconds: float | None = None,
               recipe: Recipe | None = None) -> TrainState:  # fmt: skip
    """Back to the newest commit after a NaN/Inf; the data stream goes on, so the offending batch is skipped."""
    log = structlog.get_logger("gand.train")
    log.warning("non_finite_loss", step=state.step, rollbacks=rollbacks, max_rollbacks=max_rollbacks)
    if rollbacks > max_rollbacks:
        raise Diverged(
            f"losses turned NaN/Inf at step {state.step} after {max_rollbacks} roll-backs (checkpoint.max_rollbacks); "
            "lower the learning rates, use fp32 or bf16, or add a gradient penalty / spectral norm"
        )
    checkpoints.wait(grace_seconds)  # the newest snapshot may still be uploading
    resumed = checkpoints.load_latest()
    if resumed is None:
        raise Diverged(f"losses turned NaN/Inf at step {state.step}, before any checkpoint to roll back to")
    _restore_training_state(resumed, engine, g, d, recipe)
    if ema is not None and "generator_ema" in resumed.weights:
        ema.model.load_state_dict(resumed.weights["generator_ema"])
    rolled = TrainState.from_dict(resumed.state["train"])
    rolled.record_position(state.data_position)
    log.warning("rolled_back", checkpoint=resumed.name, step=rolled.step, images_seen=rolled.images_seen)
    return rolled


def _write_samples(engine: Engine, g: Trained, ema, fixed_noise: torch.Tensor, fixed_classes: torch.Tensor | None,
                   recipe: Recipe, batch: DeviceBatch, history: LossHistory, run_store: Store,
                   metrics: TrainingMetrics, cfg: GandConfig, state: TrainState,
                   trackers: Trackers | None) -> None:  # fmt: skip
    """The fixed-noise grid and the loss curve that led to it, side by side in the samples folder."""
    # Every rank runs G on the same fixed noise: under ZeRO-3 its forward gathers weights collectively.
    with engine.full_weights(g) as g_module, sampling_mode(ema.model if ema is not None else g_module,
                                                           recipe) as sampler:  # fmt: skip
        images = generate(sampler, fixed_noise.to(engine.device),
                          None if fixed_classes is None else fixed_classes.to(engine.device))  # fmt: skip
    if engine.is_main:
        grid = grid_pixels(images, value_range=recipe.value_range)
        run_store.write_bytes(f"samples/step-{state.step:06d}.png", png_bytes(grid))
        if trackers is not None:
            trackers.log_grid(state.step, grid)
        curve = loss_curve_png(history, title=f"{cfg.run.name}: losses up to step {state.step}")
        run_store.write_bytes(f"samples/step-{state.step:06d}-losses.png", curve)
        metrics.record_diversity(sample_diversity(images, recipe.model_input(batch.images)))


def _evaluate(evaluator, engine: Engine, g: Trained, ema, state: TrainState, history: LossHistory,
              metrics: TrainingMetrics, log, trackers: Trackers | None) -> dict[str, float] | None:  # fmt: skip
    """FID/KID/IS of the sampling generator (EMA when there is one) on the main rank; the others wait."""
    with engine.full_weights(g) as g_module:  # every rank: under ZeRO-3 this gathers the weights collectively
        if evaluator is None:
            return None
        started = time.perf_counter()
        scores = evaluator(ema.model if ema is not None else g_module)
    log.info("evaluated", step=state.step, images_seen=state.images_seen, seconds=round(time.perf_counter() -
             started, 1), **{name: round(value, 4) for name, value in scores.items()})  # fmt: skip
    metrics.record_eval(scores)
    if trackers is not None:
        trackers.log_scores(state.step, scores)
    history.record(state.images_seen, {f"eval:{name}": value for name, value in scores.items()})
    return scores


def _save(checkpoints, engine: Engine, g: Trained, d: Trained, ema, fixed_noise, fixed_classes, state, cfg,
          num_classes, history: LossHistory, scores: dict[str, float] | None = None,
          class_names: list[str] | None = None, recipe: Recipe | None = None,
          guard: CollapseGuard | None = None,
          tracking_run_ids: dict[str, str] | None = None) -> Snapshot | None:  # fmt: skip
    weights = {"generator": engine.consolidated_state_dict(g), "discriminator": engine.consolidated_state_dict(d)}
    if ema is not None:
        weights["generator_ema"] = ema.model.state_dict()
    trainer: dict = {"fixed_noise": fixed_noise, "fixed_classes": fixed_classes}
    rank_state: dict = {"rng": capture_rng()}
    for name, part in _recipe_state_parts(recipe).items():  # per rank (each follows its own batches), and rank 0's
        trainer[name] = rank_state[name] = part.state_dict()
    if guard is not None:
        trainer["guard"] = guard.state_dict()
    for net in (g, d):
        net_state, per_rank = engine.trainer_state(net)
        (rank_state if per_rank else trainer)[net.name] = net_state
    return checkpoints.save(
        state.images_seen,
        state.step,
        weights=weights,
        trainer=trainer,
        state={
            "train": state.to_dict(),
            "config": cfg.snapshot(),
            "num_classes": num_classes,
            "class_names": class_names[:num_classes] if class_names else None,  # a resume checks their order
            "gand_version": __version__,
            "tracking_run_ids": tracking_run_ids,  # the tracker runs a resume continues (W&B, MLflow)
        },
        rank_state=rank_state,
        history=history.to_state(),
        scores=scores,
    )
