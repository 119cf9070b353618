"""Stream packed shards into training batches with the `webdataset` reader.

Each (rank, loader worker) pair draws shards with replacement from its own slice of the shard list (all shards
when there are fewer shards than pairs), reads them with webdataset's tar iterator, shuffles through a buffer and
batches. An epoch is a fixed number of batches, not a pass over the files, so every rank runs the same number
of steps whatever the shard sizes.

At every epoch boundary the loader looks for a newer manifest generation (the packing daemon may have added
shards) and draws the next epoch from it, without a restart; all ranks use the generation rank 0 saw.

The stream is a pure function of (seed, epoch, generation, rank, worker): resuming at batch k of an epoch skips
the k batches' raw samples before decoding them, which gives back exactly the batches an uninterrupted run saw.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import structlog
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from gand.data.images import OUTPUT_FORMATS, image_to_array
from gand.data.manifest import PackedManifest, dataset_root, read_manifest
from gand.storage import Store, open_url

UNLABELLED = -1
log = structlog.get_logger("gand.loader")


@dataclass(frozen=True)
class DataPosition:
    """Where a rank's data stream stands: batches drawn in the epoch, and the manifest generation it uses."""

    epoch: int = 0
    batch: int = 0
    generation: int = 0  # 0: not chosen yet (take the newest)


# What a loader worker counts between two batches; the same keys always, so ranks can average them.
READ_COUNTERS = ("shards_opened", "skipped_unknown_class", "skipped_undecodable")


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # float32 N x C x H x W in [-1, 1]
    labels: torch.Tensor  # int64 N; UNLABELLED where the dataset has no classes
    keys: list[str] = field(repr=False)
    position: DataPosition  # after this batch: resume from here to draw the next one
    counts: dict[str, int] = field(default_factory=dict)  # READ_COUNTERS since the previous batch of this worker

    @property
    def epoch(self) -> int:
        return self.position.epoch


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
        num_classes: int = 0,
    ):
        super().__init__()
        self.shard_urls = shard_urls
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.channels = channels
        self.num_classes = num_classes
        # Each worker holds its own copy of these counters and advances them in step with the others.
        self.epoch = first_epoch - 1
        self.skip_batches = skip_batches
        self.counts = dict.fromkeys(READ_COUNTERS, 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str], dict[str, int]]]:
        self.epoch += 1
        worker, workers = _worker_slot()
        rng = random.Random(f"gand:{self.seed}:{self.epoch}:{len(self.shard_urls)}:{self.rank}:{worker}")
        # DataLoader takes batch i from worker i % workers: this worker's share of the first k batches.
        skip = len(range(worker, self.skip_batches, workers)) * self.batch_size
        self.skip_batches = 0  # only the first epoch after a resume starts part-way
        samples = _shuffled(self._samples(rng, worker, workers), self.shuffle_buffer, rng)
        for _ in islice(samples, skip):
            pass
        while True:
            yield self._batch(samples)

    def _batch(self, samples: Iterator[dict]) -> tuple[torch.Tensor, torch.Tensor, list[str], dict[str, int]]:
        """The next batch_size samples that decode. A sample that does not (storage damage: the packer checks
        every image it publishes) is counted and replaced by the next one rather than stopping the run."""
        pixels, labels, keys = [], [], []
        while len(pixels) < self.batch_size:
            sample = next(samples)
            try:
                array = image_to_array(_image_bytes(sample), self.channels)
            except (OSError, ValueError, KeyError, SyntaxError) as err:  # PIL raises all of these for bad data
                self.counts["skipped_undecodable"] += 1
                log.warning("sample_skipped", key=sample.get("__key__"), shard=sample.get("__url__"),
                            reason="undecodable", error=str(err))  # fmt: skip
                continue
            pixels.append(array)
            labels.append(int(sample["cls"]) if "cls" in sample else UNLABELLED)
            keys.append(sample["__key__"])
        counts, self.counts = self.counts, dict.fromkeys(READ_COUNTERS, 0)
        # uint8 crosses the worker boundary (4x less than float); the trainer's process converts.
        images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        return images, torch.tensor(labels, dtype=torch.int64), keys, counts

    def _samples(self, rng: random.Random, worker: int, workers: int) -> Iterator[dict]:
        slots = self.world_size * workers
        slot = self.rank * workers + worker
        mine = self.shard_urls[slot::slots] if len(self.shard_urls) >= slots else self.shard_urls
        while True:
            url = rng.choice(mine)
            self.counts["shards_opened"] += 1
            with open_url(url) as stream:
                for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                    # Classes the daemon added after the model was built cannot be learned by it: leave them out.
                    if self.num_classes and "cls" in sample and int(sample["cls"]) >= self.num_classes:
                        self.counts["skipped_unknown_class"] += 1
                        continue
                    yield sample


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


