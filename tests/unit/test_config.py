from pathlib import Path

import pytest
import yaml

from gand.config import GandConfig, load_config
from gand.errors import ConfigError
from tests.conftest import REPO


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def config_error(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


def test_defaults_and_derived_paths(tmp_path):
    cfg = load_config(write(tmp_path, {"data": {"path": "d"}, "run": {"name": "exp1"}}))
    assert cfg.model.arch == "dcgan"
    assert cfg.run_dir == "runs/exp1"
    assert cfg.checkpoint_url == "runs/exp1/checkpoints"


def test_overrides_are_typed_and_create_sections(tmp_path):
    path = write(tmp_path, {"data": {"path": "d"}})
    cfg = load_config(path, ["train.max_steps=20", "optim.d.betas=[0.0, 0.9]", "metrics.port=null", "run.dir=x/y"])
    assert cfg.train.max_steps == 20
    assert cfg.optim.d.betas == (0.0, 0.9)
    assert cfg.optim.g.betas == (0.5, 0.999)
    assert cfg.metrics.port is None
    assert cfg.checkpoint_url == "x/y/checkpoints"


def test_unknown_field_names_path_suggestion_and_allowed(tmp_path):
    message = config_error(write(tmp_path, {"data": {"path": "d"}, "train": {"batch_sise": 8}}))
    assert "train.batch_sise: unknown field" in message
    assert "did you mean 'batch_size'" in message
    assert "max_steps" in message  # the allowed fields are listed


def test_bad_resolution_names_field_value_and_allowed(tmp_path):
    message = config_error(write(tmp_path, {"data": {"path": "d", "resolution": 48}}))
    assert "data.resolution: dcgan supports 32, 64, 128, 256 px (got 48)" in message
    message = config_error(write(tmp_path, {"data": {"path": "d", "resolution": 4096}}))
    assert "data.resolution: Input should be less than or equal to 1024 (got 4096)" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.arch=acgan", "data.resolution=32"], "loss.class_mode: acgan has a class head"),
        (["model.arch=can", "data.resolution=128", "loss.class_mode=auxiliary"], None),
        (["loss.class_mode=ambiguity"], "loss.class_mode: dcgan has no class head (only can, acgan do)"),
        (["model.arch=acgan", "data.resolution=32", "loss.class_mode=ambiguity"], "class-conditional; use auxiliary"),
        (["loss.adversarial=wasserstein", "loss.real_labels=[0.9,1.0]"], "soft labels apply to nonsaturating"),
        (["loss.real_labels=[1.0,0.9]"], "loss.real_labels: give [low, high] with low <= high"),
        (["augment.policy=[color,blur]"], "augment.policy: unknown augmentation; allowed: color, cutout, translation"),
        (["optim.d.name=lbfgs"], "optim.d.name: Input should be 'adam', 'rmsprop' or 'sgd'"),
        (["loss.adversarial=wgan"], "unknown loss; allowed: hinge, minimax, nonsaturating, rpgan, wasserstein"),
    ],
)
def test_fields_that_must_agree(tmp_path, overrides, expected):
    path = write(tmp_path, {"data": {"path": "d", "resolution": 64}})
    if expected is None:
        assert load_config(path, overrides).loss.class_mode == "auxiliary"
    else:
        assert expected in config_error(path, *overrides)


def test_unknown_arch_lists_registry(tmp_path):
    message = config_error(write(tmp_path, {"data": {"path": "d"}}), "model.arch=stylegan9")
    assert "model.arch: unknown architecture; allowed: acgan, can, dcgan, desai, mlp" in message
    assert "'stylegan9'" in message


def test_missing_required_and_several_problems_at_once(tmp_path):
    message = config_error(write(tmp_path, {"data": {"resolution": 32}, "train": {"batch_size": 0}}))
    assert "data.path: required field is missing" in message
    assert "train.batch_size: Input should be greater than or equal to 1 (got 0)" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.max_steps", "must look like section.field=value"),
        ("=3", "must look like section.field=value"),
        ("train..x=3", "must look like section.field=value"),
        ("precision.x=1", "precision is a value, not a section"),
    ],
)
def test_malformed_overrides(tmp_path, override, expected):
    assert expected in config_error(write(tmp_path, {"data": {"path": "d"}, "precision": "fp32"}), override)


def test_file_problems_are_config_errors(tmp_path):
    assert "does not exist" in config_error(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert "not valid YAML" in config_error(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    assert "must hold a mapping" in config_error(scalar)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    assert isinstance(load_config(path), GandConfig)


@pytest.mark.parametrize("overrides", [["train.max_steps=true"], ["data.channels=true"], ["optim.g.betas=[true, 0.9]"],
                                       ["burn_in.lr=[false, 1e-4]"], ["loss.real_labels=[true, 1.0]"]])  # fmt: skip
def test_booleans_are_not_numbers_anywhere(tmp_path, overrides):
    path = write(tmp_path, {"data": {"path": "d"}})
    with pytest.raises(ConfigError, match="expected a number, not a boolean"):
        load_config(path, overrides)


def test_booleans_stay_booleans(tmp_path):
    path = write(tmp_path, {"data": {"path": "d"}})
    cfg = load_config(path, ["model.d_batch_norm=false", "tracking.images=false", "memory.channels_last=true"])
    assert cfg.model.d_batch_norm is False and cfg.tracking.images is False and cfg.memory.channels_last is True


def test_snapshot_carries_no_credentials(tmp_path):
    path = write(tmp_path, {"data": {"path": "https://user:secret@example.com/set/manifest.json"}})
    cfg = load_config(path, ["checkpoint.url=s3://KEY:SECRET@bucket/run"])
    snapshot = str(cfg.snapshot())
    assert "secret" not in snapshot and "SECRET" not in snapshot
    assert "https://example.com/set/manifest.json" in snapshot and "s3://bucket/run" in snapshot


def test_checkpoint_settings_name_the_field(tmp_path):
    path = write(tmp_path, {"data": {"path": "d"}})
    assert "checkpoint.keep_last" in config_error(path, "checkpoint.keep_last=1")
    assert "checkpoint.grace_seconds" in config_error(path, "checkpoint.grace_seconds=0")
    cfg = load_config(path, ["checkpoint.every_steps=null", "checkpoint.every_seconds=600"])
    assert cfg.checkpoint.every_steps is None and cfg.checkpoint.every_seconds == 600
