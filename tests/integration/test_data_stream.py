"""The loader as one long-lived stream, tried with real packs, real worker processes and real signals:
every image equally likely over uneven shards, unusable samples that neither spin nor hide a stop, raw shards."""

import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
import torch

from gand.data.loader import ImageLoader
from gand.data.manifest import read_manifest, read_parts
from gand.data.pack import PackOptions, pack
from gand.data.sources import sample_key
from gand.errors import DataError
from gand.storage import Store
from tests.conftest import REPO, tiny_config
from tests.corpus import pattern, save, vouch_for

pytestmark = pytest.mark.integration


def write_images(folder: Path, names: list[str], first_seed: int) -> None:
    for offset, name in enumerate(names):
        save(pattern("blobs", size=(64, 64), seed=first_seed + offset), folder / name)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """The case from ../shared/cases: 235 images packed, then 5 more incrementally: shards of 235 and 5."""
    root = tmp_path_factory.mktemp("uneven")
    src, dest = root / "src", root / "packed"
    write_images(src, [f"old_{i:03d}.png" for i in range(235)], first_seed=0)
    options = PackOptions(resolutions=(32,), shard_size=1000, workers=2)
    pack(str(src), str(dest), options)
    write_images(src, [f"new_{i}.png" for i in range(5)], first_seed=1000)
    pack(str(src), str(dest), options)
    manifest, _ = read_manifest(str(dest))
    assert [shard.samples for shard in manifest.shards_at(32)] == [235, 5]
    return dest


def test_each_image_is_drawn_equally_often_over_uneven_shards_with_two_ranks_and_two_workers(uneven):
    epochs, batch_size = 8, 8
    draws: Counter[str] = Counter()
    for rank in (0, 1):
        loader = ImageLoader(str(uneven), 32, batch_size, seed=5, rank=rank, world_size=2, workers=2)
        per_epoch = loader.batches_per_epoch(read_manifest(str(uneven))[0])
        for batch in islice(loader.batches(), epochs * per_epoch):
            draws.update(batch.keys)
    assert len(draws) == 240  # every image drawn (53 were never drawn in 2 epochs before)
    # Each pass hands every image to exactly one (rank, worker) slot: 8 epochs are 8 passes, so 8 draws each.
    assert set(draws.values()) == {epochs}
    new = {sample_key(f"new_{i}.png") for i in range(5)}
    share = sum(draws[key] for key in new) / sum(draws.values())
    assert share == pytest.approx(5 / 240)  # was about 47%


