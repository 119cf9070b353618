"""The run configuration: pydantic models (unknown keys rejected), read from YAML plus `a.b=c` overrides.

Every error names the field path, the value given and what is allowed, and becomes exit code 2.
"""

from __future__ import annotations

import difflib
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gand.errors import ConfigError

# Sizes `gand pack` accepts; each architecture narrows them (see gand.models.MODELS).
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024
STANDARD_RESOLUTIONS = (28, 32, 64, 128, 256)


def _registered(name: str, registry: Mapping[str, object], what: str) -> str:
    if name not in registry:
        raise ValueError(f"unknown {what}; allowed: {', '.join(sorted(registry))}")
    return name


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`train.max_steps=true` must not train for 1 step, nor `data.channels: true` in grayscale, nor
        `betas: [true, 0.9]` with beta1 = 1: pydantic reads true as 1 where a number is wanted."""
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool):
            kinds = _scalar_types(annotation)
        elif isinstance(value, (list, tuple)) and any(isinstance(item, bool) for item in value):
            kinds = _item_types(annotation)
        else:
            return value
        if bool not in kinds and kinds & {int, float}:
            raise ValueError("expected a number, not a boolean")
        return value


def _scalar_types(annotation: Any) -> set[Any]:
    """The plain types a field admits as a single value (`int | None` -> {int, NoneType}; `Literal[1, 3]` ->
    {int}; containers: none)."""
    origin = get_origin(annotation)
    if origin is None:
        return {annotation}
    if origin is Literal:
        return {type(choice) for choice in get_args(annotation)}
    if origin in (list, tuple, dict, set):
        return set()
    return {leaf for argument in get_args(annotation) for leaf in _scalar_types(argument)}


def _item_types(annotation: Any) -> set[Any]:
    """The plain types a list or tuple field admits as items (`tuple[float, float] | None` -> {float})."""
    origin = get_origin(annotation)
    if origin in (list, tuple, set):
        return {
            leaf for argument in get_args(annotation) if argument is not Ellipsis for leaf in _scalar_types(argument)
        }
    if origin is None or origin is Literal:
        return set()
    return {leaf for argument in get_args(annotation) for leaf in _item_types(argument)}


class RunConfig(StrictModel):
    name: str = Field("gand", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name, used in paths")
    dir: str | None = Field(None, description="samples, logs and local checkpoints; default runs/<name>")


class DataConfig(StrictModel):
    path: str = Field(description="packed dataset: its directory or the URL of its manifest.json")
    resolution: int = Field(64, ge=MIN_RESOLUTION, le=MAX_RESOLUTION, description="must be in the manifest")
    channels: Literal[1, 3] = Field(3, description="1 converts the packed RGB images to grayscale")
    shuffle_buffer: int | None = Field(
        None, ge=0, description="no longer used: the loader draws a fresh permutation of every image each pass"
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="loader processes per rank; 0 reads in the training process; unset: one per core "
        "this rank can spare (the cores over the local ranks, less one for the trainer), 1 to 8",
    )
    epoch_images: int | None = Field(None, gt=0, description="images per epoch; default the dataset size")
    min_usable_share: float = Field(
        0.9,
        ge=0,
        le=1,
        description="stop with a data error when damaged shards (size or SHA-256 not as in the "
        "manifest, left out) leave less than this share of the dataset's images",
    )


def default_loader_workers() -> int:
    """One loader process per core a rank can spare: its share of the cores, less one for itself, 1 to 8."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cores // max(1, local_ranks) - 1))


class ModelConfig(StrictModel):
    arch: str = "dcgan"
    width: float = Field(1.0, gt=0, le=8, description="channel multiplier; tests use tiny widths")
    latent_dim: int = Field(100, ge=1)
    g_batch_norm: bool = True
    d_batch_norm: bool = True
    g_activation: Literal["relu", "leaky_relu"] = "relu"
    g_output: Literal["tanh", "sigmoid"] = "tanh"
    d_dropout: float = Field(0.0, ge=0, lt=1)
    spectral_norm: Literal["none", "d", "g", "both"] = "none"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        from gand.models import MODELS  # lazy: keeps `import gand.config` free of torch

        return _registered(arch, MODELS, "architecture")