def _image_bytes(sample: dict) -> bytes:
    for extension in OUTPUT_FORMATS:
        if extension in sample:
            return sample[extension]
    raise KeyError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image member")


def _same_everywhere(value: int) -> int:
    return value


class ImageLoader:
    """Batches of one resolution for one rank, epoch after epoch, starting at any position."""

    def __init__(
        self,
        data_path: str,
        resolution: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        shuffle_buffer: int = 1000,
        epoch_images: int | None = None,
        channels: int = 3,
        num_classes: int = 0,
        agree: Callable[[int], int] = _same_everywhere,
    ):
        self.data_path = data_path
        self.resolution = resolution
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.shuffle_buffer = shuffle_buffer
        self.epoch_images = epoch_images
        self.channels = channels
        self.num_classes = num_classes
        self.agree = agree  # rank 0's value for every rank (a collective: all ranks call it together)
        self.store = Store(dataset_root(data_path))

    def batches_per_epoch(self, manifest: PackedManifest) -> int:
        images = self.epoch_images or manifest.num_samples
        return max(1, images // (self.batch_size * self.world_size))

    def batches(self, start: DataPosition = DataPosition()) -> Iterator[Batch]:
        """Infinite batches; the first is the one an uninterrupted run would have drawn after `start`."""
        epoch, done, generation = start.epoch, start.batch, start.generation
        loader, loader_generation = None, None
        while True:
            manifest = self._manifest(generation)
            per_epoch = self.batches_per_epoch(manifest)
            if done >= per_epoch:  # the checkpoint was taken right at the end of an epoch
                epoch, done, generation = epoch + 1, 0, 0
                continue
            # The DataLoader always takes its next batch from worker 0, so workers can only skip a multiple of
            # the worker count; the remaining (fewer than `workers`) batches are decoded and dropped here.
            skipped_by_workers = done - done % max(1, self.workers)
            if loader is None or loader_generation != manifest.generation or done:
                loader, loader_generation = self._data_loader(manifest, epoch, skipped_by_workers), manifest.generation
            drop = done - skipped_by_workers
            for pixels, labels, keys, counts in islice(loader, drop, per_epoch - skipped_by_workers):
                done += 1
                position = DataPosition(epoch, done, manifest.generation)
                yield Batch(pixels.float().div_(127.5).sub_(1.0), labels, keys, position, counts)
            epoch, done, generation = epoch + 1, 0, 0

    def _manifest(self, generation: int) -> PackedManifest:
        if not generation:  # a new epoch: the newest generation rank 0 can see
            newest, _ = read_manifest(self.data_path)
            generation = self.agree(newest.generation)
        manifest, _ = read_manifest(self.data_path, generation=generation)
        if self.num_classes and manifest.class_names and len(manifest.class_names) > self.num_classes:
            log.warning(
                "new_classes_ignored", model_classes=self.num_classes, dataset_classes=len(manifest.class_names)
            )
        return manifest

    def _data_loader(self, manifest: PackedManifest, epoch: int, skip_batches: int) -> DataLoader:
        stream = ShardStream(
            [self.store.url(shard.path) for shard in manifest.shards_at(self.resolution)],
            self.batch_size,
            self.seed,
            self.rank,
            self.world_size,
            self.shuffle_buffer,
            first_epoch=epoch,
            skip_batches=skip_batches,
            channels=self.channels,
            num_classes=self.num_classes,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            prefetch_factor=2 if self.workers > 0 else None,
            # Its own generator: drawing worker seeds from the global RNG would shift the training noise
            # and make a resumed run differ from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )


def ordered_samples(data_path: str, resolution: int, channels: int = 3) -> Iterator[tuple[str, np.ndarray, int]]:
    """Every sample of the dataset once, in manifest order: (key, uint8 H x W x C, class or UNLABELLED).

    For evaluation, not training: no shuffling, no resampling, no rank split, so the same set every time."""
    manifest, store = read_manifest(data_path)
    for shard in manifest.shards_at(resolution):
        url = store.url(shard.path)
        with open_url(url) as stream:
            for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                label = int(sample["cls"]) if "cls" in sample else UNLABELLED
                yield sample["__key__"], image_to_array(_image_bytes(sample), channels), label
