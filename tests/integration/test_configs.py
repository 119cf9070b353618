"""Every shipped config trains a few steps on CPU at a tiny width: finite losses, both networks learn, samples
come out with the right shape and range."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gand.config import load_config
from gand.eval.samples import generate, load_generator
from gand.models import value_range
from tests.conftest import REPO, gand

pytestmark = pytest.mark.integration
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def checkpoint_at(run_dir: Path, step: int) -> Path:
    for directory in sorted((run_dir / "checkpoints").glob("ckpt-*")):
        if json.loads((directory / "state.json").read_text())["train"]["step"] == step:
            return directory
    raise AssertionError(f"no checkpoint at step {step} in {run_dir}")


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[key], after[key]) for key in before if before[key].is_floating_point())


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_a_few_steps(config_path, packed_all, tmp_path):
    cfg = load_config(config_path)
    steps = 1 + cfg.schedule.d_every  # the last step is one on which D learns again
    run_dir = tmp_path / "run"
    result = gand(
        "train", str(config_path),
        f"data.path={packed_all}", f"run.dir={run_dir}", "model.width=0.0625", "train.batch_size=4",
        f"train.max_steps={steps}", "train.log_every_steps=1", "data.workers=0",
        "samples.count=8", "samples.every_steps=1", "checkpoint.every_steps=1", "checkpoint.keep_last=10",
        "metrics.port=null", "precision=fp32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    logged = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    losses = [value for e in logged if e["event"] == "train_step" for k, value in e.items() if k.startswith("loss_")]
    assert losses and all(math.isfinite(value) for value in losses)

    first, last = checkpoint_at(run_dir, 1), checkpoint_at(run_dir, steps)
    for network in ("generator", "discriminator"):
        assert changed(load_file(first / f"{network}.safetensors"), load_file(last / f"{network}.safetensors")), (
            f"{network} did not change between step 1 and step {steps}"
        )

    generator, saved_cfg, classes, _ = load_generator(str(run_dir / "checkpoints"))
    labels = torch.arange(4) % classes if saved_cfg.model.arch == "acgan" else None
    images = generate(generator, torch.randn(4, cfg.model.latent_dim), labels)
    resolution, channels = cfg.data.resolution, cfg.data.channels
    assert images.shape == (4, channels, resolution, resolution)
    low, high = value_range(cfg.model.g_output)
    assert low <= images.min() and images.max() <= high
    assert (run_dir / "samples" / f"step-{steps:06d}.png").exists()
