"""Experiment trackers (TensorBoard, Weights & Biases, MLflow, ...) through Accelerate's tracker API.

The engine builds its `Accelerator(log_with=..., project_dir=...)` from the `tracking` config section; this module
starts the trackers (`init_trackers`) and writes to them (`Accelerator.log`, each tracker's `log_images`). Rank 0
writes, at logging steps only, from the numbers the log line already read back (a `LoggedStep`): trackers add no
host-device synchronisation. The same scalars go to Prometheus (`gand.observability.metrics`).

A run keeps one tracker run across preemptions: its id is stored in the checkpoint (`tracking_run_id`), so W&B
resumes it (`resume="allow"`), and TensorBoard's writer purges the events logged after the resumed step (they
belong to training that the resume does again).

Credentials come from the trackers' own environment variables (WANDB_API_KEY, MLFLOW_TRACKING_URI, ...); gand
never reads, logs or stores them. Tests run W&B with WANDB_MODE=offline.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import structlog

from gand.errors import ConfigError
from gand.observability.report import NETWORK_TAGS, LoggedStep

log = structlog.get_logger("gand.tracking")

# tracker -> the packages that provide it (any one) and the pip requirement to name in the error.
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
}


def check_tracking(log_with: Iterable[str], directory: str | None) -> None:
    """Raise ConfigError (exit 2) naming each tracker in `tracking.log_with` whose package is missing (Accelerate
    would drop it with a warning, and the user would find an empty dashboard hours later), or a tracking directory
    that is not on this machine (trackers write local files; their own settings send them elsewhere)."""
    if directory is not None and "://" in directory and not directory.startswith("file://"):
        raise ConfigError(f"tracking.dir: {directory} is not a local directory; trackers write local files "
                          "(set tracking.dir, or run.dir, to a local path)")  # fmt: skip
    missing = [name for name in log_with if not any(importlib.util.find_spec(pkg) for pkg in PACKAGES[name][0])]
    if missing:
        installs = " ".join(PACKAGES[name][1] for name in missing)
        raise ConfigError(f"tracking.log_with: {', '.join(missing)} not installed; pip install {installs}")


def flat_config(snapshot: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A config snapshot as `section.field` -> a scalar (lists as text; unset fields left out): the form trackers
    take as hyperparameters."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in snapshot.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


def step_scalars(logged: LoggedStep, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """A logging step's scalars under tracker names (a `group/name` shows as a group in TensorBoard and W&B):
    loss/*, health/* (D outputs and accuracy, gradient norms, vanishing-gradient shares), lr/*, speed/*, progress/*,
    and `extra` (burn-in and augmentation fields) under schedule/*."""
    values: dict[str, float] = {f"loss/{name}": value for name, value in logged.losses().items()}
    values.update({f"health/{name}": value for name, value in logged.statistics().items()})
    for network, numbers in logged.networks().items():
        values[f"lr/{NETWORK_TAGS[network]}"] = numbers.learning_rate
        if numbers.loss_scale is not None:
            values[f"precision/loss_scale_{NETWORK_TAGS[network]}"] = numbers.loss_scale
    values["speed/images_per_second"] = logged.images_per_second
    values["speed/data_wait_seconds"] = logged.data.wait_seconds
    values["progress/kimg"] = logged.images_seen / 1000
    values["progress/epoch"] = logged.epoch
    for name, value in (extra or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[f"schedule/{name}"] = value
    return values


class Trackers:
    """The run's trackers on rank 0 (None elsewhere: see `start`)."""

    def __init__(self, accelerator: Any, images: bool):
        self._accelerator = accelerator
        self._images = images

    @classmethod
    def start(cls, engine: Any, cfg: Any, run_id: str, resumed_step: int | None) -> Trackers | None:
        """Start the configured trackers on the main rank and store the config as hyperparameters. `run_id` names
        the tracker run (kept in checkpoints); `resumed_step` is the step a resume continues from, or None."""
        if not cfg.tracking.log_with or not engine.is_main:
            return None
        run_name = cfg.tracking.run_name or cfg.run.name
        wandb_kwargs = {"name": run_name, "id": run_id, "dir": cfg.tracking_dir}
        if os.environ.get("WANDB_MODE", "online") not in ("offline", "dryrun", "disabled"):
            # Offline, W&B cannot resume (it asks for a login): each process writes its own offline-run-*-<id>
            # directory under the same id, and `wandb sync` uploads them in order.
            wandb_kwargs["resume"] = "allow"
        init_kwargs: dict[str, dict[str, Any]] = {"wandb": wandb_kwargs, "mlflow": {"run_name": run_name}}
        if resumed_step is not None:  # events logged after the resumed step are trained again: replace them
            init_kwargs["tensorboard"] = {"purge_step": resumed_step + 1}
        accelerator = engine.accelerator
        try:
            accelerator.init_trackers(cfg.tracking.project or cfg.run.name, config=flat_config(cfg.snapshot()),
                                      init_kwargs={name: init_kwargs[name] for name in cfg.tracking.log_with
                                                   if name in init_kwargs})  # fmt: skip
        except Exception as error:  # a tracker's own message (no login, bad URI) is the useful part
            raise ConfigError(
                f"tracking.log_with: {', '.join(cfg.tracking.log_with)} could not start: "
                f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}; "
                "see the tracker's own settings (e.g. WANDB_API_KEY or WANDB_MODE=offline), or remove tracking.log_with"
            ) from None
        log.info("trackers_started", trackers=list(cfg.tracking.log_with), run_id=run_id,
                 directory=cfg.tracking_dir, resumed_step=resumed_step)  # fmt: skip
        return cls(accelerator, cfg.tracking.images)

    def log_step(self, step: int, logged: LoggedStep, extra: Mapping[str, float] | None = None) -> None:
        self._accelerator.log(step_scalars(logged, extra), step=step)

    def log_scores(self, step: int, scores: Mapping[str, float]) -> None:
        """Evaluation scores (FID, KID, IS) under eval/*."""
        self._accelerator.log({f"eval/{name}": value for name, value in scores.items()}, step=step)

    def log_grid(self, step: int, pixels: np.ndarray) -> None:
        """The fixed-noise sample grid: H x W x C uint8 (C = 1 or 3), as `samples/grid`."""
        if not self._images:
            return
        batch = pixels[None] if pixels.ndim == 3 else pixels[None, ..., None]  # 1 x H x W x C
        for tracker in self._accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"samples/grid": batch}, step=step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({"samples/grid": list(batch)}, step=step)

    def close(self) -> None:
        """Flush and close every tracker (W&B finishes its run; a resume opens it again). Not
        `Accelerator.end_training`: that also destroys the process group, which the other ranks still use."""
        for tracker in self._accelerator.trackers:
            tracker.finish()
        self._accelerator.trackers = []


def new_run_id() -> str:
    """A tracker run id for a new run: 32 hex digits."""
    return uuid.uuid4().hex
