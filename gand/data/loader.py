"""Stream packed shards into training batches with the `webdataset` reader.

Each (rank, loader worker) pair draws shards with replacement from its own slice of the shard list (all shards
when there are fewer shards than pairs), reads them with webdataset's tar iterator, shuffles through a buffer and
batches. An epoch is a fixed number of batches, not a pass over the files, so every rank runs the same number
of steps whatever the shard sizes.

The stream is a pure function of (seed, epoch, rank, worker): resuming at batch k of an epoch skips the k
batches' raw samples before decoding them, which gives back exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from gand.data.images import png_to_array
from gand.data.manifest import PackedManifest
from gand.storage import Store, open_url

UNLABELLED = -1


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # float32 N x C x H x W in [-1, 1]
    labels: torch.Tensor  # int64 N; UNLABELLED where the dataset has no classes
    epoch: int


class ShardStream(IterableDataset):
    """Infinite uint8 batches for one rank; each __iter__ call (one per epoch, in every worker) starts an epoch."""

    def __init__(
        self,
        shard_urls: list[str],
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        shuffle_buffer: int,
        first_epoch: int = 0,
        skip_batches: int = 0,
        channels: int = 3,
    ):
        super().__init__()
        self.channels = channels
        self.shard_urls = shard_urls
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        # Each worker holds its own copy of these counters and advances them in step with the others.
        self.epoch = first_epoch - 1
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.epoch += 1
        worker, workers = _worker_slot()
        rng = random.Random(f"gand:{self.seed}:{self.epoch}:{self.rank}:{worker}")
        # DataLoader takes batch i from worker i % workers: this worker's share of the first k batches.
        skip = len(range(worker, self.skip_batches, workers)) * self.batch_size
        self.skip_batches = 0  # only the first epoch after a resume starts part-way
        samples = _shuffled(self._samples(rng, worker, workers), self.shuffle_buffer, rng)
        for _ in islice(samples, skip):
            pass
        while True:
            chunk = list(islice(samples, self.batch_size))
            yield _collate(chunk, self.channels)

    def _samples(self, rng: random.Random, worker: int, workers: int) -> Iterator[dict]:
        slots = self.world_size * workers
        slot = self.rank * workers + worker
        mine = self.shard_urls[slot::slots] if len(self.shard_urls) >= slots else self.shard_urls
        while True:
            url = rng.choice(mine)
            with open_url(url) as stream:
                yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))


def _worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _shuffled(samples: Iterator[dict], buffer_size: int, rng: random.Random) -> Iterator[dict]:
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list[dict] = list(islice(samples, buffer_size))
    for sample in samples:
        index = rng.randrange(len(buffer))
        yield buffer[index]
        buffer[index] = sample


def _collate(samples: list[dict], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    # uint8 crosses the worker boundary (4x less than float); the trainer's process converts.
    pixels = np.stack([png_to_array(sample["png"], channels) for sample in samples])
    labels = [int(sample["cls"]) if "cls" in sample else UNLABELLED for sample in samples]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.tensor(labels, dtype=torch.int64)


class ImageLoader:
    """Batches of one resolution for one rank, epoch after epoch, starting at any step."""

    def __init__(
        self,
        manifest: PackedManifest,
        store: Store,
        resolution: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        shuffle_buffer: int = 1000,
        epoch_images: int | None = None,
        channels: int = 3,
    ):
        self.channels = channels
        self.shard_urls = [store.url(shard.path) for shard in manifest.shards_at(resolution)]
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.shuffle_buffer = shuffle_buffer
        images_per_epoch = epoch_images or manifest.num_samples
        self.batches_per_epoch = max(1, images_per_epoch // (batch_size * world_size))

    def batches(self, start_batch: int = 0) -> Iterator[Batch]:
        """Infinite batches; the first is the one an uninterrupted run would have drawn as batch `start_batch`."""
        epoch, done_in_epoch = divmod(start_batch, self.batches_per_epoch)
        # The DataLoader always takes its next batch from worker 0, so workers can only skip a multiple of the
        # worker count; the remaining (fewer than `workers`) batches are decoded and dropped here.
        skipped_by_workers = done_in_epoch - done_in_epoch % max(1, self.workers)
        stream = ShardStream(
            self.shard_urls,
            self.batch_size,
            self.seed,
            self.rank,
            self.world_size,
            self.shuffle_buffer,
            first_epoch=epoch,
            skip_batches=skipped_by_workers,
            channels=self.channels,
        )
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            prefetch_factor=2 if self.workers > 0 else None,
            # Its own generator: drawing worker seeds from the global RNG would shift the training noise
            # and make a resumed run differ from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )
        drop = done_in_epoch - skipped_by_workers
        while True:
            for pixels, labels in islice(loader, drop, self.batches_per_epoch - skipped_by_workers):
                yield Batch(pixels.float().div_(127.5).sub_(1.0), labels, epoch)
            epoch, skipped_by_workers, drop = epoch + 1, 0, 0
