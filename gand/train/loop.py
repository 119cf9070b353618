"""The training loop. Everything it uses is built first, from the config; then it reads top to bottom."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import structlog
import torch

from gand import __version__
from gand.checkpoint.manager import Checkpoint, CheckpointManager, Snapshot, checkpoint_name
from gand.checkpoint.progress import ProgressMarker
from gand.checkpoint.uploader import RetryPolicy, UploadResult
from gand.config import GandConfig
from gand.data.loader import READ_COUNTERS, Batch, ImageLoader
from gand.data.manifest import check_dataset, read_manifest
from gand.errors import ConfigError, Diverged, PeerLost, Preempted, StorageError
from gand.eval.fid import Evaluator
from gand.eval.samples import generate, grid_png
from gand.models import build_models, spec_from_config
from gand.observability.curves import LossHistory, loss_curve_png
from gand.observability.health import DominanceWindow, sample_diversity
from gand.observability.logging import configure_logging
from gand.observability.metrics import TrainingMetrics
from gand.storage import Store, is_local, redact
from gand.train.control import RunControl, all_finite, count_due
from gand.train.engine import Engine, Trained, build_engine, deepspeed_safe_globals, lost_a_peer
from gand.train.optim import GeneratorEMA, build_optimizer
from gand.train.state import TrainState, capture_rng, restore_rng, seed_everything
from gand.train.steps import Recipe, discriminator_update, generator_update


def train(cfg: GandConfig, fresh: bool = False) -> TrainState:
    """Train until train.max_steps, resuming from the newest committed checkpoint unless `fresh`.

    Raises Preempted (exit 75) after a SIGTERM/SIGINT and a save, Diverged (exit 3) after too many NaN roll-backs.
    """
    engine = build_engine(cfg.precision, cfg.memory, cfg.train.batch_size)
    local_log = Path(cfg.run_dir) / "train.jsonl" if engine.is_main and is_local(cfg.run_dir) else None
    configure_logging(engine.rank, engine.is_main, local_log, run_name=cfg.run.name)
    log = structlog.get_logger("gand.train")
    seed_everything(cfg.train.seed + engine.rank)  # ranks draw different noise; wrapping syncs the initial weights
    control = RunControl(engine, cfg.checkpoint, cfg.train.max_steps)
    control.install_signal_handlers()  # from here on a SIGTERM means "save at the next step boundary"
    try:
        return _train(cfg, fresh, engine, control, log)
    except RuntimeError as error:
        # Another node vanished (a spot preemption past its grace, a crash): exit 75 like a preemption, so that
        # Kubernetes restarts the Job without counting a failure. Its checkpoint cannot commit without the lost
        # ranks' parts, so there is nothing to wait for; the resume starts from the last commit.
        if not lost_a_peer(error):
            raise
        first_line = str(error).splitlines()[0][:300]
        log.warning("peer_lost", error=first_line, exit_code=PeerLost.exit_code)
        raise PeerLost(f"another rank stopped in the middle of a collective ({first_line}); run the same command "
                       "to resume from the last committed checkpoint") from None  # fmt: skip
    finally:
        control.restore_signal_handlers()


def _train(cfg: GandConfig, fresh: bool, engine: Engine, control: RunControl, log) -> TrainState:
    # -- build everything ----------------------------------------------------------------------------------
    manifest, _ = read_manifest(cfg.data.path)
    num_classes = check_dataset(manifest, cfg)
    spec = spec_from_config(cfg.model, cfg.data.resolution, cfg.data.channels, num_classes)
    generator, discriminator = build_models(cfg.model.arch, spec)
    opt_g = build_optimizer(generator.parameters(), cfg.optim.g)
    opt_d = build_optimizer(discriminator.parameters(), cfg.optim.d)
    recipe = Recipe.from_config(cfg, num_classes)
    fixed_noise, fixed_classes = _fixed_sample_inputs(cfg, recipe)
    checkpoints = _checkpoint_manager(cfg, engine)
    progress = ProgressMarker(checkpoints.store, cfg.checkpoint.progress_every_seconds if engine.is_main else None)
    run_store = Store(cfg.run_dir)
    state = TrainState()
    history = LossHistory()

    if fresh:
        if engine.is_main:
            checkpoints.discard_all()
            progress.discard()
        engine.barrier()
    previous_progress = progress.read() if engine.is_main else None  # before this process writes its own
    resumed = checkpoints.load_latest()
    steps_lost = None
    if resumed is not None:
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
    if resumed is not None:
        _restore_training_state(resumed, engine, g, d)
        if resumed.rank_state is not None:
            restore_rng(resumed.rank_state["rng"])
    loader = ImageLoader(
        cfg.data.path,
        cfg.data.resolution,
        cfg.train.batch_size,
        seed=cfg.train.seed,
        rank=engine.rank,
        world_size=engine.world_size,
        workers=cfg.data.workers,
        shuffle_buffer=cfg.data.shuffle_buffer,
        epoch_images=cfg.data.epoch_images,
        channels=cfg.data.channels,
        num_classes=num_classes,
        agree=engine.from_rank_zero,
    )
    metrics = TrainingMetrics(cfg.metrics.port if engine.is_main else None, cfg.run.name)
    if resumed is not None:
        metrics.record_resume(state.step, steps_lost)
    dominance = DominanceWindow()
    evaluator = Evaluator(cfg, recipe, engine.device) if cfg.eval.every_kimg and engine.is_main else None
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
        precision=cfg.precision,
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
    # "D once every four batches"), so images_seen grows by the same amount every step.
    batches = loader.batches(start=state.data_position)
    window = Throughput(state.images_seen)
    d_losses: dict[str, torch.Tensor] = {}
    rollbacks = 0
    data = DataWait()
    while state.step < cfg.train.max_steps:
        train_d = state.step % schedule.d_every == 0
        # Health statistics cost a little, so they are only gathered on steps that get logged.
        stats: dict[str, torch.Tensor] | None = {} if _due(state.step + 1, cfg.train.log_every_steps,
                                                             cfg.train.max_steps) else None  # fmt: skip
        for _ in range(schedule.d_steps):
            batch = data.next(batches)
            state.record_position(batch.position)
            if train_d:
                d_losses = discriminator_update(engine, d, g, recipe, batch, stats)

        for _ in range(schedule.g_steps):
            g_losses = generator_update(engine, g, d, recipe, cfg.train.batch_size, stats)
            if ema is not None:
                with engine.full_weights(g) as g_module:
                    ema.update(g_module, images_per_batch)

        images_before = state.images_seen
        state.advance(images=images_per_batch * schedule.d_steps)
        progress.update(state.step, state.images_seen)
        # Every rank takes the same branch: stop after a signal, save when due, roll back after NaN/Inf.
        decision = control.decide(state.step, images_before, state.images_seen, all_finite(g_losses, d_losses))
        if decision.roll_back or (decision.save and not _weights_finite(engine, g, d)):
            rollbacks += 1
            state = _roll_back(checkpoints, engine, g, d, ema, state, rollbacks, cfg.checkpoint.max_rollbacks)
            history.truncate(state.images_seen)
            metrics.record_rollback()
            continue

        if stats is not None:
            named = _named_losses(g_losses, d_losses)
            combined = engine.mean_across_ranks({**named, **stats, **data.since_last_log()})
            combined.update({name: combined[name] * engine.world_size for name in READ_COUNTERS})  # all ranks' sum
            losses = {name: combined.pop(name) for name in named}
            combined.update(_local_stats(engine, g, d, dominance, combined))
            rate = window.images_per_second(state.images_seen)
            log.info("train_step", step=state.step, images_seen=state.images_seen, epoch=state.epoch,
                     **{f"loss_{name}": round(value, 4) for name, value in losses.items()},
                     **{name: round(combined[name], 3) for name in ("d_real", "d_fake") if name in combined},
                     images_per_second=round(rate, 1),
                     **{k: v for k, v in combined.items() if k.startswith(PRECISION_COUNTERS)})  # fmt: skip
            metrics.record_step(state.step, state.images_seen, state.epoch, losses, rate, combined)
            history.record(state.images_seen, losses, combined)
            if engine.device.type == "cuda":
                metrics.record_gpu_memory(torch.cuda.memory_allocated(), torch.cuda.memory_reserved(),
                                          torch.cuda.max_memory_allocated())  # fmt: skip
        if count_due(state.step, images_before, state.images_seen, cfg.samples.every_steps, cfg.samples.every_images,
                     cfg.train.max_steps):  # fmt: skip
            # Every rank runs G on the same fixed noise: under ZeRO-3 its forward gathers weights collectively.
            with engine.full_weights(g) as g_module:
                images = generate(ema.model if ema is not None else g_module, fixed_noise.to(engine.device),
                                  None if fixed_classes is None else fixed_classes.to(engine.device))  # fmt: skip
            if engine.is_main:
                # The grid and the loss curve that led to it, side by side in the samples folder.
                grid = grid_png(images, value_range=recipe.value_range)
                run_store.write_bytes(f"samples/step-{state.step:06d}.png", grid)
                curve = loss_curve_png(history, title=f"{cfg.run.name}: losses up to step {state.step}")
                run_store.write_bytes(f"samples/step-{state.step:06d}-losses.png", curve)
                metrics.record_diversity(sample_diversity(images, recipe.to_model_range(batch.images)))
        # Evaluations land on a checkpoint, so its manifest carries the scores and retention can keep the best.
        evaluate = bool(eval_every_images) and count_due(state.step, images_before, state.images_seen, None,
                                                          eval_every_images, cfg.train.max_steps)  # fmt: skip
        scores = _evaluate(evaluator, engine, g, ema, state, history, metrics, log) if evaluate else None
        if decision.save or evaluate:
            snapshot = _save(checkpoints, engine, g, d, ema, fixed_noise, fixed_classes, state, cfg, num_classes,
                             history, scores)  # fmt: skip
            control.saved()
            if snapshot is not None:
                log.info("checkpoint_snapshot", checkpoint=snapshot.name, step=state.step,
                         stall_seconds=round(snapshot.stall_seconds, 4))  # fmt: skip
                metrics.record_snapshot(snapshot.stall_seconds, sum(map(len, snapshot.files.values())))
        _report_uploads(checkpoints, metrics, log)
        if decision.stop:
            _stop_after_signal(checkpoints, control, metrics, state, log)

    engine.close()  # the last collective; from here each rank only waits for its own uploads
    uploaded = checkpoints.wait(cfg.checkpoint.upload_timeout_seconds)
    final = [r for r in _report_uploads(checkpoints, metrics, log) if r.name == checkpoint_name(state.images_seen)]
    log.info("train_done", step=state.step, images_seen=state.images_seen, run_dir=redact(cfg.run_dir))
    metrics.close()
    if not uploaded or any(not result.committed for result in final):
        problem = final[-1].error if final else f"not finished after {cfg.checkpoint.upload_timeout_seconds} s"
        raise StorageError(
            f"training reached step {state.step}, but its checkpoint could not be uploaded to "
            f"{redact(cfg.checkpoint_url)} ({problem}); the same command resumes from the last commit"
        )
    return state


# -- helpers the loop calls ------------------------------------------------------------------------------------
def _due(step: int, every_steps: int, max_steps: int) -> bool:
    """Periodic work happens every N steps and once more at the very end."""
    return step % every_steps == 0 or step == max_steps


def _named_losses(g_losses: dict[str, torch.Tensor], d_losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """g, d (totals) and each term, e.g. d_adv, d_gp, g_ambiguity."""
    named = {"g": sum(g_losses.values())}
    if d_losses:
        named["d"] = sum(d_losses.values())
    named.update({f"g_{term}": value for term, value in g_losses.items()})
    named.update({f"d_{term}": value for term, value in d_losses.items()})
    return named


class DataWait:
    """Time the loop spends waiting for batches, how many it drew, and what the loader workers counted (shards
    opened, samples skipped) since the last log step."""

    def __init__(self):
        self.seconds, self.batches, self.counts = 0.0, 0, dict.fromkeys(READ_COUNTERS, 0)

    def next(self, batches: Iterator[Batch]) -> Batch:
        started = time.perf_counter()
        batch = next(batches)
        self.seconds += time.perf_counter() - started
        self.batches += 1
        for name, count in batch.counts.items():
            self.counts[name] += count
        return batch

    def since_last_log(self) -> dict[str, torch.Tensor]:
        values = {"data_wait": torch.tensor(self.seconds), "batches": torch.tensor(float(self.batches))}
        values.update({name: torch.tensor(float(count)) for name, count in self.counts.items()})
        self.seconds, self.batches, self.counts = 0.0, 0, dict.fromkeys(READ_COUNTERS, 0)
        return values


def _local_stats(engine: Engine, g: Trained, d: Trained, dominance: DominanceWindow,
                 combined: dict[str, float]) -> dict[str, float]:  # fmt: skip
    """Statistics that are the same on every rank: learning rates, fp16 scaling, and D's winning streak."""
    local: dict[str, float] = {f"lr_{net.name[0]}": engine.learning_rate(net) for net in (g, d)}
    local.update(_precision_counters(engine, g, d))
    if "acc_real" in combined:
        local["d_dominating"] = float(dominance.update(combined["acc_real"], combined["acc_fake"]))
    return local


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
        log.warning("world_size_changed", checkpoint=resumed.name, saved_ranks=resumed.world_size,
                    ranks=engine.world_size, effect="models and optimizers resume; data order and noise differ "
                    "from an uninterrupted run from here on")  # fmt: skip
    return state


