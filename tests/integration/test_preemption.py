"""Preemption-proof training, for real: signals, SIGKILLs at random moments, a storage outage, and two ranks.

Object storage is a real S3-protocol server on 127.0.0.1 (moto) reached through s3fs; nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
import urllib.request

import pytest

from gand.checkpoint.manager import MANIFEST, checkpoint_name
from tests.conftest import free_port, gand, make_bucket, tiny_config
from tests.integration.preempt import (
    Live,
    accelerate_command,
    assert_same_weights,
    final_weights,
    newest_valid,
    rank_pids,
    train_command,
)

pytestmark = pytest.mark.integration

STEPS = 40
RUN = {"max_steps": STEPS, "log_every_steps": 1}


def config_for(tmp_path, packed, name: str, **checkpoint):
    return tiny_config(tmp_path / name, packed, data={"workers": 2}, train=RUN, ema={"half_life_kimg": 0.05},
                       samples={"every_steps": 1000}, checkpoint={"every_steps": 1000, **checkpoint})  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory, packed):
    """The uninterrupted run every interrupted one must match."""
    tmp_path = tmp_path_factory.mktemp("straight")
    result = gand("train", str(config_for(tmp_path, packed, "straight")))
    assert result.returncode == 0, result.stderr[-3000:]
    return final_weights(str(tmp_path / "straight" / "run" / "checkpoints"))


def test_sigterm_saves_exits_75_and_the_same_command_resumes_bit_identically(tmp_path, packed, straight):
    config = config_for(tmp_path, packed, "split")
    first = Live(train_command(config))
    first.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 7)
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 75, first.output[-3000:]
    stopped = next(e for e in first.events() if e["event"] == "stopped_by_signal")
    assert stopped["uploaded"] is True and stopped["signal"] == "SIGTERM"
    assert "run the same command to resume" in first.output
    assert 7 <= stopped["step"] < STEPS  # stopped at whatever step the signal landed on, not a periodic one

    second = Live(train_command(config))
    assert second.finish() == 0, second.output[-3000:]
    resumed = next(e for e in second.events() if e["event"] == "resumed")
    assert resumed["step"] == stopped["step"]
    assert_same_weights(final_weights(str(tmp_path / "split" / "run" / "checkpoints")), straight)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_saves_exits_75_and_resumes_bit_identically(tmp_path, packed, straight, signum):
    """systemd, Slurm, `timeout` and `kill -- -PGID` (SIGTERM), or Ctrl-C in a terminal (SIGINT), signal every
    process of the group, the two loader workers included: they leave the decision to the trainer, which saves and
    exits 75; nothing is left behind, and the same command ends where an uninterrupted run does."""
    config = config_for(tmp_path, packed, "group")
    first = Live(train_command(config))
    first.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 7)
    first.stop_group(signum)
    assert first.finish() == 75, first.output[-3000:]
    stopped = next(e for e in first.events() if e["event"] == "stopped_by_signal")
    assert stopped["uploaded"] is True and stopped["signal"] == signal.Signals(signum).name
    assert "Traceback" not in first.output
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(first.proc.pid, 0)  # every process of the group is gone, loader workers included

    second = Live(train_command(config))
    assert second.finish() == 0, second.output[-3000:]
    assert next(e for e in second.events() if e["event"] == "resumed")["step"] == stopped["step"]
    assert_same_weights(final_weights(str(tmp_path / "group" / "run" / "checkpoints")), straight)


def test_sigkill_at_random_moments_never_loads_an_uncommitted_checkpoint(tmp_path, packed, straight, s3_endpoint):
    """Ten SIGKILLs in a row, landing anywhere: in a step, in a snapshot, mid-upload, around the manifest."""
    url = f"{make_bucket('kills')}/run"
    config = config_for(tmp_path, packed, "killed", url=url, every_steps=2, keep_last=2)
    chance = random.Random(6)
    kills = 0
    while kills < 10:
        expected = newest_valid(url)  # read independently, with every checksum verified
        live = Live(train_command(config))
        start = live.wait_for(lambda e: e["event"] in ("train_start", "already_complete"))
        resumed = [e["checkpoint"] for e in live.events() if e["event"] == "resumed"]
        assert resumed == ([expected] if expected else []), "discovery must pick the newest valid commit"
        if start["event"] == "already_complete":
            break
        if chance.random() < 0.8:  # mostly once steps run (every other one saves), sometimes during start-up
            first = live.wait_for(lambda e: e["event"] in ("train_step", "train_done"))
            # A few steps in, whatever a step costs on this machine: in a step, a snapshot or an upload.
            target = first.get("step", 0) + chance.randint(0, 3)
            live.wait_for(lambda e, target=target: e["event"] == "train_done" or e.get("step", -1) >= target)
        time.sleep(chance.uniform(0.0, 0.1))
        if live.proc.poll() is not None:
            break  # finished before the kill landed
        live.proc.kill()
        live.finish()
        kills += 1
    assert kills >= 8, "the run finished too early to be killed often"
    last = Live(train_command(config))
    assert last.finish() == 0, last.output[-3000:]
    assert_same_weights(final_weights(url), straight)


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_storage_outage_training_goes_on_and_uploads_retry_until_it_returns(tmp_path, packed, monkeypatch):
    from moto.server import ThreadedMotoServer

    s3_port, metrics_port = free_port(), free_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    server.start()
    try:
        url = f"{make_bucket('outage')}/run"
        config = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 1},
                             samples={"every_steps": 100_000},
                             checkpoint={"url": url, "every_seconds": 1.0, "every_steps": None,
                                         "retry_first_seconds": 0.2, "retry_max_seconds": 1.0},
                             metrics={"port": metrics_port})  # fmt: skip
        live = Live(train_command(config))
        live.wait_for(lambda e: e["event"] == "checkpoint_committed")
        server.stop()  # the endpoint stops answering: connections are refused
        steps_before = max(e["step"] for e in live.events() if e["event"] == "train_step")
        deadline = time.monotonic() + 60  # s3fs retries on its own for several seconds before it reports
        while (during := _scrape(metrics_port))["gand_checkpoint_upload_failures_total"] == 0:
            assert time.monotonic() < deadline, "the outage never showed in the metrics"
            time.sleep(0.5)
        time.sleep(3.0)  # longer than a checkpoint interval (1 s) on top
        during = _scrape(metrics_port)
        steps_during = max(e["step"] for e in live.events() if e["event"] == "train_step")
        assert steps_during > steps_before + 10, "training must go on while storage is down"
        assert during["gand_checkpoint_upload_failures_total"] > 0
        assert during["gand_checkpoint_uploads_pending"] >= 1

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        server.start()  # moto keeps its buckets in this process: the same store comes back
        live.wait_for(
            lambda e: (
                e["event"] == "checkpoint_committed"
                and _scrape(metrics_port)["gand_checkpoint_commits_total"] > during["gand_checkpoint_commits_total"]
            ),
            timeout=120,
        )
        live.proc.send_signal(signal.SIGTERM)
        assert live.finish() == 75, live.output[-3000:]
        assert any(e["event"] == "storage_retry" for e in live.events())
        stopped = next(e for e in live.events() if e["event"] == "stopped_by_signal")
        assert stopped["uploaded"] is True
        assert newest_valid(url) == checkpoint_name(stopped["step"] * 8)
    finally:
        server.stop()


def test_sigterm_to_one_rank_makes_both_save_and_exit_75(tmp_path, packed):
    config = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 1},
                         samples={"every_steps": 100_000}, checkpoint={"every_steps": 100_000})  # fmt: skip
    live = Live(accelerate_command(config))
    live.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 3)
    pids = rank_pids(str(config))
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGTERM)
    code = live.finish(timeout=120)
    assert code != 0
    assert "exit status 75" in live.output  # accelerate's launcher reports the ranks' code 75 as its own 1
    stops = [e for e in live.events() if e["event"] == "stopped_by_signal"]
    assert {e["signal"] for e in stops} >= {"peer rank"}, live.output[-3000:]
    assert all(e["uploaded"] for e in stops)
    committed = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*"))
    manifest = json.loads((committed[-1] / MANIFEST).read_text())
    assert manifest["world_size"] == 2 and manifest["step"] == stops[0]["step"]

    resumed = Live(accelerate_command(config, f"train.max_steps={manifest['step'] + 2}"))
    assert resumed.finish(timeout=300) == 0, resumed.output[-3000:]
    assert any(e["event"] == "resumed" and e["step"] == manifest["step"] for e in resumed.events())


def test_a_dead_rank_makes_the_other_exit_instead_of_hanging(tmp_path, packed):
    config = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 1},
                         samples={"every_steps": 100_000}, checkpoint={"every_steps": 100_000})  # fmt: skip
    live = Live(accelerate_command(config))
    live.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 3)
    pids = rank_pids(str(config))
    os.kill(pids[1], signal.SIGKILL)
    started = time.monotonic()
    code = live.finish(timeout=120)
    assert code != 0
    assert time.monotonic() - started < 90
    assert not rank_pids(str(config)), "no rank may be left running"


# -- what a resume accepts, and what it refuses ---------------------------------------------------------------------
def test_resume_rules_architecture_change_fresh_and_world_size(tmp_path, packed):
    config = tiny_config(tmp_path, packed, train={"max_steps": 4, "log_every_steps": 1})
    first = Live(accelerate_command(config))  # two ranks, DDP
    assert first.finish() == 0, first.output[-3000:]

    changed = gand("train", str(config), "model.width=0.25", "model.latent_dim=8", "train.max_steps=6")
    assert changed.returncode == 2
    assert "model.width: 0.125 -> 0.25" in changed.stderr and "model.latent_dim: 16 -> 8" in changed.stderr
    assert "--fresh" in changed.stderr

    # One rank now: models and optimizers carry over, with a warning that data order and noise differ.
    fewer = gand("train", str(config), "train.max_steps=6")
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    assert "world_size_changed" in fewer.stdout and '"resumed"' in fewer.stdout

    fresh = gand("train", str(config), "model.width=0.25", "train.max_steps=2", "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert '"resumed"' not in fresh.stdout
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*"))
    assert names == [checkpoint_name(16)]  # the old checkpoints are gone; two steps of 8 images


def test_nan_losses_roll_back_then_give_up_with_exit_3(tmp_path, packed):
    config = tiny_config(tmp_path, packed, train={"max_steps": 4, "log_every_steps": 1})
    assert gand("train", str(config)).returncode == 0
    # Resumed with absurd learning rates (the config's rates win over the saved ones), every step blows up.
    exploding = gand("train", str(config), "optim.g.lr=1e38", "optim.d.lr=1e38", "train.max_steps=20",
                     "checkpoint.max_rollbacks=2")  # fmt: skip
    assert exploding.returncode == 3, exploding.stderr[-3000:]
    assert "checkpoint.max_rollbacks" in exploding.stderr
    rolled = [json.loads(line) for line in exploding.stdout.splitlines() if '"rolled_back"' in line]
    assert [e["checkpoint"] for e in rolled] == [checkpoint_name(32)] * 2 and all(e["step"] == 4 for e in rolled)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*"))[-1] == checkpoint_name(32)


def test_zero2_two_ranks_sigterm_resume_is_exact_and_nan_rolls_back(tmp_path, packed):
    """The DeepSpeed path: per-rank optimizer partitions through SIGTERM, resume and a NaN roll-back."""
    # Steps are fast under ZeRO on CPU: with no step limit in sight, the signal always lands mid-run.
    sections = {"train": {"max_steps": 100_000, "log_every_steps": 1}, "samples": {"every_steps": 100_000},
                "memory": {"zero_stage": 2}, "checkpoint": {"every_steps": 100_000}}  # fmt: skip
    split = tiny_config(tmp_path / "split", packed, **sections)
    first = Live(accelerate_command(split))
    first.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 4)
    os.kill(rank_pids(str(split))[0], signal.SIGTERM)
    assert first.finish() != 0 and "exit status 75" in first.output, first.output[-3000:]
    stopped = next(e for e in first.events() if e["event"] == "stopped_by_signal")
    assert stopped["step"] >= 4 and stopped["uploaded"]
    end_step = stopped["step"] + 3
    second = Live(accelerate_command(split, f"train.max_steps={end_step}"))
    assert second.finish() == 0, second.output[-3000:]  # (that resuming under ZeRO is exact: test_zero.py)
    assert any(e["event"] == "resumed" and e["step"] == stopped["step"] for e in second.events())

    exploding = Live(accelerate_command(split, "optim.g.lr=1e38", "optim.d.lr=1e38", f"train.max_steps={end_step + 4}",
                                        "checkpoint.max_rollbacks=1"))  # fmt: skip
    assert exploding.finish() != 0 and "exit status 3" in exploding.output, exploding.output[-3000:]
    rolled = [e for e in exploding.events() if e["event"] == "rolled_back"]
    assert rolled and all(e["step"] == end_step for e in rolled)


def test_a_sigkilled_run_reports_the_steps_it_lost_at_the_next_resume(tmp_path, packed):
    """The run notes how far it got next to its checkpoints; after a SIGKILL the next process says what was lost."""
    config = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 1},
                         samples={"every_steps": 100_000},
                         checkpoint={"every_steps": 4, "progress_every_seconds": 0.05})  # fmt: skip
    progress = tmp_path / "run" / "checkpoints" / "PROGRESS.json"
    first = Live(train_command(config))
    first.wait_for(lambda e: e["event"] == "checkpoint_committed")

    def noted_step() -> int:
        try:
            return json.loads(progress.read_text())["step"]
        except (FileNotFoundError, ValueError):
            return 0

    deadline = time.monotonic() + 60
    while noted_step() % 4 == 0 or noted_step() < 5:  # a note that is past a checkpoint, not on one
        assert time.monotonic() < deadline, "the progress note never moved past a checkpoint"
        time.sleep(0.01)
    first.proc.kill()
    first.finish()
    checkpoints = str(tmp_path / "run" / "checkpoints")
    noted, resume_from = noted_step(), json.loads((tmp_path / "run" / "checkpoints" / newest_valid(checkpoints) /
                                                   MANIFEST).read_text())["step"]  # fmt: skip

    second = Live(train_command(config, f"train.max_steps={max(noted, resume_from) + 2}"))
    assert second.finish() == 0, second.output[-3000:]
    resumed = next(e for e in second.events() if e["event"] == "resumed")
    assert resumed["step"] == resume_from
    assert resumed["steps_lost"] == max(0, noted - resume_from)  # (0 only if a commit overtook the note)
