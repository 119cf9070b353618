import json

import pytest
import torch

from gand.checkpoint.manager import MANIFEST, CheckpointManager, SingleProcess, checkpoint_name
from gand.train.state import capture_rng, restore_rng


def save(manager: CheckpointManager, images: int, value: float = 1.0) -> str:
    return manager.save(
        images,
        images // 10,
        weights={"generator": {"w": torch.full((3, 2), value)}, "discriminator": {"b": torch.arange(4.0)}},
        trainer={
            "optimizer_g": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999)}]},
            "fixed_noise": torch.ones(2, 3),
        },
        state={"train": {"step": images // 10, "images_seen": images, "epoch": 0}},
        rank_state={"rng": capture_rng()},
    )


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