LabelRange = tuple[float, float]


class LossConfig(StrictModel):
    adversarial: str = "nonsaturating"
    class_mode: Literal["none", "auxiliary", "ambiguity"] = Field(
        "none", description="auxiliary: AC-GAN class loss; ambiguity: CAN style + style-ambiguity losses"
    )
    class_weight: float = Field(1.0, ge=0)
    real_labels: LabelRange = Field((1.0, 1.0), description="D's targets for real images, drawn from [low, high]")
    fake_labels: LabelRange = Field((0.0, 0.0), description="D's targets for generated images")
    label_flip: float = Field(0.0, ge=0, le=0.5, description="probability of swapping a target to the other side")
    gradient_penalty: float = Field(0.0, ge=0, description="WGAN-GP weight (10 in the paper); 0 = off")
    r1_gamma: float = Field(0.0, ge=0, description="R1 weight gamma: gamma/2 E|grad D(real)|^2; 0 = off")
    r2_gamma: float = Field(0.0, ge=0, description="R2 weight gamma: gamma/2 E|grad D(fake)|^2; 0 = off")
    lecam_weight: float = Field(
        0.0, ge=0, description="LeCam regularisation weight (Tseng et al. 2021: 0.01-0.3 with little data); 0 = off"
    )
    penalty_every: int = Field(
        1, ge=1, description="R1/R2 every k-th step, weighted k times (lazy regularisation, StyleGAN2: 16)"
    )
    weight_clip: float | None = Field(None, gt=0, description="WGAN weight clipping bound c (0.01); unset = off")

    @field_validator("adversarial")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        from gand.losses import ADVERSARIAL_LOSSES

        return _registered(name, ADVERSARIAL_LOSSES, "loss")

    @field_validator("real_labels", "fake_labels")
    @classmethod
    def _ordered(cls, bounds: LabelRange) -> LabelRange:
        if bounds[0] > bounds[1]:
            raise ValueError("give [low, high] with low <= high")
        return bounds


class OptimizerConfig(StrictModel):
    name: Literal["adam", "rmsprop", "sgd"] = "adam"
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = Field((0.5, 0.999), description="adam")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd and rmsprop")
    alpha: float = Field(0.99, gt=0, lt=1, description="rmsprop smoothing")
    weight_decay: float = Field(0.0, ge=0)


class OptimConfig(StrictModel):
    g: OptimizerConfig = Field(default_factory=OptimizerConfig)
    d: OptimizerConfig = Field(default_factory=OptimizerConfig)


class ScheduleConfig(StrictModel):
    d_steps: int = Field(1, ge=1, description="D updates per step, each on a fresh real batch (WGAN n_critic)")
    g_steps: int = Field(1, ge=1, description="G updates per step (the VNU report's k)")
    d_every: int = Field(1, ge=1, description="update D only every k-th step (the Rice report: 4)")


StartEnd = tuple[float, float]


class BurnInConfig(StrictModel):
    """Cosine "burn-in" schedules (R3GAN, Huang et al. 2024, section 4): each value moves from its start to its end
    along half a cosine over the first `kimg` thousand real images, then stays at the end."""

    kimg: float | None = Field(None, gt=0, description="length of the burn-in in thousands of real images; unset = off")
    lr: StartEnd | None = Field(None, description="[start, end] learning rate of both networks")
    gamma: StartEnd | None = Field(None, description="[start, end] gamma of the R1/R2 penalties switched on")
    beta2: StartEnd | None = Field(None, description="[start, end] Adam beta2 of both networks")
    ema_half_life_kimg: StartEnd | None = Field(None, description="[start, end] EMA half-life of G, kimg")

    @property
    def scheduled(self) -> list[str]:
        return [name for name in ("lr", "gamma", "beta2", "ema_half_life_kimg") if getattr(self, name) is not None]


class EmaConfig(StrictModel):
    half_life_kimg: float | None = Field(
        None, gt=0, description="EMA of G's weights for samples, half-life in thousands of images; unset = off"
    )


