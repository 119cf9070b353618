import shutil
from collections import Counter
from itertools import islice

import pytest
import torch

from gand.data.loader import DataPosition, ImageLoader, SampleOrder
from gand.data.manifest import read_manifest
from gand.data.pack import PackOptions, pack
from gand.data.sources import sample_key
from tests.corpus import pattern, save, vouch_for


def make_loader(path, resolution=32, batch_size=8, workers=0, **kw) -> ImageLoader:
    return ImageLoader(str(path), resolution, batch_size, seed=7, workers=workers, **kw)


@pytest.mark.parametrize("resolution", [32, 64])
def test_batches_are_uint8_channels_last_images_with_labels_and_keys(packed, resolution):
    batch = next(make_loader(packed, resolution).batches())
    assert batch.images.shape == (8, 3, resolution, resolution)
    assert batch.images.dtype == torch.uint8  # converted to [-1, 1] on the training device, not here
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= batch.images.min() < 128 < batch.images.max() <= 255
    assert batch.labels.dtype == torch.int64
    assert set(batch.labels.tolist()) <= {0, 1, 2, 3}
    assert len(batch.keys) == 8 and all(len(key) == 16 for key in batch.keys)
    assert batch.position == DataPosition(epoch=0, batch=1, generation=1, stream_batch=1)


def test_grayscale_on_request(packed):
    batch = next(make_loader(packed, channels=1).batches())
    assert batch.images.shape == (8, 1, 32, 32)


def test_epoch_is_a_fixed_number_of_batches(packed):
    loader = make_loader(packed, epoch_images=24)
    positions = [batch.position for batch in islice(loader.batches(), 7)]
    assert [(p.epoch, p.batch) for p in positions] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 1)]


@pytest.mark.parametrize("workers", [0, 2])
def test_starting_at_a_position_gives_the_same_batches_as_running_through(packed, workers):
    straight = list(islice(make_loader(packed, workers=workers).batches(), 9))  # 5 per epoch: crosses a boundary
    for k in (3, 5, 7):
        resumed = list(islice(make_loader(packed, workers=workers).batches(straight[k - 1].position), 9 - k))
        for a, b in zip(straight[k:], resumed, strict=True):
            assert a.position == b.position
            assert a.keys == b.keys
            assert torch.equal(a.images, b.images)
            assert torch.equal(a.labels, b.labels)


def test_resuming_with_another_number_of_workers_gives_the_same_batches(packed):
    """Batch b of a rank is a function of b alone, not of the worker that makes it: a resume on a machine with
    other cores (data.workers defaults to the spare cores) still continues exactly."""
    straight = list(islice(make_loader(packed, workers=2).batches(), 9))
    for workers in (0, 1):
        resumed = list(islice(make_loader(packed, workers=workers).batches(straight[3].position), 5))
        for a, b in zip(straight[4:], resumed, strict=True):
            assert a.position == b.position and a.keys == b.keys and torch.equal(a.images, b.images)


def test_epochs_differ(packed):
    first, second = islice(make_loader(packed).batches(), 0, 6, 5)  # batch 0 of epochs 0 and 1
    assert first.keys != second.keys


@pytest.mark.parametrize("total, slots", [(240, 4), (7, 3), (2, 5), (1000, 16)])
def test_every_pass_hands_each_image_to_exactly_one_slot(total, slots):
    order = SampleOrder([total - total // 3, total // 3], seed=3, generation=1, slots=slots)
    # Whole chunks per slot: together the slots have drawn a prefix of the pass sequence, about 3 passes.
    draws_per_slot = order.chunk * -(-3 * total // (order.chunk * slots))
    counts = Counter(order.draw(slot, j) for slot in range(slots) for j in range(draws_per_slot))
    assert set(counts) == set(range(total))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_a_pass_is_a_fresh_permutation(packed):
    order = SampleOrder([100], seed=3, generation=1, slots=1)
    first, second = [order.draw(0, j) for j in range(100)], [order.draw(0, j) for j in range(100, 200)]
    assert sorted(first) == sorted(second) == list(range(100))
    assert first != second


def test_ranks_get_different_batches(packed):
    zero = next(make_loader(packed, rank=0, world_size=2).batches())
    one = next(make_loader(packed, rank=1, world_size=2).batches())
    assert not set(zero.keys) & set(one.keys)


def test_a_new_generation_is_picked_up_at_the_next_epoch(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "out"
    for index in range(8):
        save(pattern("blobs", seed=index), src / f"old_{index}.png")
    pack(str(src), str(dest), PackOptions(resolutions=(32,), shard_size=4, workers=1))
    loader = make_loader(dest, batch_size=4, epoch_images=8)
    batches = loader.batches()
    first_epoch = [next(batches) for _ in range(2)]
    assert {b.position.generation for b in first_epoch} == {1}

    for index in range(8):  # the daemon adds a second half while training runs
        save(pattern("blobs", seed=100 + index), src / f"new_{index}.png")
    assert pack(str(src), str(dest), PackOptions(resolutions=(32,), shard_size=4, workers=1)).packed == 8
    later = [next(batches) for _ in range(16)]
    assert {b.position.generation for b in later} == {2}
    new_keys = {sample_key(f"new_{index}.png") for index in range(8)}
    assert new_keys & {key for b in later for key in b.keys}  # the new shards are drawn from, no restart


def test_resume_uses_the_generation_its_epoch_started_with(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "out"
    for index in range(8):
        save(pattern("blobs", seed=index), src / f"{index}.png")
    pack(str(src), str(dest), PackOptions(resolutions=(32,), shard_size=4, workers=1))
    straight = list(islice(make_loader(dest, batch_size=2).batches(), 4))
    snapshot = tmp_path / "snapshot"
    shutil.copytree(dest, snapshot)
    for index in range(8, 16):
        save(pattern("blobs", seed=index), src / f"{index}.png")
    pack(str(src), str(dest), PackOptions(resolutions=(32,), shard_size=4, workers=1))  # generation 2 appears
    resumed = list(islice(make_loader(dest, batch_size=2).batches(straight[1].position), 2))
    assert [b.keys for b in resumed] == [b.keys for b in straight[2:4]]  # still generation 1 until the epoch ends
    assert {b.position.generation for b in resumed} == {1}


def test_a_damaged_sample_is_skipped_and_counted_and_batches_stay_full(tmp_path):
    """An undecodable image in a shard the manifest vouches for (a bad encoder, not storage damage, which leaves the
    whole shard out) costs one sample, not the run."""
    import io
    import tarfile

    src, dest = tmp_path / "src", tmp_path / "out"
    for index in range(8):
        save(pattern("blobs", seed=index), src / f"{index}.png")
    pack(str(src), str(dest), PackOptions(resolutions=(32,), shard_size=4, workers=1))
    manifest, _ = read_manifest(str(dest))
    shard = dest / manifest.shards_at(32)[0].path
    with tarfile.open(shard) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    damaged = next(member.name for member, _ in members if member.name.endswith(".png"))
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = b"\x89PNG garbage" if member.name == damaged else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    vouch_for(dest, manifest.shards_at(32)[0].path)

    batches = list(islice(make_loader(dest, batch_size=3, epoch_images=24, workers=1).batches(), 8))
    assert all(len(batch.keys) == 3 for batch in batches)
    assert damaged.rsplit(".", 1)[0] not in {key for batch in batches for key in batch.keys}
    totals = {name: sum(batch.counts[name] for batch in batches) for name in batches[0].counts}
    assert totals["skipped_undecodable"] >= 1 and totals["shards_opened"] >= 2
    assert totals["skipped_unknown_class"] == 0
