"""Stream packed shards into uint8 training batches: one long-lived stream per rank, every image equally likely.

The order. All images of a manifest generation form one sequence per pass, a fresh random permutation each pass
(seeded by the run's seed, the generation and the pass number). The infinite concatenation of passes is cut into
chunks of ceil(N / ranks) images; rank r takes chunks r, r + ranks, r + 2 ranks, ... So every pass hands each image
to exactly one rank, whatever the shard sizes: sampling is uniform per image, and an epoch is a position in this
stream, not a restart. Batch b of a rank holds its draws [b x batch_size, (b + 1) x batch_size); the loader worker
that makes it reads those samples by offset from an index of each shard's members (`gand.data.tarindex`), so which
worker makes a batch, and how many workers there are, changes nothing, a permutation costs no extra reading, and no
shuffle buffer is filled or thrown away.

The stream is a pure function of (seed, generation, rank, position): resuming at batch k of a generation's stream
jumps straight there, and gives back exactly the batches an uninterrupted run saw, with any number of loader
workers (a sample that cannot be used is replaced by a draw seeded by its position, so replacements repeat too).
At every epoch boundary the loader looks for a newer manifest generation (the packing daemon may have added
shards); all ranks use the generation rank 0 saw, and only a new generation starts a new stream.

Batches stay uint8 (N x C x H x W, channels-last in memory) until the training device converts them; workers
ignore SIGINT/SIGTERM so that a signal to the process group reaches the trainer, which decides.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import itertools
import os
import signal
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data import _utils as data_utils

from gand.data.images import IMAGE_EXTENSIONS, decode_member
from gand.data.manifest import PackedManifest, dataset_root, read_manifest
from gand.data.tarindex import SampleReader, ShardIndex, index_shard, local_shard, verify_shard
from gand.errors import DataError
from gand.storage import Store, redact

log = structlog.get_logger("gand.loader")

# A slot gives up (a data error, not an endless loop) after this many unusable draws in a row.
MAX_UNUSABLE_IN_A_ROW = 1000


@dataclass(frozen=True)
class DataPosition:
    """Where a rank's data stream stands: batches drawn in the epoch, the manifest generation it draws from, and
    how many batches this rank has drawn from that generation's stream."""

    epoch: int = 0
    batch: int = 0
    generation: int = 0  # 0: not chosen yet (take the newest)
    stream_batch: int = 0


# What a loader worker counts between two batches; the same keys always, so ranks can add them up.
READ_COUNTERS = ("shards_opened", "skipped_unknown_class", "skipped_undecodable")


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # uint8 N x C x H x W (channels-last memory), pinned when training on CUDA
    labels: torch.Tensor  # int64 N; UNLABELLED where the dataset has no classes
    keys: list[str] = field(repr=False)
    position: DataPosition  # after this batch: resume from here to draw the next one
    counts: dict[str, int] = field(default_factory=dict)  # READ_COUNTERS since the previous batch of this worker

    @property
    def epoch(self) -> int:
        return self.position.epoch


