"""The training loop. Everything it uses is built first, from the config; then it reads top to bottom."""

from __future__ import annotations

import time
from pathlib import Path

import structlog
import torch

from gand import __version__
from gand.checkpoint.manager import Checkpoint, CheckpointManager
from gand.config import GandConfig
from gand.data.loader import ImageLoader
from gand.data.manifest import check_resolution, read_manifest
from gand.eval.samples import generate, grid_png
from gand.losses import ADVERSARIAL_LOSSES
from gand.models import ModelSpec, build_models
from gand.observability.logging import configure_logging
from gand.observability.metrics import TrainingMetrics
from gand.storage import Store, is_local, redact
from gand.train.engine import Engine
from gand.train.state import TrainState, capture_rng, restore_rng, seed_everything


def train(cfg: GandConfig) -> TrainState:
    engine = Engine(cfg.precision)
    local_log = Path(cfg.run_dir) / "train.jsonl" if engine.is_main and is_local(cfg.run_dir) else None
    configure_logging(engine.rank, engine.is_main, local_log)
    log = structlog.get_logger("gand.train")
    seed_everything(cfg.train.seed + engine.rank)  # ranks draw different noise; DDP syncs the initial weights

    # -- build everything ----------------------------------------------------------------------------------
    manifest, data_store = read_manifest(cfg.data.path)
    check_resolution(manifest, cfg.data.resolution, cfg.data.path)
    spec = ModelSpec(cfg.data.resolution, cfg.model.latent_dim, cfg.model.width)
    generator, discriminator = build_models(cfg.model.arch, spec)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr_g, betas=cfg.train.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.train.lr_d, betas=cfg.train.betas)
    adversarial = ADVERSARIAL_LOSSES[cfg.train.loss]()
    seed_generator = torch.Generator().manual_seed(cfg.train.seed)
    fixed_noise = torch.randn(cfg.samples.count, cfg.model.latent_dim, generator=seed_generator)
    checkpoints = CheckpointManager(cfg.checkpoint_url, engine, keep_last=cfg.checkpoint.keep_last)
    run_store = Store(cfg.run_dir)
    state = TrainState()

    resumed = checkpoints.load_latest()
    if resumed is not None:
        state, fixed_noise = _restore(resumed, generator, discriminator, opt_g, opt_d)
        log.info("resumed", checkpoint=resumed.name, step=state.step, images_seen=state.images_seen)
    if state.step >= cfg.train.max_steps:
        log.info("already_complete", step=state.step, hint="raise train.max_steps to train further")
        engine.close()
        return state

    generator, discriminator, opt_g, opt_d = engine.prepare(generator, discriminator, opt_g, opt_d)
    loader = ImageLoader(
        manifest,
        data_store,
        cfg.data.resolution,
        cfg.train.batch_size,
        seed=cfg.train.seed,
        rank=engine.rank,
        world_size=engine.world_size,
        workers=cfg.data.workers,
        shuffle_buffer=cfg.data.shuffle_buffer,
        epoch_images=cfg.data.epoch_images,
    )
    metrics = TrainingMetrics(cfg.metrics.port if engine.is_main else None, cfg.run.name)
    images_per_step = cfg.train.batch_size * engine.world_size
    log.info(
        "train_start",
        run=cfg.run.name,
        arch=cfg.model.arch,
        resolution=cfg.data.resolution,
        dataset_images=manifest.num_samples,
        world_size=engine.world_size,
        device=str(engine.device),
        precision=cfg.precision,
        images_per_step=images_per_step,
        start_step=state.step,
        max_steps=cfg.train.max_steps,
    )

    # -- the loop ------------------------------------------------------------------------------------------
    batches = loader.batches(start_step=state.step)
    window = Throughput(state.images_seen)
    while state.step < cfg.train.max_steps:
        batch = next(batches)
        real = batch.images.to(engine.device, non_blocking=True)
        latent_shape = (real.shape[0], cfg.model.latent_dim)

        # Discriminator step: real images towards "real", generated ones towards "fake".
        with torch.no_grad():
            fake = generator(torch.randn(latent_shape, device=engine.device))
        d_loss = adversarial.discriminator(discriminator(real), discriminator(fake))
        opt_d.zero_grad(set_to_none=True)
        engine.backward(d_loss)
        opt_d.step()

        # Generator step: make the frozen discriminator call fresh samples real.
        with engine.frozen(discriminator) as judge:
            g_loss = adversarial.generator(judge(generator(torch.randn(latent_shape, device=engine.device))))
            opt_g.zero_grad(set_to_none=True)
            engine.backward(g_loss)
        opt_g.step()

        state.advance(images=images_per_step, epoch=batch.epoch)

        if _due(state.step, cfg.train.log_every_steps, cfg.train.max_steps):
            losses = {"g": engine.mean_across_ranks(g_loss), "d": engine.mean_across_ranks(d_loss)}
            rate = window.images_per_second(state.images_seen)
            log.info(
                "train_step",
                step=state.step,
                images_seen=state.images_seen,
                epoch=state.epoch,
                loss_g=round(losses["g"], 4),
                loss_d=round(losses["d"], 4),
                images_per_second=round(rate, 1),
            )
            metrics.record_step(state.step, state.images_seen, state.epoch, losses, rate)
        if engine.is_main and _due(state.step, cfg.samples.every_steps, cfg.train.max_steps):
            _write_samples(run_store, engine.unwrap(generator), fixed_noise.to(engine.device), state.step)
        if _due(state.step, cfg.checkpoint.every_steps, cfg.train.max_steps):
            _save(checkpoints, engine, generator, discriminator, opt_g, opt_d, fixed_noise, state, cfg)
            metrics.record_checkpoint()

    log.info("train_done", step=state.step, images_seen=state.images_seen, run_dir=redact(cfg.run_dir))
    metrics.close()
    engine.close()
    return state


# -- helpers the loop calls ------------------------------------------------------------------------------------
def _due(step: int, every_steps: int, max_steps: int) -> bool:
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


def _restore(resumed: Checkpoint, generator, discriminator, opt_g, opt_d) -> tuple[TrainState, torch.Tensor]:
    generator.load_state_dict(resumed.weights["generator"])
    discriminator.load_state_dict(resumed.weights["discriminator"])
    opt_g.load_state_dict(resumed.trainer["optimizer_g"])
    opt_d.load_state_dict(resumed.trainer["optimizer_d"])
    if resumed.rng is not None:
        restore_rng(resumed.rng)
    return TrainState.from_dict(resumed.state["train"]), resumed.trainer["fixed_noise"]


def _save(checkpoints, engine, generator, discriminator, opt_g, opt_d, fixed_noise, state, cfg) -> None:
    checkpoints.save(
        state.images_seen,
        state.step,
        weights={
            "generator": engine.unwrap(generator).state_dict(),
            "discriminator": engine.unwrap(discriminator).state_dict(),
        },
        trainer={
            "optimizer_g": opt_g.state_dict(),
            "optimizer_d": opt_d.state_dict(),
            "fixed_noise": fixed_noise,
        },
        state={"train": state.to_dict(), "config": cfg.snapshot(), "gand_version": __version__},
        rng=capture_rng(),
    )


def _write_samples(run_store: Store, generator, noise: torch.Tensor, step: int) -> None:
    run_store.write_bytes(f"samples/step-{step:06d}.png", grid_png(generate(generator, noise)))