def test_a_class_the_model_does_not_know_is_skipped_and_counted_not_spun_on(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "packed"
    for label in ("cats", "dogs"):
        write_images(src / label, [f"{label}_{i}.png" for i in range(12)], first_seed=100 * len(label) + ord(label[0]))
    pack(str(src), str(dest), PackOptions(resolutions=(32,), workers=1))
    write_images(src / "zebras", [f"zebra_{i}.png" for i in range(12)], first_seed=5000)  # its own shard
    pack(str(src), str(dest), PackOptions(resolutions=(32,), workers=1))
    loader = ImageLoader(str(dest), 32, 4, seed=0, workers=2, num_classes=2)
    batches = list(islice(loader.batches(), 20))
    assert {label for batch in batches for label in batch.labels.tolist()} <= {0, 1}
    skipped = sum(batch.counts["skipped_unknown_class"] for batch in batches)
    assert skipped > 0


def damage_every_image(shard: Path) -> None:
    with tarfile.open(shard) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = b"\x89PNG garbage" if member.name.endswith(".png") else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_without_a_usable_sample_is_a_data_error_not_an_endless_loop(tmp_path, workers):
    src, dest = tmp_path / "src", tmp_path / "packed"
    write_images(src, [f"{i}.png" for i in range(8)], first_seed=0)
    pack(str(src), str(dest), PackOptions(resolutions=(32,), workers=1))
    manifest, _ = read_manifest(str(dest))
    damage_every_image(dest / manifest.shards_at(32)[0].path)
    vouch_for(dest, manifest.shards_at(32)[0].path)
    started = time.monotonic()
    with pytest.raises(DataError, match="no usable sample"):
        next(ImageLoader(str(dest), 32, 4, seed=0, workers=workers).batches())
    assert time.monotonic() - started < 120  # a hang guard, not a timing claim


def flip_bytes(path: Path, count: int, seed: int) -> None:
    data = bytearray(path.read_bytes())
    for offset in random.Random(seed).sample(range(len(data)), count):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_and_truncated_shards_are_left_out_named_counted_and_stop_below_the_share(tmp_path):
    """About 100 flipped bytes in one shard and another cut short: neither is drawn from (each is named with its
    reason), training goes on while enough is left (data.min_usable_share), and stops with a data error below it."""
    src, dest = tmp_path / "src", tmp_path / "packed"
    write_images(src, [f"{i:02d}.png" for i in range(48)], first_seed=0)
    pack(str(src), str(dest), PackOptions(resolutions=(32,), workers=1, shard_size=12))
    manifest, _ = read_manifest(str(dest))
    shards = manifest.shards_at(32)
    assert len(shards) == 4
    flip_bytes(dest / shards[1].path, 100, seed=1)
    truncated = dest / shards[2].path
    truncated.write_bytes(truncated.read_bytes()[: shards[2].bytes // 2])
    parts = read_parts(Store(str(dest)))
    intact = {sample.key for part in (parts[0], parts[3]) for sample in part.samples}

    loader = ImageLoader(str(dest), 32, 4, seed=0, workers=2, min_usable_share=0.5)
    drawn = {key for batch in islice(loader.batches(), 12) for key in batch.keys}  # two epochs of 24 images
    assert drawn == intact
    assert set(loader.damaged_shards) == {shards[1].path, shards[2].path}
    assert "SHA-256" in loader.damaged_shards[shards[1].path]
    assert "bytes where the manifest says" in loader.damaged_shards[shards[2].path]
    with pytest.raises(DataError, match=r"only 24 of the 48 images .* 32/shard-000001\.tar: SHA-256"):
        next(ImageLoader(str(dest), 32, 4, seed=0, workers=0, min_usable_share=0.9).batches())

    config = tiny_config(tmp_path / "run", dest, train={"max_steps": 2})  # the default share, 0.9: stop
    result = subprocess.run([sys.executable, "-m", "gand.cli", "train", str(config)], capture_output=True,
                            text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert result.returncode == 1 and "only 24 of the 48 images" in result.stderr, result.stderr[-2000:]
    assert '"shard_damaged"' in result.stdout


def test_raw_shards_give_the_same_batches_as_png_shards(tmp_path):
    src = tmp_path / "src"
    write_images(src, [f"{i:02d}.png" for i in range(20)], first_seed=0)
    for fmt in ("png", "raw"):
        pack(str(src), str(tmp_path / fmt), PackOptions(resolutions=(32,), shard_size=7, workers=1, output=fmt))
    png, raw = (list(islice(ImageLoader(str(tmp_path / fmt), 32, 4, seed=1, workers=2).batches(), 12))
                for fmt in ("png", "raw"))  # fmt: skip
    for a, b in zip(png, raw, strict=True):
        assert a.keys == b.keys and a.position == b.position
        assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8


def test_sigterm_while_the_loop_waits_for_data_stops_it(tmp_path, packed):
    """A shard that blocks its reader (a FIFO stands for a hung network mount): the trainer waits for data when the
    signal comes. It must stop within seconds: exit 75 when a checkpoint exists to resume from, else 1."""
    import shutil

    dataset = tmp_path / "packed"
    shutil.copytree(packed, dataset)
    manifest, _ = read_manifest(str(dataset))
    config = tiny_config(tmp_path, dataset, train={"max_steps": 2}, checkpoint={"every_steps": 2})
    command = [sys.executable, "-m", "gand.cli", "train", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def stop_while_blocked(expected_exit: int) -> str:
        process = subprocess.Popen([*command, "train.max_steps=4"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)  # fmt: skip
        lines = []
        for line in process.stdout:  # the run reaches the loop, then blocks opening the FIFO
            lines.append(line)
            if '"train_start"' in line:
                break
        time.sleep(2)
        assert process.poll() is None, "".join(lines)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        text = "".join(lines) + output
        assert process.returncode == expected_exit, text
        assert "stop_while_waiting_for_data" in text and "Traceback" not in text
        return text

    # A run with no commit yet: exit 1, "nothing to resume from".
    fifo = dataset / manifest.shards_at(32)[-1].path
    saved = fifo.read_bytes()
    fifo.unlink()
    os.mkfifo(fifo)
    assert "before any checkpoint was committed" in stop_while_blocked(1)
    # With a commit: train 2 steps on the real shard, then block again: exit 75, resume point intact.
    fifo.unlink()
    fifo.write_bytes(saved)
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert first.returncode == 0, first.stderr
    fifo.unlink()
    os.mkfifo(fifo)
    assert "resumes from ckpt-" in stop_while_blocked(75)
