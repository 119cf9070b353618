"""Experiment trackers through Accelerate: TensorBoard event files and W&B offline runs, read back after real runs."""

import json
import os
import struct
from pathlib import Path

import pytest

from tests.conftest import gand, tiny_config

pytestmark = pytest.mark.integration


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def saved_run_ids(run_dir: Path) -> dict[str, str]:
    newest = sorted((run_dir / "checkpoints").glob("ckpt-*"))[-1]
    return json.loads((newest / "state.json").read_text())["tracking_run_ids"]


def test_tensorboard_gets_scalars_and_sample_grids_and_a_resume_continues_the_run(tmp_path, packed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tmp_path, packed, tracking={"log_with": ["tensorboard"]}, train={"max_steps": 6})
    first = gand("train", str(config), "train.max_steps=4")
    assert first.returncode == 0, first.stderr
    second = gand("train", str(config))  # resumes at step 4
    assert second.returncode == 0, second.stderr
    started = [e for e in events(first.stdout) + events(second.stdout) if e["event"] == "trackers_started"]
    assert [e["resumed_step"] for e in started] == [None, 4]
    assert started[0]["run_ids"] == started[1]["run_ids"] == saved_run_ids(tmp_path / "run")

    board = EventAccumulator(str(tmp_path / "run" / "tracking" / "tiny"), size_guidance={"images": 0, "scalars": 0})
    board.Reload()
    scalars = set(board.Tags()["scalars"])
    expected = {"loss/g", "loss/d", "health/d_real", "health/grad_norm_g", "lr/g", "lr/d", "speed/images_per_second",
                "progress/kimg"}  # fmt: skip
    assert expected <= scalars, sorted(scalars)
    assert [event.step for event in board.Scalars("loss/g")] == [1, 2, 3, 4, 5, 6]
    assert [event.value for event in board.Scalars("lr/d")] == pytest.approx([2e-4] * 6)
    assert [event.value for event in board.Scalars("progress/kimg")] == pytest.approx([0.008 * s for s in range(1, 7)])
    # The log line's own numbers: what the tracker got is what the run logged (no second read from the device).
    logged = [e for e in events(first.stdout) if e["event"] == "train_step"]
    assert [round(event.value, 4) for event in board.Scalars("loss/g")][:4] == [e["loss_g"] for e in logged]
    grids = board.Images("samples/grid")
    assert [grid.step for grid in grids] == [2, 4, 6] and (grids[0].width, grids[0].height) == (4 * 34 + 2,) * 2

    # The resumed writer starts with TensorBoard's purge marker at the first step it trains: events an earlier
    # process logged from there on (steps trained again after a preemption) are dropped by every reader.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    files = sorted((tmp_path / "run" / "tracking" / "tiny").glob("events.out.tfevents.*"))
    markers = [[(event.step, event.session_log.status) for event in EventFileLoader(str(path)).Load()
                if event.HasField("session_log")] for path in files]  # fmt: skip
    assert markers == [[(1, SessionLog.START)], [(5, SessionLog.START)]]


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`): a 7-byte W&B header, then a LevelDB-format log of
    protobuf `Record`s in 32 KiB blocks (W&B's own reader lives in its Go core)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += block - position % block
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL or FIRST start a record
        if kind in (1, 4):  # FULL or LAST end it
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_runs_keep_one_run_id_across_a_resume_and_credentials_stay_out(tmp_path, packed):
    pytest.importorskip("wandb")
    secret = "wandb-key-that-must-not-leak-0123456789"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": secret, "HOME": str(tmp_path)}
    config = tiny_config(tmp_path, packed, tracking={"log_with": "wandb"}, train={"max_steps": 6})
    first = gand("train", str(config), "train.max_steps=4", env=env)
    assert first.returncode == 0, first.stderr
    second = gand("train", str(config), env=env)
    assert second.returncode == 0, second.stderr

    run_dir = tmp_path / "run"
    run_id = saved_run_ids(run_dir)["wandb"]
    files = sorted((run_dir / "tracking" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2, sorted(p.name for p in (run_dir / "tracking" / "wandb").iterdir())
    steps, keys = [], set()
    for path in files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == run_id
            elif kind == "history":
                items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
                if "loss/g" in items:  # gand's step axis: W&B would drop steps below its own last one
                    steps.append(int(items["train/step"]))
                keys |= set(items)
    assert steps == [1, 2, 3, 4, 5, 6]  # each logged step once, in order, across the two processes
    assert {"loss/g", "loss/d", "health/d_real", "lr/g"} <= keys and any(k.startswith("samples/grid") for k in keys)

    # gand's own outputs never hold the tracker's credentials.
    for output in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert secret not in output
    for path in [run_dir / "train.jsonl", *(run_dir / "checkpoints").rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_tracker_that_cannot_start_on_a_resume_is_a_warning_and_training_goes_on(tmp_path, packed):
    config = tiny_config(tmp_path, packed, train={"max_steps": 4})
    assert gand("train", str(config), "train.max_steps=2").returncode == 0
    env = {"WANDB_MODE": "online", "HOME": str(tmp_path), "WANDB_SILENT": "true", "WANDB_API_KEY": ""}
    resumed = gand("train", str(config), "tracking.log_with=wandb", env=env)  # a preempted Job restarting
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    warning = next(e for e in events(resumed.stdout) if e["event"] == "trackers_unavailable")
    assert "training resumes without trackers" in warning["effect"]
    assert [e["step"] for e in events(resumed.stdout) if e["event"] == "train_step"] == [3, 4]


def test_a_tracker_that_fails_while_logging_is_switched_off():
    from gand.observability.trackers import Trackers

    class Broken:  # a tracker whose server went away: every call raises
        name = "broken"

        def log(self, values, step=None):
            raise ConnectionError("server at https://user:secret@tracker.example closed the connection")

        def finish(self):
            raise ConnectionError("still gone")

    class Working:
        name = "working"

        def __init__(self):
            self.logged = []

        def log(self, values, step=None):
            self.logged.append((step, values))

        def finish(self):
            self.logged.append("finished")

    class Accelerator:
        def __init__(self, trackers):
            self.trackers = trackers

    class FailsToClose(Working):
        name = "fails-to-close"

        def finish(self):
            raise OSError(28, "No space left on device")

    from structlog.testing import capture_logs

    working, closing = Working(), FailsToClose()
    accelerator = Accelerator([Broken(), working, closing])
    trackers = Trackers(accelerator, images=False)
    with capture_logs() as logged:
        trackers.log_scores(10, {"fid": 40.0})
        trackers.log_scores(20, {"fid": 30.0})
        assert [tracker.name for tracker in accelerator.trackers] == ["working", "fails-to-close"]  # broken: dropped
        assert working.logged == [(10, {"eval/fid": 40.0}), (20, {"eval/fid": 30.0})]
        trackers.close()  # one tracker failing to close does not stop the others or raise
    assert working.logged[-1] == "finished" and accelerator.trackers == []
    failures = [entry for entry in logged if entry["event"] in ("tracker_failed", "tracker_close_failed")]
    assert [entry["tracker"] for entry in failures] == ["broken", "fails-to-close"]
    assert "secret" not in repr(failures) and "tracker.example" in failures[0]["error"]  # redacted, still named


def test_a_tracker_that_is_not_installed_or_cannot_start_is_a_config_error(tmp_path, packed):
    config = tiny_config(tmp_path, packed)
    missing = gand("train", str(config), "tracking.log_with=aim")
    assert missing.returncode == 2 and "tracking.log_with: aim not installed; pip install aim" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = gand("train", str(config), "tracking.log_with=tensorbord")
    assert unknown.returncode == 2 and "tracking.log_with" in unknown.stderr and "'tensorboard'" in unknown.stderr
    if not os.environ.get("WANDB_API_KEY"):  # online W&B without a key: its own message, exit 2, no traceback
        env = {"WANDB_MODE": "online", "HOME": str(tmp_path), "WANDB_SILENT": "true"}
        no_key = gand("train", str(config), "tracking.log_with=wandb", env=env)
        assert no_key.returncode == 2, no_key.stderr[-2000:]
        assert "tracking.log_with: wandb could not start" in no_key.stderr and "Traceback" not in no_key.stderr