def _restore_training_state(resumed: Checkpoint, engine: Engine, g: Trained, d: Trained) -> None:
    """Weights, optimiser and scaler state into networks already set up by the engine."""
    own = resumed.rank_state or {}
    for net in (g, d):
        net_state = own.get(net.name) or resumed.trainer.get(net.name)
        engine.restore(net, resumed.weights[net.name], net_state)


def _weights_finite(engine: Engine, g: Trained, d: Trained) -> bool:
    """Before saving: a NaN can hide in the weights a step before it shows in a loss. Same answer on every rank
    (the weights are the same everywhere; ZeRO-3 gathers them), so no collective is needed to agree."""
    for net in (g, d):
        with engine.full_weights(net) as module:
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                return False
    return True


def _roll_back(checkpoints: CheckpointManager, engine: Engine, g: Trained, d: Trained, ema, state: TrainState,
               rollbacks: int, max_rollbacks: int) -> TrainState:  # fmt: skip
    """Back to the newest commit after a NaN/Inf; the data stream goes on, so the offending batch is skipped."""
    log = structlog.get_logger("gand.train")
    log.warning("non_finite_loss", step=state.step, rollbacks=rollbacks, max_rollbacks=max_rollbacks)
    if rollbacks > max_rollbacks:
        raise Diverged(
            f"losses turned NaN/Inf at step {state.step} after {max_rollbacks} roll-backs (checkpoint.max_rollbacks); "
            "lower the learning rates, use fp32 or bf16, or add a gradient penalty / spectral norm"
        )
    checkpoints.wait()  # the newest snapshot may still be uploading
    resumed = checkpoints.load_latest()
    if resumed is None:
        raise Diverged(f"losses turned NaN/Inf at step {state.step}, before any checkpoint to roll back to")
    _restore_training_state(resumed, engine, g, d)
    if ema is not None and "generator_ema" in resumed.weights:
        ema.model.load_state_dict(resumed.weights["generator_ema"])
    rolled = TrainState.from_dict(resumed.state["train"])
    rolled.record_position(state.data_position)
    log.warning("rolled_back", checkpoint=resumed.name, step=rolled.step, images_seen=rolled.images_seen)
    return rolled


