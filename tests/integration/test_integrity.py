"""State that means what it says (issue 19): a run with evidence of earlier training never starts over silently,
and storage errors are reported as what they are. Real runs through the command line, on CPU."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from gand.checkpoint.manager import MANIFEST
from tests.conftest import gand, tiny_config

pytestmark = pytest.mark.integration


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path, packed) -> Path:
    """A run trained to step 6 with a checkpoint every 2 steps (two kept) and a progress note every step."""
    config = tiny_config(tmp_path, packed, train={"max_steps": 6},
                         checkpoint={"every_steps": 2, "progress_every_seconds": 0.001})  # fmt: skip
    assert gand("train", str(config)).returncode == 0
    return config


@pytest.mark.parametrize("damage", ["truncate every generator", "delete every manifest"])
def test_a_run_whose_checkpoints_cannot_be_used_refuses_to_start_over_and_changes_nothing(trained, damage):
    checkpoints = trained.parent / "run" / "checkpoints"
    folders = sorted(checkpoints.glob("ckpt-*"))
    assert len(folders) == 2
    for folder in folders:
        if damage == "truncate every generator":
            weights = folder / "generator.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
        else:
            (folder / MANIFEST).unlink()
    before = tree(checkpoints)
    result = gand("train", str(trained), "train.max_steps=8")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no checkpoint can be resumed. Nothing was changed" in result.stderr and "--fresh" in result.stderr
    expected = "fail verification" if damage == "truncate every generator" else "PROGRESS.json says the run reached"
    assert expected in result.stderr
    assert not any(e.get("event") == "train_step" for e in events(result.stdout))
    after = {path: data for path, data in tree(checkpoints).items() if path != "LEASE.json"}
    assert after == before  # nothing overwritten, nothing deleted

    fresh = gand("train", str(trained), "train.max_steps=2", "--fresh")  # told to: it starts over
    assert fresh.returncode == 0, fresh.stderr[-2000:]


def test_a_run_that_never_committed_starts_from_step_0_and_says_so(tmp_path, packed):
    """A process preempted before its first checkpoint left a progress note (no commit named) and a half-uploaded
    folder: nothing was ever committed, so starting over loses nothing; a warning says so."""
    config = tiny_config(tmp_path, packed, train={"max_steps": 2})
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "ckpt-000000000016").mkdir(parents=True)
    (checkpoints / "ckpt-000000000016" / "generator.safetensors").write_bytes(b"half")
    (checkpoints / "PROGRESS.json").write_text(json.dumps({"step": 5, "images_seen": 40, "time": time.time(),
                                                           "last_commit": None}))  # fmt: skip
    result = gand("train", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    warning = next(e for e in events(result.stdout) if e.get("event") == "starting_over")
    assert warning["previous_step"] == 5


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB file system (tmpfs): room for one tiny checkpoint (about 410 KiB), not two."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_stops_the_run_at_once_says_so_and_leaves_nothing_half_written(tmp_path, packed, small_disk):
    checkpoints = small_disk / "checkpoints"
    config = tiny_config(tmp_path, packed, train={"max_steps": 6},
                         checkpoint={"url": str(checkpoints), "every_steps": 2, "retry_first_seconds": 0.2,
                                     "retry_max_seconds": 1.0, "upload_timeout_seconds": 120})  # fmt: skip
    started = time.monotonic()
    result = gand("train", str(config))
    assert result.returncode == 1, result.stderr[-2000:]
    assert time.monotonic() - started < 60  # stopped at once, not after the upload timeout
    assert "no space left on the device" in result.stderr and "retrying cannot help" in result.stderr
    assert not any(e.get("event") == "storage_retry" for e in events(result.stdout))
    folders = sorted(p.name for p in checkpoints.glob("ckpt-*"))
    assert folders == ["ckpt-000000000016"] and (checkpoints / folders[0] / MANIFEST).exists()  # no half-written one

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space freed
    resumed = gand("train", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert next(e for e in events(resumed.stdout) if e.get("event") == "resumed")["step"] == 2


def test_a_class_added_to_the_dataset_after_the_run_began_does_not_stop_the_resume(tmp_path):
    """AC-GAN on 2 classes to a checkpoint; the daemon (here `gand pack`) then adds a third class. The same command
    resumes with the model's 2 classes, leaves the new class's images out (counted), and says how to use them."""
    from gand.data.pack import PackOptions, pack
    from tests.corpus import pattern, save

    src, dest = tmp_path / "src", tmp_path / "packed"
    for index, label in enumerate(("cats", "cats", "cats", "cats", "dogs", "dogs", "dogs", "dogs") * 2):
        save(pattern("blobs", seed=index), src / label / f"{index}.png")
    pack(str(src), str(dest), PackOptions(resolutions=(32,), workers=1))
    config = tiny_config(tmp_path, dest, model={"arch": "acgan", "width": 0.125, "latent_dim": 16},
                         loss={"class_mode": "auxiliary"}, train={"max_steps": 2, "log_every_steps": 1})  # fmt: skip
    first = gand("train", str(config))
    assert first.returncode == 0, first.stderr[-2000:]
    for index in range(8):
        save(pattern("rings", seed=100 + index), src / "ants" / f"{index}.png")
    pack(str(src), str(dest), PackOptions(resolutions=(32,), workers=1))  # classes: cats, dogs, ants

    resumed = gand("train", str(config), "train.max_steps=6")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    grew = next(e for e in events(resumed.stdout) if e.get("event") == "dataset_classes_grew")
    assert grew["model_classes"] == 2 and grew["dataset_classes"] == 3 and "--fresh" in grew["to_use_them"]
    assert [e["step"] for e in events(resumed.stdout) if e.get("event") == "train_step"] == [3, 4, 5, 6]

    # Packed again from scratch, the classes sort afresh (ants, cats, dogs): index 0 would now mean ants. Refused.
    pack(str(src), str(dest), PackOptions(resolutions=(32,), workers=1, overwrite=True))
    reordered = gand("train", str(config), "train.max_steps=8")
    assert reordered.returncode == 2 and "are not the ones" in reordered.stderr, reordered.stderr[-2000:]


def test_a_seed_draws_the_same_picture_whatever_the_batch_around_it(trained, tmp_path):
    """BatchNorm generator: `gand sample --seed 3 --n 1` and `--n 16` start with the same image; interpolation
    frames are the same with or without their neighbours."""
    import numpy as np
    from PIL import Image

    run = str(trained.parent / "run")

    def first_image(name: str, *args: str) -> np.ndarray:
        out = tmp_path / name
        result = gand("sample", run, "--out", str(out), *args)
        assert result.returncode == 0, result.stderr[-2000:]
        grid = np.asarray(Image.open(out / "grid.png")).astype(int)
        return grid[2:34, 2:34]  # 32 px images after a 2 px border

    one, sixteen = first_image("one", "--seed", "3", "--n", "1"), first_image("many", "--seed", "3", "--n", "16")
    assert np.abs(one - sixteen).max() == 0
    other_seed = first_image("other", "--seed", "4", "--n", "1")
    assert np.abs(one - other_seed).mean() > 5  # and seeds still differ
