import json

import pytest
import torch

from gand.checkpoint.manager import MANIFEST, CheckpointManager, SingleProcess, checkpoint_name
from gand.train.state import capture_rng, restore_rng


def save(manager: CheckpointManager, images: int, value: float = 1.0, **extra) -> str:
    snapshot = manager.save(
        images,
        images // 10,
        weights={"generator": {"w": torch.full((3, 2), value)}, "discriminator": {"b": torch.arange(4.0)}},
        trainer={
            "optimizer_g": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999)}]},
            "fixed_noise": torch.ones(2, 3),
        },
        state={"train": {"step": images // 10, "images_seen": images, "epoch": 0}},
        rank_state={"rng": capture_rng()},
        **extra,
    )
    return checkpoint_name(images) if snapshot is None else snapshot.name


def test_round_trip_and_layout(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess(), keep_last=2)
    name = save(manager, 1280, value=3.0)
    assert name == checkpoint_name(1280) == "ckpt-000000001280"
    files = json.loads((tmp_path / name / MANIFEST).read_text())["files"]
    assert set(files) == {
        "generator.safetensors",
        "discriminator.safetensors",
        "trainer.pt",
        "state.json",
        "rank-0.pt",
    }
    loaded = manager.load_latest()
    assert loaded.name == name
    assert torch.equal(loaded.weights["generator"]["w"], torch.full((3, 2), 3.0))
    assert loaded.trainer["optimizer_g"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert loaded.state["train"]["images_seen"] == 1280


def test_rng_state_restores_the_same_draws(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess())
    save(manager, 10)
    expected = torch.randn(5)
    restore_rng(manager.load_latest().rank_state["rng"])
    assert torch.equal(torch.randn(5), expected)


def test_without_manifest_a_checkpoint_does_not_exist(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess())
    assert manager.load_latest() is None
    save(manager, 100)
    half = tmp_path / checkpoint_name(200)
    half.mkdir()
    (half / "generator.safetensors").write_bytes(b"partial")
    assert manager.load_latest().name == checkpoint_name(100)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_newest_falls_back_to_older(tmp_path, damage):
    manager = CheckpointManager(str(tmp_path), SingleProcess(), keep_last=3)
    save(manager, 100, value=1.0)
    save(manager, 200, value=2.0)
    target = tmp_path / checkpoint_name(200) / "generator.safetensors"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[:-4]
    else:
        data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    loaded = manager.load_latest()
    assert loaded.name == checkpoint_name(100)
    assert torch.equal(loaded.weights["generator"]["w"], torch.full((3, 2), 1.0))


def test_retention_keeps_last_k_and_removes_interrupted_saves(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess(), keep_last=2)
    (tmp_path / checkpoint_name(50)).mkdir()  # an interrupted save from before
    for images in (100, 200, 300):
        save(manager, images)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(200), checkpoint_name(300)]


def test_retention_keeps_the_best_fid_and_manifests_carry_the_scores(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess(), keep_last=2)
    for images, fid in ((100, 50.0), (200, 12.5), (300, 30.0), (400, 41.0), (500, None)):
        save(manager, images, scores={"fid": fid, "kid_mean": 0.01} if fid is not None else None)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [checkpoint_name(200), checkpoint_name(400), checkpoint_name(500)]  # best FID + the last two
    assert json.loads((tmp_path / checkpoint_name(200) / MANIFEST).read_text())["eval"] == {
        "fid": 12.5,
        "kid_mean": 0.01,
    }
    assert "eval" not in json.loads((tmp_path / checkpoint_name(500) / MANIFEST).read_text())


def test_history_is_saved_apart_and_read_without_the_weights(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess(), keep_last=2)
    save(manager, 100)  # written without a history, as before histories were kept
    assert manager.load_history() == (checkpoint_name(100), None)
    save(manager, 200, history={"names": ["g"], "values": torch.tensor([[200.0, 1.5]], dtype=torch.float64)})
    name, history = manager.load_history()
    assert name == checkpoint_name(200) and history["names"] == ["g"]
    (tmp_path / checkpoint_name(200) / "history.pt").write_bytes(b"damaged")
    assert manager.load_history() == (checkpoint_name(100), None)  # falls back like discovery does


def test_saving_twice_at_the_same_count_is_a_no_op(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess())
    save(manager, 100, value=1.0)
    save(manager, 100, value=9.0)
    assert torch.equal(manager.load_latest().weights["generator"]["w"], torch.full((3, 2), 1.0))


def test_pickled_code_is_refused(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess())
    name = save(manager, 100)
    # Replace trainer.pt with a pickle that would run code, and fix up the manifest so only the loader guards.
    import hashlib
    import io

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buffer = io.BytesIO()
    torch.save({"x": Evil()}, buffer)
    data = buffer.getvalue()
    (tmp_path / name / "trainer.pt").write_bytes(data)
    manifest = json.loads((tmp_path / name / MANIFEST).read_text())
    manifest["files"]["trainer.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (tmp_path / name / MANIFEST).write_text(json.dumps(manifest))
    assert manager.load_latest() is None  # weights_only loading refuses it; no older checkpoint to fall back to


# -- background uploads, retention, the multi-rank commit, retries -------------------------------------------------
def test_background_upload_commits_and_reports(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess(), background=True)
    name = save(manager, 100)
    assert manager.wait(timeout_seconds=30)
    results = manager.poll()
    assert [(r.name, r.committed, r.error) for r in results] == [(name, True, None)]
    assert manager.uploads_pending == 0 and manager.load_latest().name == name


def test_retention_keeps_every_mth_and_the_one_resumed_from(tmp_path):
    manager = CheckpointManager(str(tmp_path), SingleProcess(), keep_last=2, keep_every=3)
    for images in range(100, 800, 100):  # sequences 1..7
        save(manager, images)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(n) for n in (300, 600, 700)]

    # A run that resumed from an older checkpoint (the newest was damaged) never deletes that one.
    (tmp_path / checkpoint_name(700) / "trainer.pt").write_bytes(b"damaged")
    (tmp_path / checkpoint_name(600) / "trainer.pt").write_bytes(b"damaged")
    resumed = CheckpointManager(str(tmp_path), SingleProcess(), keep_last=2)
    assert resumed.load_latest().name == checkpoint_name(300)
    save(resumed, 400)
    save(resumed, 500)
    assert checkpoint_name(300) in {p.name for p in tmp_path.iterdir()}


class ThreadRanks:
    """Two ranks as two threads sharing an all-gather: the commit protocol without a process group."""

    def __init__(self, world_size: int):
        import threading

        self.world_size = world_size
        self.slots: list = [None] * world_size
        self.gathered = threading.Barrier(world_size)
        self.read = threading.Barrier(world_size)

    def rank(self, rank: int):
        ranks = self

        class Rank:
            def __init__(self):
                self.rank, self.world_size = rank, ranks.world_size

            def gather_objects(self, obj):
                ranks.slots[rank] = obj
                ranks.gathered.wait()
                result = list(ranks.slots)
                ranks.read.wait()
                return result

            def barrier(self):
                ranks.gathered.wait()

        return Rank()


def test_two_ranks_commit_only_after_both_uploaded(tmp_path):
    import threading

    ranks = ThreadRanks(2)
    managers = [CheckpointManager(str(tmp_path), ranks.rank(r), background=True) for r in range(2)]
    threads = [threading.Thread(target=save, args=(managers[r], 64)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(manager.wait(30) for manager in managers)
    manifest = json.loads((tmp_path / checkpoint_name(64) / MANIFEST).read_text())
    assert {"rank-0.pt", "rank-1.pt", "trainer.pt"} <= manifest["files"].keys()
    assert manifest["world_size"] == 2 and (tmp_path / checkpoint_name(64) / "rank-1.done").exists()


def test_a_marker_from_an_older_attempt_does_not_count(tmp_path):
    import time

    from gand.checkpoint.manager import CorruptCheckpoint, Snapshot

    manager = CheckpointManager(str(tmp_path), SingleProcess())
    (tmp_path / "ckpt-x").mkdir()
    (tmp_path / "ckpt-x" / "rank-1.done").write_text(json.dumps({"token": "old-token", "files": {}}))
    snapshot = Snapshot("ckpt-x", 1, 1, 1, "new-token", {})
    with pytest.raises(CorruptCheckpoint, match="rank 1 did not finish"):
        manager._wait_for_marker(snapshot, 1, deadline=time.monotonic() + 0.5)


def test_retries_back_off_then_succeed_or_time_out():
    import time

    from gand.checkpoint.uploader import RetryPolicy, UploadTimeout, with_retries

    policy = RetryPolicy(first_delay_seconds=0.01, max_delay_seconds=0.02)
    calls, failures = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("endpoint refused")
        return "ok"

    assert with_retries(flaky, "x", policy, time.monotonic() + 10, lambda: failures.append(1)) == "ok"
    assert len(calls) == 3 and len(failures) == 2

    def down():
        raise ConnectionError("endpoint refused")

    with pytest.raises(UploadTimeout, match="still failing"):
        with_retries(down, "x", policy, time.monotonic() + 0.1)

    def missing():
        calls.append(1)
        raise FileNotFoundError("no such key")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        with_retries(missing, "x", policy, time.monotonic() + 10)
    assert len(calls) == 1  # an answer, not a failure: not retried