class SampleOrder:
    """Which image slot `slot` of `slots` draws at its j-th draw (module docstring: passes, chunks, slots)."""

    def __init__(self, shard_sizes: Sequence[int], seed: int, generation: int, slots: int):
        self.total = int(sum(shard_sizes))
        if self.total == 0:
            raise DataError("no readable samples in the dataset's shards at this resolution")
        self.starts = [0, *np.cumsum(shard_sizes).tolist()]
        self.slots = slots
        self.chunk = max(1, -(-self.total // slots))
        self.seed = seed
        self.generation = generation
        self._passes: dict[int, np.ndarray] = {}

    def draw(self, slot: int, j: int) -> int:
        """The global sample index of slot's j-th draw."""
        chunk, within = divmod(j, self.chunk)
        position = (chunk * self.slots + slot) * self.chunk + within
        number, offset = divmod(position, self.total)
        return int(self._permutation(number)[offset])

    def replacement(self, slot: int, j: int, attempt: int) -> int:
        """A stand-in for an unusable draw: uniform over all images, seeded by where it is needed."""
        rng = np.random.default_rng([self.seed, self.generation, slot, j, attempt, 0x5EED])
        return int(rng.integers(self.total))

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (shard number, sample within the shard)."""
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def _permutation(self, number: int) -> np.ndarray:
        found = self._passes.get(number)
        if found is None:
            if len(self._passes) > 1:  # a slot only ever needs the pass it is in and the next one
                self._passes.pop(min(self._passes))
            rng = np.random.default_rng([self.seed, self.generation, number])
            found = self._passes[number] = rng.permutation(self.total)
        return found


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to make its share of one rank's batches (copied into every worker)."""

    shards: list[ShardIndex]
    batch_size: int
    seed: int
    generation: int
    rank: int
    world_size: int
    channels: int
    num_classes: int
    first_batch: int  # the rank's stream starts at this batch (a resume)


class RankStream(IterableDataset):
    """One rank's infinite batches from batch `first_batch` on. The DataLoader takes batches from workers 0, 1, ...
    in turn, so worker w makes batches first_batch + w, first_batch + w + workers, ..."""

    def __init__(self, spec: StreamSpec):
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[tuple]:
        spec = self.spec
        worker, workers = _worker_slot()
        order = SampleOrder([len(shard) for shard in spec.shards], spec.seed, spec.generation, spec.world_size)
        maker = _BatchMaker(spec, order, spec.rank)
        for index in itertools.count(spec.first_batch + worker, workers):
            yield maker.batch(index)


class _BatchMaker:
    """Reads, decodes and stacks one slot's batches."""

    def __init__(self, spec: StreamSpec, order: SampleOrder, slot: int):
        self.spec, self.order, self.slot = spec, order, slot
        self.reader = SampleReader()
        self.counts = dict.fromkeys(READ_COUNTERS, 0)
        self.reasons: dict[str, int] = {}

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[str], dict[str, int], int]:
        """The rank's batch `index`: its draws [index x batch_size, (index + 1) x batch_size)."""
        size = self.spec.batch_size
        pixels: np.ndarray | None = None
        labels = np.empty(size, dtype=np.int64)
        keys: list[str] = []
        for i in range(size):
            array, label, key = self._usable(index * size + i)
            if pixels is None:
                pixels = np.empty((size, *array.shape), dtype=np.uint8)
            pixels[i] = array
            labels[i] = label
            keys.append(key)
        opened, self.reader.opened = self.reader.opened, 0
        self.counts["shards_opened"] += opened
        counts, self.counts = self.counts, dict.fromkeys(READ_COUNTERS, 0)
        # N x H x W x C in memory, seen as N x C x H x W: channels-last, the layout convolutions on GPUs prefer.
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        return images, torch.from_numpy(labels), keys, counts, index

    def _usable(self, j: int) -> tuple[np.ndarray, int, str]:
        """The slot's j-th draw, or its seeded stand-ins until one can be used."""
        index = self.order.draw(self.slot, j)
        for attempt in range(1, MAX_UNUSABLE_IN_A_ROW + 1):
            found = self._read(index)
            if found is not None:
                return found
            index = self.order.replacement(self.slot, j, attempt)
        raise DataError(
            f"{MAX_UNUSABLE_IN_A_ROW} draws in a row found no usable sample in the dataset (generation "
            f"{self.spec.generation}); reasons: {self.reasons}. Check the shards with `gand pack` again, or the "
            "classes the model was built for"
        )

    def _read(self, index: int) -> tuple[np.ndarray, int, str] | None:
        shard_number, sample = self.order.locate(index)
        shard = self.spec.shards[shard_number]
        label = int(shard.labels[sample])
        # Classes the daemon added after the model was built cannot be learned by it, and a sample whose class is
        # missing (UNLABELLED) cannot serve a conditional model: leave them out.
        if self.spec.num_classes and not 0 <= label < self.spec.num_classes:
            return self._skip("skipped_unknown_class", "unknown_class")
        kind = int(shard.image_kinds[sample])
        try:
            if kind < 0:
                raise ValueError("the sample has no image member")
            array = decode_member(IMAGE_EXTENSIONS[kind], self.reader.image_bytes(shard, sample), self.spec.channels)
        except (OSError, ValueError, KeyError, SyntaxError) as err:  # PIL raises all of these for bad data
            log.warning(
                "sample_skipped", key=shard.key(sample), shard=redact(shard.path), reason="undecodable", error=str(err)
            )
            return self._skip("skipped_undecodable", "undecodable")
        return array, label, shard.key(sample)

    def _skip(self, counter: str, reason: str) -> None:
        self.counts[counter] += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        return None


def _worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _quiet_worker(_worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the trainer: a signal to the whole process group (systemd, Slurm,
    `timeout`, Ctrl-C) must not kill a worker before the trainer has saved. Workers end when the trainer does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# DataLoader iterators whose worker processes are alive. Workers ignore SIGTERM, so multiprocessing's own exit
# hook (terminate, then join) could wait for them for ever: gand's hook, registered later and so run first, stops them.
_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


def _stop_workers(iterator) -> None:
    """Ask the iterator's workers to finish (DataLoader's own shutdown), then SIGKILL any that did not: a worker
    blocked in I/O ignores both the request and SIGTERM. DataLoader waits 5 s for each worker in turn; a stop after
    a signal has a grace period to keep, so each gets half a second here (workers only read: killing one loses
    nothing)."""
    workers = list(getattr(iterator, "_workers", []))
    patience = data_utils.MP_STATUS_CHECK_INTERVAL
    data_utils.MP_STATUS_CHECK_INTERVAL = 0.5
    try:
        iterator._shutdown_workers()
    except Exception:  # a half-started iterator: the kill below still ends its workers
        pass
    finally:
        data_utils.MP_STATUS_CHECK_INTERVAL = patience
    for worker in workers:
        if worker.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            worker.join(timeout=5)
    _LIVE_ITERATORS.discard(iterator)


@atexit.register
def stop_all_workers() -> None:
    for iterator in list(_LIVE_ITERATORS):
        _stop_workers(iterator)


def _stopping_workers(loader: DataLoader) -> Iterator[tuple]:
    """The loader's batches; its workers stop when this generator is closed."""
    iterator = iter(loader)
    if loader.num_workers > 0:
        _LIVE_ITERATORS.add(iterator)
    try:
        yield from iterator
    finally:
        _stop_workers(iterator)


def _same_everywhere(value: int) -> int:
    return value


class ImageLoader:
    """Batches of one resolution for one rank, epoch after epoch, starting at any position."""

    def __init__(  # noqa: PLR0913 (one loader's settings, passed by name)
        self,
        data_path: str,
        resolution: int,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        epoch_images: int | None = None,
        channels: int = 3,
        num_classes: int = 0,
        agree: Callable[[int], int] = _same_everywhere,
        pin_memory: bool = False,
        min_usable_share: float = 0.9,
    ):
        self.data_path = data_path
        self.resolution = resolution
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.epoch_images = epoch_images
        self.channels = channels
        self.num_classes = num_classes
        self.agree = agree  # rank 0's value for every rank (a collective: all ranks call it together)
        self.pin_memory = pin_memory
        self.store = Store(dataset_root(data_path))
        self._indexes: dict[tuple[str, str], ShardIndex | None] = {}  # by shard path and SHA-256 (None: damaged)
        self.min_usable_share = min_usable_share  # below it (share of the manifest's images readable): DataError
        self.damaged_shards: dict[str, str] = {}  # the current generation's shards left out: path -> why
        self._damage: dict[tuple[str, str], str] = {}  # by shard path and SHA-256 -> why

    def batches_per_epoch(self, manifest: PackedManifest) -> int:
        images = self.epoch_images or manifest.num_samples
        return max(1, images // (self.batch_size * self.world_size))

    def batches(self, start: DataPosition = DataPosition()) -> Iterator[Batch]:
        """Infinite batches; the first is the one an uninterrupted run would have drawn after `start`."""
        epoch, done, generation = start.epoch, start.batch, start.generation
        drawn, drawn_generation = start.stream_batch, start.generation  # batches drawn from that generation
        stream, stream_generation = None, None
        while True:
            manifest = self._manifest(generation)
            per_epoch = self.batches_per_epoch(manifest)
            if manifest.generation != drawn_generation:  # a new generation: a new stream from its start
                drawn, drawn_generation = 0, manifest.generation
            if done < per_epoch:
                if stream is None or stream_generation != manifest.generation:
                    if stream is not None:
                        stream.close()  # the old generation's workers stop before new ones start
                    stream, stream_generation = self._stream(manifest, drawn), manifest.generation
                while done < per_epoch:
                    images, labels, keys, counts, index = next(stream)
                    done, drawn = done + 1, drawn + 1
                    if index != drawn - 1:  # the worker round-robin and the resume arithmetic disagree: a bug
                        raise RuntimeError(f"loader stream out of order: batch {index}, expected {drawn - 1}")
                    yield Batch(images, labels, keys, DataPosition(epoch, done, manifest.generation, drawn), counts)
            epoch, done, generation = epoch + 1, 0, 0

    def _stream(self, manifest: PackedManifest, first_batch: int) -> Iterator[tuple]:
        spec = StreamSpec(
            shards=self._shard_indexes(manifest),
            batch_size=self.batch_size,
            seed=self.seed,
            generation=manifest.generation,
            rank=self.rank,
            world_size=self.world_size,
            channels=self.channels,
            num_classes=self.num_classes,
            first_batch=first_batch,
        )
        loader = DataLoader(
            RankStream(spec),
            batch_size=None,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
            pin_memory=self.pin_memory,
            worker_init_fn=_quiet_worker if self.workers > 0 else None,
            # Its own generator: drawing worker seeds from the global RNG would shift the training noise
            # and make a resumed run differ from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )
        return _stopping_workers(loader)

    def _shard_indexes(self, manifest: PackedManifest) -> list[ShardIndex]:
        """The index of every shard at this resolution that is what the manifest promises (size and SHA-256);
        damaged ones are left out, named and counted. DataError when what is left is below min_usable_share."""
        indexes = []
        promised = 0
        self.damaged_shards = {}  # this generation's: a shard packed again under the same path is judged anew
        for shard in manifest.shards_at(self.resolution):
            promised += shard.samples
            key = (shard.path, shard.sha256)
            if key not in self._indexes:
                self._indexes[key] = self._index(shard)
            if self._indexes[key] is not None:
                indexes.append(self._indexes[key])
            else:
                self.damaged_shards[shard.path] = self._damage[key]
        usable = sum(len(index) for index in indexes)
        if promised and usable < self.min_usable_share * promised:
            damaged = "; ".join(f"{path}: {why}" for path, why in list(self.damaged_shards.items())[:3])
            raise DataError(
                f"only {usable} of the {promised} images of {redact(self.data_path)} at {self.resolution} px can be "
                f"read (data.min_usable_share is {self.min_usable_share:g}): {damaged or 'shards incomplete'}. "
                "Pack the dataset again into a new folder (or `gand pack --overwrite`), or lower data.min_usable_share"
            )
        return indexes

    def _index(self, shard) -> ShardIndex | None:
        url = self.store.url(shard.path)
        path = local_shard(url, shard.sha256)
        try:
            problem = verify_shard(path, shard.bytes, shard.sha256)
        except OSError as err:  # unreadable is not damaged: say so and stop, rather than train on less
            raise DataError(f"cannot read shard {redact(url)}: {err}") from err
        if problem is not None:
            self._damage[(shard.path, shard.sha256)] = problem
            log.error(
                "shard_damaged", shard=redact(url), reason=problem, images=shard.samples, effect="left out of training"
            )
            return None
        index = index_shard(path)
        if len(index) != shard.samples or not index.complete:
            log.warning(
                "shard_incomplete",
                shard=redact(url),
                expected=shard.samples,
                readable=len(index),
                effect="only its readable samples are drawn",
            )
        return index

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


def ordered_samples(data_path: str, resolution: int, channels: int = 3) -> Iterator[tuple[str, np.ndarray, int]]:
    """Every sample of the dataset once, in manifest order: (key, uint8 H x W x C, class or UNLABELLED).

    For evaluation, not training: no shuffling, no resampling, no rank split, so the same set every time. Read
    through the same shard index as training, so both agree on what a sample is."""
    manifest, store = read_manifest(data_path)
    reader = SampleReader()
    try:
        for shard in manifest.shards_at(resolution):
            index = index_shard(local_shard(store.url(shard.path), shard.sha256))
            for sample in range(len(index)):
                kind = int(index.image_kinds[sample])
                if kind < 0:
                    raise DataError(f"sample {index.key(sample)} in {redact(store.url(shard.path))} has no image")
                pixels = decode_member(IMAGE_EXTENSIONS[kind], reader.image_bytes(index, sample), channels)
                yield index.key(sample), pixels, int(index.labels[sample])
    finally:
        reader.close()