def _report_uploads(checkpoints: CheckpointManager, metrics: TrainingMetrics, log) -> list[UploadResult]:
    """Finished uploads into the log and the metrics; training goes on either way."""
    results = checkpoints.poll()
    for result in results:
        if result.committed:
            metrics.record_commit(result)
        else:
            log.error("checkpoint_upload_failed", checkpoint=result.name, error=result.error,
                      effect="training goes on; the next checkpoint tries again")  # fmt: skip
    abandoned = sum(not result.committed for result in results)
    metrics.record_uploads(checkpoints.uploads_pending, checkpoints.failed_attempts, abandoned)
    return results


def _stop_after_signal(checkpoints: CheckpointManager, control: RunControl, metrics: TrainingMetrics,
                       state: TrainState, log) -> NoReturn:  # fmt: skip
    """The save of this step is handed over: wait for its upload within the grace period, then exit 75."""
    uploaded = checkpoints.wait(control.grace_left_seconds())
    results = _report_uploads(checkpoints, metrics, log)
    name = checkpoint_name(state.images_seen)
    committed = uploaded and all(r.committed for r in results if r.name == name)
    log.warning("stopped_by_signal", signal=control.stop_signal, step=state.step, checkpoint=name,
                uploaded=committed, exit_code=Preempted.exit_code)  # fmt: skip
    metrics.close()
    outcome = f"saved {name}" if committed else f"the upload of {name} did not finish; resumes from the last commit"
    raise Preempted(f"stopped by {control.stop_signal} at step {state.step}: {outcome}; run the same command to resume")


