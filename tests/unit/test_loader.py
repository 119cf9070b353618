import random
from itertools import islice

import pytest
import torch

from gand.data.loader import ImageLoader, ShardStream
from gand.data.manifest import read_manifest


def make_loader(packed, resolution=32, batch_size=8, workers=0, rank=0, world_size=1, **kw) -> ImageLoader:
    manifest, store = read_manifest(str(packed))
    return ImageLoader(
        manifest,
        store,
        resolution,
        batch_size,
        seed=7,
        rank=rank,
        world_size=world_size,
        workers=workers,
        shuffle_buffer=16,
        **kw,
    )


@pytest.mark.parametrize("resolution", [32, 64])
def test_batches_are_float_images_in_range_with_labels(packed, resolution):
    batch = next(make_loader(packed, resolution).batches())
    assert batch.images.shape == (8, 3, resolution, resolution)
    assert batch.images.dtype == torch.float32
    assert -1.0 <= batch.images.min() < 0 < batch.images.max() <= 1.0
    assert batch.labels.dtype == torch.int64
    assert set(batch.labels.tolist()) <= {0, 1, 2, 3}


def test_epoch_is_a_fixed_number_of_batches(packed):
    loader = make_loader(packed, epoch_images=24)
    assert loader.batches_per_epoch == 3
    epochs = [batch.epoch for batch in islice(loader.batches(), 7)]
    assert epochs == [0, 0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("workers", [0, 2])
def test_starting_at_step_k_gives_the_same_batches_as_running_through(packed, workers):
    loader = make_loader(packed, workers=workers)  # 5 batches per epoch: k=7 crosses an epoch boundary
    straight = list(islice(loader.batches(0), 9))
    for k in (3, 7):
        resumed = list(islice(make_loader(packed, workers=workers).batches(start_batch=k), 9 - k))
        for a, b in zip(straight[k:], resumed, strict=True):
            assert a.epoch == b.epoch
            assert torch.equal(a.images, b.images)
            assert torch.equal(a.labels, b.labels)


def test_epochs_differ_and_seeds_matter(packed):
    first, second = islice(make_loader(packed).batches(), 0, 6, 5)  # batch 0 of epochs 0 and 1
    assert not torch.equal(first.images, second.images)


def test_ranks_read_disjoint_shard_slices(packed):
    manifest, store = read_manifest(str(packed))
    urls = [store.url(shard.path) for shard in manifest.shards_at(32)]
    assert len(urls) >= 4
    for rank in (0, 1):
        stream = ShardStream(urls, 8, seed=1, rank=rank, world_size=2, shuffle_buffer=0)
        seen = {sample["__url__"] for sample in islice(stream._samples(random.Random(0), 0, 1), 200)}
        assert seen == set(urls[rank::2])


def test_ranks_get_different_batches(packed):
    zero = next(make_loader(packed, rank=0, world_size=2).batches())
    one = next(make_loader(packed, rank=1, world_size=2).batches())
    assert not torch.equal(zero.images, one.images)