class AugmentConfig(StrictModel):
    policy: list[str] = Field(default_factory=list, description="DiffAugment: any of color, translation, cutout")
    target: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="adaptive augmentation (ADA): the r_t = E[sign D(real)] to hold (0.6); unset = "
        "the policy always applies",
    )
    speed_kimg: float = Field(500, gt=0, description="ADA: thousands of images for p to go from 0 to 1")
    adjust_every: int = Field(4, ge=1, description="ADA: steps between adjustments of p")

    @field_validator("policy")
    @classmethod
    def _known_augmentations(cls, policy: list[str]) -> list[str]:
        from gand.augment import AUGMENTATIONS

        for name in policy:
            _registered(name, AUGMENTATIONS, "augmentation")
        return policy


class MemoryConfig(StrictModel):
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage for G and D; 0 = plain DDP")
    offload_optimizer: Literal["none", "cpu"] = Field("none", description="ZeRO >= 1: optimizer state in CPU RAM")
    offload_params: Literal["none", "cpu"] = Field("none", description="ZeRO 3: parameters in CPU RAM")
    grad_checkpointing: Literal["none", "g", "d", "both"] = Field(
        "none", description="recompute the networks' blocks in backward instead of storing activations"
    )
    micro_batch: int | None = Field(
        None, ge=1, description="images per forward pass per rank; train.batch_size must be a multiple (accumulation)"
    )
    channels_last: bool | None = Field(
        None,
        description="NHWC memory format for convolutions and images; unset: on for CUDA without ZeRO, else off",
    )
    compile: bool = Field(False, description="torch.compile both networks")
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed JSON with tuning knobs (buckets, overlap); gand sets batch, ZeRO stage, offload"
    )

    @property
    def uses_deepspeed(self) -> bool:
        return self.zero_stage > 0


class TrainConfig(StrictModel):
    batch_size: int = Field(64, ge=1, description="images per step, per rank")
    max_steps: int = Field(1000, ge=1)
    seed: int = 0
    log_every_steps: int = Field(10, ge=1)


class SamplesConfig(StrictModel):
    # The sample grid and the loss curve are written together, whichever of the two comes first.
    every_steps: int = Field(100, ge=1)
    every_images: int | None = Field(None, ge=1, description="also every N images seen (survives batch changes)")
    count: int = Field(64, ge=1, le=1024, description="images in the fixed-noise grid")


class CheckpointConfig(StrictModel):
    url: str | None = Field(
        None, description="where checkpoints go (file://, s3://, gs://); default <run.dir>/checkpoints"
    )
    # When to save: whichever comes first. Images survive batch-size changes; seconds bound the work a
    # preemption can cost.
    every_steps: int | None = Field(500, ge=1)
    every_images: int | None = Field(None, ge=1)
    every_seconds: float | None = Field(None, gt=0)
    keep_last: int = Field(2, ge=2, description="newest checkpoints kept (at least 2: one may be mid-upload)")
    keep_every: int = Field(0, ge=0, description="also keep every M-th checkpoint for good (0: none)")
    background_upload: bool = Field(True, description="upload while training goes on (false: wait for each)")
    grace_seconds: float = Field(25.0, gt=0, description="after SIGTERM: save and upload within this (GCP gives 30)")
    upload_timeout_seconds: float = Field(900.0, gt=0, description="give up on one checkpoint's upload after this")
    preemption_notice: Literal["none", "aws", "gcp", "azure"] = Field(
        "none", description="poll this cloud's metadata service for spot/preemption notices; commit at once on one"
    )
    notice_endpoint: str | None = Field(
        None, description="the metadata service's base URL (default: the provider's link-local address)"
    )
    notice_poll_seconds: float = Field(5.0, gt=0, description="seconds between polls of the notice endpoint")
    lease_seconds: float | None = Field(
        60.0,
        gt=0,
        description="one writer per run: the lease on checkpoint.url lives this long unless renewed "
        "(renewed every third of it); unset: no lease",
    )
    lease_wait_seconds: float = Field(
        90.0, ge=0, description="at start, wait this long for another trainer's live lease before exiting 2"
    )
    startup_timeout_seconds: float = Field(
        120.0, gt=0, description="at start-up, give up listing and reading checkpoints after storage failed this long"
    )
    retry_first_seconds: float = Field(1.0, gt=0, description="first retry delay; doubles up to retry_max_seconds")
    retry_max_seconds: float = Field(30.0, gt=0)
    max_rollbacks: int = Field(3, ge=0, description="NaN/Inf losses: roll back this often, then exit 3")
    progress_every_seconds: float | None = Field(
        30.0, gt=0, description="note how far training got next to the checkpoints, for 'steps lost' at a resume"
    )