PRECISION_COUNTERS = ("loss_scale_", "skipped_steps_")


def _precision_counters(engine: Engine, g: Trained, d: Trained) -> dict[str, float | int]:
    counters: dict[str, float | int] = {}
    for net in (g, d):
        scale = engine.loss_scale(net)
        if scale is not None:
            counters[f"loss_scale_{net.name[0]}"] = scale
            counters[f"skipped_steps_{net.name[0]}"] = net.skipped_steps
    return counters


def _evaluate(evaluator, engine: Engine, g: Trained, ema, state: TrainState, history: LossHistory,
              metrics: TrainingMetrics, log) -> dict[str, float] | None:  # fmt: skip
    """FID/KID/IS of the sampling generator (EMA when there is one) on the main rank; the others wait."""
    with engine.full_weights(g) as g_module:  # every rank: under ZeRO-3 this gathers the weights collectively
        if evaluator is None:
            return None
        started = time.perf_counter()
        scores = evaluator(ema.model if ema is not None else g_module)
    log.info("evaluated", step=state.step, images_seen=state.images_seen, seconds=round(time.perf_counter() -
             started, 1), **{name: round(value, 4) for name, value in scores.items()})  # fmt: skip
    metrics.record_eval(scores)
    history.record(state.images_seen, {f"eval:{name}": value for name, value in scores.items()})
    return scores


def _save(checkpoints, engine: Engine, g: Trained, d: Trained, ema, fixed_noise, fixed_classes, state, cfg,
          num_classes, history: LossHistory, scores: dict[str, float] | None = None) -> Snapshot | None:  # fmt: skip
    weights = {"generator": engine.consolidated_state_dict(g), "discriminator": engine.consolidated_state_dict(d)}
    if ema is not None:
        weights["generator_ema"] = ema.model.state_dict()
    trainer: dict = {"fixed_noise": fixed_noise, "fixed_classes": fixed_classes}
    rank_state: dict = {"rng": capture_rng()}
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
            "gand_version": __version__,
        },
        rank_state=rank_state,
        history=history.to_state(),
        scores=scores,
    )
