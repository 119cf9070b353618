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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gand.errors import ConfigError

Resolution = Literal[32, 64, 128, 256]
RESOLUTIONS: tuple[int, ...] = get_args(Resolution)


def _registered(name: str, registry: Mapping[str, object], what: str) -> str:
    if name not in registry:
        raise ValueError(f"unknown {what}; allowed: {', '.join(sorted(registry))}")
    return name


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RunConfig(StrictModel):
    name: str = Field("gand", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name, used in paths")
    dir: str | None = Field(None, description="samples, logs and local checkpoints; default runs/<name>")


class DataConfig(StrictModel):
    path: str = Field(description="packed dataset: its directory or the URL of its manifest.json")
    resolution: Resolution = 64
    shuffle_buffer: int = Field(1000, ge=0, description="samples held for shuffling, per loader worker")
    workers: int = Field(2, ge=0, description="loader processes per rank; 0 reads in the training process")
    epoch_images: int | None = Field(None, gt=0, description="images per epoch; default the dataset size")


class ModelConfig(StrictModel):
    arch: str = "dcgan"
    width: float = Field(1.0, gt=0, le=8, description="channel multiplier; tests use tiny widths")
    latent_dim: int = Field(100, ge=1)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        from gand.models import MODELS  # lazy: keeps `import gand.config` free of torch

        return _registered(arch, MODELS, "architecture")


class TrainConfig(StrictModel):
    batch_size: int = Field(64, ge=1, description="images per step, per rank")
    max_steps: int = Field(1000, ge=1)
    seed: int = 0
    loss: str = "nonsaturating"
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    log_every_steps: int = Field(10, ge=1)

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        from gand.losses import ADVERSARIAL_LOSSES

        return _registered(loss, ADVERSARIAL_LOSSES, "loss")


class SamplesConfig(StrictModel):
    every_steps: int = Field(100, ge=1)
    count: int = Field(64, ge=1, le=1024, description="images in the fixed-noise grid")


class CheckpointConfig(StrictModel):
    every_steps: int = Field(500, ge=1)
    url: str | None = Field(None, description="where checkpoints go; default <run.dir>/checkpoints")
    keep_last: int = Field(2, ge=1)


class MetricsConfig(StrictModel):
    port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port; unset = no exporter")


class GandConfig(StrictModel):
    run: RunConfig = RunConfig()
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    precision: Literal["fp32", "bf16"] = "fp32"
    samples: SamplesConfig = SamplesConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def run_dir(self) -> str:
        return self.run.dir or posixpath.join("runs", self.run.name)

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoint.url or posixpath.join(self.run_dir, "checkpoints")

    def snapshot(self) -> dict[str, Any]:
        """The config as plain data for checkpoints and logs, with any credentials in URLs removed."""
        from gand.storage import redact

        data = self.model_dump(mode="json")
        for section, key in (("run", "dir"), ("data", "path"), ("checkpoint", "url")):
            if data[section][key]:
                data[section][key] = redact(data[section][key])
        return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> GandConfig:
    """Read a YAML config, apply `a.b=c` overrides, validate. Raises ConfigError with every problem listed."""
    raw = _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> GandConfig:
    try:
        return GandConfig.model_validate(raw)
    except ValidationError as err:
        problems = "\n".join(f"  {line}" for line in describe_validation_error(err, GandConfig))
        raise ConfigError(f"invalid config {source}:\n{problems}") from None


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
