"""Real training runs on CPU with tiny widths, through the command line, as a user runs them."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gand.checkpoint.manager import MANIFEST, checkpoint_name
from tests.conftest import REPO, bin_path, gand, run_command, tiny_config

pytestmark = pytest.mark.integration


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def latest_weights(run_dir: Path, network: str) -> dict[str, torch.Tensor]:
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*"))
    return load_file(checkpoints[-1] / f"{network}.safetensors")


def test_smoke_run_writes_samples_logs_checkpoints_and_resumes_exactly(tmp_path, packed):
    # One run straight to step 6 ...
    ema = {"half_life_kimg": 0.05}
    straight = tiny_config(tmp_path / "straight", packed, data={"workers": 2}, train={"max_steps": 6}, ema=ema)
    result = gand("train", str(straight))
    assert result.returncode == 0, result.stderr
    # ... and one stopped at step 4, then the very same command again with a higher target.
    split = tiny_config(tmp_path / "split", packed, data={"workers": 2}, train={"max_steps": 6}, ema=ema)
    first = gand("train", str(split), "train.max_steps=4")
    assert first.returncode == 0, first.stderr
    second = gand("train", str(split))
    assert second.returncode == 0, second.stderr

    resumed = [e for e in events(second.stdout) if e["event"] == "resumed"]
    assert resumed and resumed[0]["step"] == 4 and resumed[0]["images_seen"] == 32
    assert resumed[0]["steps_lost"] == 0  # the first run ended cleanly at its own checkpoint
    assert all(e["run"] == "tiny" and e["rank"] == 0 for e in events(second.stdout) if "level" in e)
    steps = [e["step"] for e in events(second.stdout) if e["event"] == "train_step"]
    assert steps == [5, 6]

    run_dir = tmp_path / "split" / "run"
    for network in ("generator", "discriminator", "generator_ema"):
        a, b = latest_weights(tmp_path / "straight" / "run", network), latest_weights(run_dir, network)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{network}.{key} differs after resume"

    samples = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert samples == sorted(f"step-{step:06d}{kind}.png" for step in (2, 4, 6) for kind in ("", "-losses"))
    assert Image.open(run_dir / "samples" / "step-000006.png").size == (4 * 34 + 2, 4 * 34 + 2)
    # The loss curve at step 6 still holds the steps trained before the resume: the history is in the checkpoint.
    history = torch.load(sorted((run_dir / "checkpoints").glob("ckpt-*"))[-1] / "history.pt", weights_only=True)
    assert history["names"][:2] == ["g", "d"] and history["values"][:, 0].tolist() == [8, 16, 24, 32, 40, 48]
    assert "stat:d_real" in history["names"] and "stat:grad_norm_d" in history["names"]
    committed = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*"))
    assert committed == [checkpoint_name(32), checkpoint_name(48)]  # keep_last=2
    manifest = json.loads((run_dir / "checkpoints" / checkpoint_name(48) / MANIFEST).read_text())
    assert manifest["step"] == 6 and manifest["world_size"] == 1
    log_lines = events((run_dir / "train.jsonl").read_text())
    assert {"train_start", "train_step", "checkpoint_committed", "train_done"} <= {e["event"] for e in log_lines}
    step_line = next(e for e in log_lines if e["event"] == "train_step")
    assert {"step", "images_seen", "loss_g", "loss_d", "images_per_second"} <= step_line.keys()

    third = gand("train", str(split))  # a finished run says so and exits cleanly
    assert third.returncode == 0
    assert any(e["event"] == "already_complete" for e in events(third.stdout))


def test_missing_dataset_and_wrong_resolution_are_clear_errors(tmp_path, packed):
    missing = tiny_config(tmp_path / "a", tmp_path / "nowhere")
    result = gand("train", str(missing))
    assert result.returncode == 1
    assert "no packed dataset" in result.stderr and "gand pack" in result.stderr
    assert "Traceback" not in result.stderr
    wrong = tiny_config(tmp_path / "b", packed, data={"resolution": 128})
    result = gand("train", str(wrong))
    assert result.returncode == 2
    assert "data.resolution: 128 px is not in the dataset" in result.stderr and "32, 64" in result.stderr


def test_two_cpu_ranks_under_accelerate_launch(tmp_path, packed):
    config = tiny_config(tmp_path, packed, train={"max_steps": 4})
    result = run_command(
        [
            bin_path("accelerate"),
            "launch",
            "--num_processes",
            "2",
            "--cpu",
            "-m",
            "gand.train",
            str(config),
            "checkpoint.every_steps=4",
        ],
        env={"MASTER_PORT": "29517"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    started = [e for e in events(result.stdout) if e["event"] == "train_start"]
    assert len(started) == 1 and started[0]["world_size"] == 2 and started[0]["images_per_step"] == 16
    done = [e for e in events(result.stdout) if e["event"] == "train_done"]
    assert done[0]["images_seen"] == 64
    manifest = json.loads((tmp_path / "run" / "checkpoints" / checkpoint_name(64) / MANIFEST).read_text())
    assert manifest["world_size"] == 2
    assert {"rank-0.pt", "rank-1.pt"} <= manifest["files"].keys()


def test_bf16_autocast_trains_with_batchnorm_and_keeps_fp32_weights(tmp_path, packed):
    config = tiny_config(tmp_path, packed, train={"max_steps": 2})
    result = gand("train", str(config), "precision=bf16")
    assert result.returncode == 0, result.stderr
    losses = [e for e in events(result.stdout) if e["event"] == "train_step"]
    assert len(losses) == 2 and all(e["loss_g"] == e["loss_g"] for e in losses)  # finite, not NaN
    weights = latest_weights(tmp_path / "run", "generator")
    assert {tensor.dtype for key, tensor in weights.items() if "weight" in key} == {torch.float32}


def test_compiled_networks_train_like_eager_ones_and_resume(tmp_path, packed):
    """`memory.compile=true` (torch.compile of G and D; inductor's C++ backend on the CPU): the same losses as the
    eager run up to kernel rounding, checkpoints with the plain module's parameter names (no `_orig_mod.`), and a
    resume from them."""
    eager = tiny_config(tmp_path / "eager", packed, train={"max_steps": 3})
    compiled = tiny_config(tmp_path / "compiled", packed, train={"max_steps": 3}, memory={"compile": True})
    inductor = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # its kernels land here: compiling happened
    first, second = gand("train", str(eager)), gand("train", str(compiled), env=inductor)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    assert any(path.suffix == ".so" for path in (tmp_path / "inductor").rglob("*"))
    eager_losses = [e[k] for e in events(first.stdout) if e["event"] == "train_step" for k in ("loss_g", "loss_d")]
    compiled_losses = [e[k] for e in events(second.stdout) if e["event"] == "train_step" for k in ("loss_g", "loss_d")]
    assert len(compiled_losses) == 6 and compiled_losses == pytest.approx(eager_losses, rel=1e-3, abs=1e-3)
    weights = latest_weights(tmp_path / "compiled" / "run", "generator")
    assert weights.keys() == latest_weights(tmp_path / "eager" / "run", "generator").keys()
    resumed = gand("train", str(compiled), "train.max_steps=4", env=inductor)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [e["step"] for e in events(resumed.stdout) if e["event"] == "resumed"] == [3]


def test_wgan_gp_double_backward_under_two_ranks(tmp_path, packed_all):
    """The gradient penalty differentiates through D twice; that must work under DDP, with n_critic batches."""
    result = run_command(
        [bin_path("accelerate"), "launch", "--num_processes", "2", "--cpu", "-m", "gand.train",
         str(REPO / "configs" / "wgangp32.yaml"), f"data.path={packed_all}", f"run.dir={tmp_path / 'run'}",
         "model.width=0.0625", "train.batch_size=4", "train.max_steps=2", "train.log_every_steps=1",
         "data.workers=0", "metrics.port=null", "samples.count=4"],
        env={"MASTER_PORT": "29518"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [e for e in events(result.stdout) if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2]
    assert steps[-1]["images_seen"] == 2 * 5 * 4 * 2  # steps x n_critic batches x batch x ranks
    assert all(e["loss_d_gp"] >= 0 for e in steps)


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("r3gan32", ["loss.lecam_weight=0.1"]),
        ("dcgan32", ["loss.r1_gamma=0.1", "augment.policy=[translation]", "augment.target=0.6",
                     "augment.adjust_every=1", "augment.speed_kimg=0.05"]),
    ],
    ids=["rpgan-r1-r2-lecam", "r1-ada"],
)  # fmt: skip
def test_penalties_relativistic_loss_and_ada_under_two_ranks(tmp_path, packed_all, config, extra):
    """R1/R2 differentiate through D twice, RpGAN's G step runs D on real images, adaptive augmentation sums its
    counts across the ranks at each adjustment: all under DDP."""
    result = run_command(
        [bin_path("accelerate"), "launch", "--num_processes", "2", "--cpu", "-m", "gand.train",
         str(REPO / "configs" / f"{config}.yaml"), f"data.path={packed_all}", f"run.dir={tmp_path / 'run'}",
         "model.width=0.0625", "train.batch_size=4", "train.max_steps=3", "train.log_every_steps=1",
         "data.workers=0", "metrics.port=null", "samples.count=4", *extra],
        env={"MASTER_PORT": "29519"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [e for e in events(result.stdout) if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all(e["loss_d_r1"] >= 0 for e in steps)
    if config == "r3gan32":
        assert all(e["loss_d_r2"] >= 0 and "loss_d_lecam" in e for e in steps)
    else:  # p moves in steps of both ranks' images (8 a step) over 50: a multiple of 0.16, whatever the signs
        assert all(abs(e["augment_p"] / 0.16 - round(e["augment_p"] / 0.16)) < 1e-3 for e in steps)


def test_penalties_burn_in_lecam_and_ada_train_and_resume_exactly(tmp_path, packed):
    """R1 + R2 every second step with R3GAN's cosine burn-in, plus LeCam and adaptive augmentation (on the
    non-saturating loss: ADA needs logits with a zero point): logged as scheduled, and a run stopped at step 3 and
    resumed ends with the same weights (G, D and the EMA) as one run straight to step 6: LeCam's anchors, ADA's p
    and its counts, the lazy penalties' phase and the schedules all continue exactly."""
    loss = {"r1_gamma": 0.5, "r2_gamma": 0.5, "penalty_every": 2, "lecam_weight": 0.3}
    # R3GAN's burn-in, shortened to 40 images (the run draws 8 a step): lr, gamma, beta2 and EMA half-life move
    burn_in = {"kimg": 0.04, "lr": [1e-3, 2e-4], "gamma": [1.0, 0.1], "beta2": [0.9, 0.99],
               "ema_half_life_kimg": [0.01, 0.05]}  # fmt: skip
    augment = {"policy": ["translation", "cutout"], "target": 0.6, "speed_kimg": 0.1, "adjust_every": 1}  # ADA
    sections = {"loss": loss, "burn_in": burn_in, "ema": {"half_life_kimg": 0.05}, "augment": augment}
    straight = tiny_config(tmp_path / "straight", packed, train={"max_steps": 6}, **sections)
    result = gand("train", str(straight))
    assert result.returncode == 0, result.stderr
    logged = {e["step"]: e for e in events(result.stdout) if e["event"] == "train_step"}
    for step, line in logged.items():  # the step logged as s is the s-th D update: due on every second one
        due = step % 2 == 0
        assert ("loss_d_r1" in line and "loss_d_r2" in line) == due, line
        assert line["loss_g_adv"] > 0 and line["loss_d_adv"] > 0
        assert "loss_d_lecam" in line and 0 <= line["augment_p"] <= 1 and -1 <= line["augment_rt"] <= 1
        images_before = (step - 1) * 8  # the schedule's value for the step that ends at `step`
        expected_lr = 2e-4 + (1e-3 - 2e-4) * 0.5 * (1 + math.cos(math.pi * min(images_before / 40, 1)))
        assert line["burn_in_lr"] == pytest.approx(expected_lr, rel=1e-4)  # logged to 8 decimals
    assert logged[6]["burn_in_lr"] == pytest.approx(2e-4) and logged[6]["burn_in_gamma"] == pytest.approx(0.1)
    assert len({line["augment_p"] for line in logged.values()}) > 1  # p moved, so its state matters to the resume
    split = tiny_config(tmp_path / "split", packed, train={"max_steps": 6}, **sections)
    assert gand("train", str(split), "train.max_steps=3", "checkpoint.every_steps=3").returncode == 0
    second = gand("train", str(split))
    assert second.returncode == 0, second.stderr
    for network in ("generator", "discriminator", "generator_ema"):
        a, b = (
            latest_weights(tmp_path / "straight" / "run", network),
            latest_weights(tmp_path / "split" / "run", network),
        )
        for key in a:
            assert torch.equal(a[key], b[key]), f"{network}.{key} differs after resume"
