"""Experiment trackers (TensorBoard, Weights & Biases, MLflow, ...) through Accelerate's tracker API.

The engine builds its `Accelerator(log_with=..., project_dir=...)` from the `tracking` config section; this module
starts the trackers (`init_trackers`) and writes to them (`Accelerator.log`, each tracker's `log_images`). Rank 0
writes, at logging steps only, from the numbers the log line already read back (a `LoggedStep`): trackers add no
host-device synchronisation. The same scalars go to Prometheus (`gand.observability.metrics`).

A tracker is never the reason a run fails once it trains: a tracker that cannot start on a resume (a W&B outage
while a preempted Job restarts), or that fails while logging, is logged as a warning and switched off; training goes
on. Only the first start of a run, which a person has just typed, turns a tracker that cannot start into a config
error (exit 2).

A run keeps one tracker run across preemptions: the ids are stored in the checkpoint (`tracking_run_ids`). W&B
resumes its run (`resume="allow"`) and MLflow its run id. Re-trained steps after a resume keep their data: W&B
drops any step below the run's last one, so gand logs W&B against its own `train/step` axis; TensorBoard's writer
purges the events after the resumed step (they belong to training that the resume does again).

Credentials come from the trackers' own environment variables (WANDB_API_KEY, MLFLOW_TRACKING_URI, ...); gand
never reads, logs or stores them, and errors pass through `redact`. Tests run W&B with WANDB_MODE=offline.
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
from gand.storage import redact, redact_text

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
STEP_AXIS = "train/step"  # W&B's x-axis: gand's step, which goes back after a resume or a roll-back
IMAGE_LISTS = ("wandb", "swanlab")  # trackers whose log_images take a list of images per key; others take one


def local_directory(directory: str) -> str:
    """`tracking.dir` as a local path: `file://` stripped; other URLs are a ConfigError (trackers write local files;
    their own settings send data elsewhere)."""
    if directory.startswith("file://"):
        return directory.removeprefix("file://")
    if "://" in directory:
        raise ConfigError(
            f"tracking.dir: {redact(directory)} is not a local directory; trackers write local files "
            "(set tracking.dir, or run.dir, to a local path)"
        )
    return directory


def check_tracking(log_with: Iterable[str], directory: str | None) -> None:
    """Raise ConfigError (exit 2) naming each tracker in `tracking.log_with` whose package is missing (Accelerate
    would drop it with a warning, and the user would find an empty dashboard hours later), or a tracking directory
    that is not on this machine."""
    if directory is not None:
        local_directory(directory)
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
    """The run's trackers on rank 0 (None elsewhere: see `start`). Every call is guarded: a tracker that raises is
    logged once and dropped, and training goes on."""

    def __init__(self, accelerator: Any, images: bool):
        self._accelerator = accelerator
        self._images = images

    @classmethod
    def start(
        cls, engine: Any, cfg: Any, run_ids: Mapping[str, str], resumed_step: int | None, restarted: bool = False
    ) -> Trackers | None:
        """Start the configured trackers on the main rank and store the config as hyperparameters. `run_ids` are
        the tracker runs to continue (from the checkpoint; W&B's is made up front, see `new_run_ids`);
        `resumed_step` is the step a resume continues from (None: no checkpoint yet); `restarted` says the run ran
        before (a resume, or a restart before its first commit), where a tracker that cannot start is a warning."""
        if not cfg.tracking.log_with or not engine.is_main:
            return None
        accelerator = engine.accelerator
        try:
            accelerator.init_trackers(
                cfg.tracking.project or cfg.run.name,
                config=flat_config(cfg.snapshot()),
                init_kwargs=_init_kwargs(cfg, run_ids, resumed_step),
            )
            for tracker in accelerator.trackers:
                if tracker.name == "wandb":
                    tracker.run.define_metric(STEP_AXIS)
                    tracker.run.define_metric("*", step_metric=STEP_AXIS)
        except Exception as error:  # the tracker's own message (no login, a server down) is the useful part
            _finish_quietly(accelerator)
            first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            problem = f"{type(error).__name__}: {redact_text(first_line)}"
            if not restarted:  # the run's first start: a person just typed this, tell them now
                raise ConfigError(
                    f"tracking.log_with: {', '.join(cfg.tracking.log_with)} could not start: {problem}; see the "
                    "tracker's own settings (e.g. WANDB_API_KEY, or WANDB_MODE=offline), or remove tracking.log_with"
                ) from None
            log.warning(
                "trackers_unavailable",
                trackers=list(cfg.tracking.log_with),
                error=problem,
                effect="training resumes without trackers; the metrics and logs go on",
            )
            return None
        log.info(
            "trackers_started",
            trackers=list(cfg.tracking.log_with),
            run_ids=dict(run_ids),
            directory=cfg.tracking_dir,
            resumed_step=resumed_step,
        )
        return cls(accelerator, cfg.tracking.images)

    def run_ids(self) -> dict[str, str]:
        """The tracker runs this process writes to, by tracker: what a resume continues (kept in checkpoints)."""
        ids = {}
        for tracker in self._accelerator.trackers:
            if tracker.name == "wandb":
                ids["wandb"] = tracker.run.id
            elif tracker.name == "mlflow" and getattr(tracker, "active_run", None) is not None:
                ids["mlflow"] = tracker.active_run.info.run_id
        return ids

    def log_step(self, step: int, logged: LoggedStep, extra: Mapping[str, float] | None = None) -> None:
        self._log(step, step_scalars(logged, extra))

    def log_scores(self, step: int, scores: Mapping[str, float]) -> None:
        """Evaluation scores (FID, KID, IS) under eval/*."""
        self._log(step, {f"eval/{name}": value for name, value in scores.items()})

    def log_grid(self, step: int, pixels: np.ndarray) -> None:
        """The fixed-noise sample grid: H x W x C uint8 (C = 1 or 3), as `samples/grid`."""
        if not self._images:
            return
        image = pixels if pixels.ndim == 3 else pixels[..., None]
        for tracker in list(self._accelerator.trackers):
            if not hasattr(tracker, "log_images"):
                continue
            with self._guard(tracker):
                if tracker.name == "tensorboard":
                    tracker.log_images({"samples/grid": image[None]}, step=step, dataformats="NHWC")
                elif tracker.name == "wandb":  # against gand's step axis, like the scalars
                    import wandb

                    tracker.log({"samples/grid": [wandb.Image(image)], STEP_AXIS: step})
                elif tracker.name in IMAGE_LISTS:
                    tracker.log_images({"samples/grid": [image]}, step=step)
                else:  # aim, clearml, ...: one image per key
                    tracker.log_images({"samples/grid": image}, step=step)

    def _log(self, step: int, values: dict[str, float]) -> None:
        for tracker in list(self._accelerator.trackers):
            with self._guard(tracker):
                if tracker.name == "wandb":  # W&B drops steps below its last: gand's step is a metric instead
                    tracker.log({**values, STEP_AXIS: step})
                else:
                    tracker.log(values, step=step)

    def _guard(self, tracker: Any):
        return _TrackerGuard(self._accelerator, tracker)

    def close(self) -> None:
        """Flush and close every tracker (W&B finishes its run; a resume opens it again). Not
        `Accelerator.end_training`: that also destroys the process group, which the other ranks still use. A
        tracker that fails to close is logged; the run's own outcome (its exit code) stands."""
        _finish_quietly(self._accelerator)


class _TrackerGuard:
    """A tracker call that raises is logged once and the tracker dropped: a full disk under TensorBoard's files or a
    tracker's server going away must not end days of training."""

    def __init__(self, accelerator: Any, tracker: Any):
        self.accelerator, self.tracker = accelerator, tracker

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, _traceback) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        log.warning(
            "tracker_failed",
            tracker=self.tracker.name,
            error=f"{type(error).__name__}: {redact_text(str(error))[:300]}",
            effect="this tracker is switched off for the rest of the process; training goes on",
        )
        if self.tracker in self.accelerator.trackers:
            self.accelerator.trackers.remove(self.tracker)
        return True


def _finish_quietly(accelerator: Any) -> None:
    for tracker in list(accelerator.trackers):
        try:
            tracker.finish()
        except Exception as error:
            log.warning(
                "tracker_close_failed",
                tracker=tracker.name,
                error=f"{type(error).__name__}: {redact_text(str(error))[:300]}",
            )
    accelerator.trackers = []


def _init_kwargs(cfg: Any, run_ids: Mapping[str, str], resumed_step: int | None) -> dict[str, dict[str, Any]]:
    """Per-tracker arguments: names, the runs to continue, and TensorBoard's purge of re-trained steps."""
    run_name = cfg.tracking.run_name or cfg.run.name
    wandb: dict[str, Any] = {"name": run_name, "id": run_ids["wandb"], "dir": local_directory(cfg.tracking_dir)}
    if os.environ.get("WANDB_MODE", "online") not in ("offline", "dryrun", "disabled"):
        # Offline, W&B cannot resume (it asks for a login): each process writes its own offline-run-*-<id>
        # directory under the same id, for `wandb sync`.
        wandb["resume"] = "allow"
    mlflow: dict[str, Any] = {"run_name": run_name}
    if "mlflow" in run_ids:
        mlflow["run_id"] = run_ids["mlflow"]
    # Events from an earlier process after the step this one starts from are training it does again (or, on a
    # first start after --fresh, a discarded run's): TensorBoard drops them.
    tensorboard = {"purge_step": (resumed_step or 0) + 1}
    kwargs = {"wandb": wandb, "mlflow": mlflow, "tensorboard": tensorboard}
    return {name: kwargs[name] for name in cfg.tracking.log_with if name in kwargs}


def new_run_ids(saved: Mapping[str, str] | None) -> dict[str, str]:
    """The tracker run ids to use: the checkpoint's, and a new W&B id (32 hex digits) when there is none; other
    trackers make their own ids, stored after they start."""
    ids = dict(saved or {})
    ids.setdefault("wandb", uuid.uuid4().hex)
    return ids