class MetricsConfig(StrictModel):
    port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port; unset = no exporter")


# The experiment trackers Accelerate's tracker API knows (accelerate.utils.LoggerType), each installed on its own.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


class TrackingConfig(StrictModel):
    """Experiment trackers, written from rank 0 at logging steps through Accelerate's tracker API. Credentials come
    from each tracker's own environment variables (WANDB_API_KEY, MLFLOW_TRACKING_URI, ...), never from here."""

    log_with: list[Literal[TRACKERS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="trackers to write to, e.g. [tensorboard] or [wandb]; empty = none"
    )
    project: str | None = Field(None, description="the tracker's project (W&B, MLflow experiment); default run.name")
    run_name: str | None = Field(None, description="the run's name in the tracker; default run.name")
    dir: str | None = Field(None, description="local directory for trackers that write files; default run.dir/tracking")
    images: bool = Field(True, description="also send each sample grid (trackers that take images)")

    @field_validator("log_with", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        """`tracking.log_with=tensorboard` or `=tensorboard,wandb` on the command line: a name or a comma list."""
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value


# The public release of the FID Inception weights (pytorch-fid's port of the TensorFlow graph of 2015-12-05).
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


class EvalConfig(StrictModel):
    inception_weights: str = Field(
        INCEPTION_WEIGHTS_URL, description="FID Inception weights: local path or URL (fetched once, then cached)"
    )
    samples: int = Field(10_000, ge=10, description="generated (and reference) images per evaluation")
    every_kimg: float | None = Field(
        None, gt=0, description="evaluate FID/KID/IS during training every this many thousand images (off: unset)"
    )


class GuardConfig(StrictModel):
    """The collapse guard (gand/train/guard.py): needs eval.every_kimg."""

    action: Literal["off", "rollback", "stop"] = Field(
        "off", description="when the score stays worse than its best: go back to the best checkpoint, or stop"
    )
    metric: Literal["fid", "kid_mean", "is_mean"] = Field("fid", description="the evaluation score watched")
    margin: float = Field(0.1, ge=0, description="relative: 0.1 = more than 10% worse than the best")
    patience: int = Field(3, ge=1, description="evaluations in a row that must be that much worse")
    lr_factor: float = Field(1.0, gt=0, le=1, description="learning rates are multiplied by this at each roll-back")
    max_rollbacks: int = Field(3, ge=0, description="roll-backs before the guard stops the run instead")


class GandConfig(StrictModel):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    ema: EmaConfig = Field(default_factory=EmaConfig)
    burn_in: BurnInConfig = Field(default_factory=BurnInConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32", description="auto: bf16 on GPUs with bf16 tensor cores, fp16 on older tensor-core GPUs (T4), else fp32"
    )
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)

    @property
    def run_dir(self) -> str:
        return self.run.dir or posixpath.join("runs", self.run.name)

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoint.url or posixpath.join(self.run_dir, "checkpoints")

    @property
    def tracking_dir(self) -> str:
        return self.tracking.dir or posixpath.join(self.run_dir, "tracking")

    def snapshot(self) -> dict[str, Any]:
        """The config as plain data for checkpoints and logs, with any credentials in URLs removed."""
        from gand.storage import redact

        data = self.model_dump(mode="json")
        for section, key in (("run", "dir"), ("data", "path"), ("checkpoint", "url")):
            if data[section][key]:
                data[section][key] = redact(data[section][key])
        return data


def cross_check(cfg: GandConfig) -> list[str]:
    """Problems that involve several fields, each named by the field to change."""
    return _model_problems(cfg) + _memory_problems(cfg) + _burn_in_problems(cfg) + _watch_problems(cfg)


def _model_problems(cfg: GandConfig) -> list[str]:
    """The architecture against the resolution, the class head and the loss."""
    from gand.losses import ADVERSARIAL_LOSSES
    from gand.models import MODELS

    arch = MODELS[cfg.model.arch]
    problems = []
    if not arch.supports_resolution(cfg.data.resolution):
        problems.append(
            f"data.resolution: {cfg.model.arch} supports {arch.resolutions_text} px (got {cfg.data.resolution})"
        )
    if arch.class_head and cfg.loss.class_mode == "none":
        problems.append(f"loss.class_mode: {cfg.model.arch} has a class head; choose auxiliary or ambiguity")
    if not arch.class_head and cfg.loss.class_mode != "none":
        heads = ", ".join(name for name, a in MODELS.items() if a.class_head)
        problems.append(f"loss.class_mode: {cfg.model.arch} has no class head (only {heads} do); use none")
    if arch.conditional and cfg.loss.class_mode != "auxiliary":
        problems.append(f"loss.class_mode: {cfg.model.arch}'s generator is class-conditional; use auxiliary")
    soft = cfg.loss.real_labels != (1.0, 1.0) or cfg.loss.fake_labels != (0.0, 0.0) or cfg.loss.label_flip > 0
    if soft and not ADVERSARIAL_LOSSES[cfg.loss.adversarial].uses_targets:
        problems.append(
            f"loss.real_labels/fake_labels/label_flip: soft labels apply to nonsaturating and minimax losses, "
            f"not {cfg.loss.adversarial}"
        )
    return problems


def _watch_problems(cfg: GandConfig) -> list[str]:
    """What watches training (evaluation, the guard, adaptive augmentation) against what it needs."""
    problems = []
    if cfg.guard.action != "off" and not cfg.eval.every_kimg:
        problems.append(f"guard.action: {cfg.guard.action} watches evaluations; set eval.every_kimg")
    if cfg.augment.target is not None and cfg.loss.adversarial in ("wasserstein", "rpgan"):
        problems.append(
            f"augment.target: adaptive augmentation reads r_t = E[sign D(real)], which needs logits "
            f"with a zero point; {cfg.loss.adversarial}'s have none. Use augment.policy alone"
        )
    if cfg.augment.target is not None and not cfg.augment.policy:
        problems.append(
            "augment.target: adaptive augmentation needs transforms to apply; set augment.policy "
            "(e.g. [color, translation, cutout])"
        )
    return problems


def _memory_problems(cfg: GandConfig) -> list[str]:
    """The memory savers against each other, the batch, the penalties and the evaluation."""
    memory, problems = cfg.memory, []
    if cfg.eval.every_kimg and memory.zero_stage == 3 and not cfg.ema.half_life_kimg:
        problems.append(
            "eval.every_kimg: under memory.zero_stage 3 the main rank evaluates the EMA generator; "
            "set ema.half_life_kimg (or evaluate afterwards with gand eval)"
        )
    if memory.offload_params != "none" and memory.zero_stage != 3:
        problems.append("memory.offload_params: parameter offload needs memory.zero_stage: 3")
    if memory.channels_last and memory.uses_deepspeed:
        # DeepSpeed flattens each network's parameters into contiguous buffers and views them as bytes to broadcast
        # them: NHWC weights failed there ("self.stride(-1) must be 1"), on an H200 on 2026-11-30.
        problems.append(
            "memory.channels_last: true is not supported with memory.zero_stage > 0 (DeepSpeed keeps "
            "parameters in contiguous flat buffers); leave it unset or false"
        )
    if memory.offload_optimizer != "none" and memory.zero_stage == 0:
        problems.append("memory.offload_optimizer: optimizer offload needs memory.zero_stage 1, 2 or 3")
    if memory.micro_batch is not None and cfg.train.batch_size % memory.micro_batch:
        problems.append(
            f"memory.micro_batch: {memory.micro_batch} must divide train.batch_size ({cfg.train.batch_size}) so "
            "that accumulation keeps the batch exact"
        )
    for penalty in ("gradient_penalty", "r1_gamma", "r2_gamma"):
        if getattr(cfg.loss, penalty) and memory.compile:
            problems.append(
                f"loss.{penalty}: torch.compile (memory.compile) cannot take the penalty's second "
                "derivative (double backward); set memory.compile: false"
            )
        if getattr(cfg.loss, penalty) and memory.uses_deepspeed:
            problems.append(
                f"loss.{penalty}: DeepSpeed's ZeRO optimizers cannot take the penalty's second derivative; use "
                "memory.zero_stage: 0 (GANs at these sizes are small: micro_batch, grad_checkpointing and bf16 "
                "still apply)" + (" or loss.weight_clip" if penalty == "gradient_penalty" else "")
            )
    if memory.deepspeed_config is not None and not memory.uses_deepspeed:
        problems.append("memory.deepspeed_config: only used with memory.zero_stage 1, 2 or 3")
    return problems


def _burn_in_problems(cfg: GandConfig) -> list[str]:
    burn_in, problems = cfg.burn_in, []
    if burn_in.scheduled and burn_in.kimg is None:
        problems.append(f"burn_in.kimg: {', '.join(burn_in.scheduled)} scheduled but no burn-in length; set kimg")
    if burn_in.gamma is not None and not (cfg.loss.r1_gamma or cfg.loss.r2_gamma):
        problems.append(
            "burn_in.gamma: schedules the R1/R2 weight, but both are off; set loss.r1_gamma and/or "
            "loss.r2_gamma (any value above 0 switches a penalty on)"
        )
    if burn_in.beta2 is not None and "adam" not in (cfg.optim.g.name, cfg.optim.d.name):
        problems.append("burn_in.beta2: only Adam has a beta2; optim.g and optim.d use none")
    if burn_in.ema_half_life_kimg is not None and not cfg.ema.half_life_kimg:
        problems.append(
            "burn_in.ema_half_life_kimg: the EMA is off; set ema.half_life_kimg (its value after the "
            "burn-in is the schedule's end)"
        )
    for name in burn_in.scheduled:  # a penalty weight or an EMA half-life of 0 means "none yet" (R3GAN's starts)
        may_be_zero = name in ("gamma", "ema_half_life_kimg")
        if min(getattr(burn_in, name)) < 0 or (not may_be_zero and min(getattr(burn_in, name)) <= 0):
            problems.append(f"burn_in.{name}: give {'non-negative' if may_be_zero else 'positive'} [start, end] values")
    if burn_in.beta2 is not None and max(burn_in.beta2) >= 1:
        problems.append("burn_in.beta2: values must be below 1")
    return problems


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> GandConfig:
    """Read a YAML config, apply `a.b=c` overrides, validate. Raises ConfigError with every problem listed."""
    raw = _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> GandConfig:
    try:
        cfg = GandConfig.model_validate(raw)
    except ValidationError as err:
        problems = describe_validation_error(err, GandConfig)
    else:
        problems = cross_check(cfg)
        if not problems:
            return cfg
    listed = "\n".join(f"  {line}" for line in problems)
    raise ConfigError(f"invalid config {source}:\n{listed}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {type(raw).__name__}")
    return raw


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} must look like section.field=value, e.g. train.max_steps=20")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text  # not YAML: take it as the literal string and let validation judge it
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError(f"override {override!r}: {where} is a value, not a section")
        node = child
    node[leaf] = value


def describe_validation_error(err: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem: field path, the value given, and what is allowed."""
    lines = []
    for problem in err.errors():
        loc = [str(part) for part in problem["loc"]]
        path = ".".join(loc) or "(top level)"
        if problem["type"] == "extra_forbidden":
            allowed = _fields_at(root, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            lines.append(f"{path}: unknown field{did_you_mean}; allowed here: {', '.join(allowed)}")
        elif problem["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {message} (got {problem['input']!r})")
    return lines


def _fields_at(root: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = root
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        model = _model_type(fields[part].annotation)
    return list(getattr(model, "model_fields", {}))


def _model_type(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as `DataConfig` or `DataConfig | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_type(arg)
            if found is not None:
                return found
    return None
