"""Batches onto the training device one step ahead: uint8 from pinned memory, copied while the previous step runs.

The loader's workers make uint8 batches; the DataLoader pins them (on CUDA). `DeviceFeed.next()` hands out the
batch whose copy was started during the previous step and starts the copy of the following one on a side CUDA
stream, so the copy overlaps compute and the host never waits for it. Conversion to floats happens on the device
(`gand.models.from_uint8`). The feed also counts what the data path did since the last logging step: time spent
waiting for the loader, batches, and the loader workers' counters.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gand.data.loader import READ_COUNTERS, Batch, DataPosition
from gand.observability.report import DataCounts


@dataclass(frozen=True)
class DeviceBatch:
    images: torch.Tensor  # uint8 N x C x H x W on the training device (channels-last memory when the engine uses it)
    labels: torch.Tensor  # int64 N on the device; -1 where the dataset has no classes
    keys: list[str]
    position: DataPosition  # resume from here to draw the next batch


class DeviceFeed:
    def __init__(self, batches: Iterator[Batch], device: torch.device, channels_last: bool = False):
        self.batches = batches
        self.device = device
        self.channels_last = channels_last
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.waiting = False  # True while blocked on the loader: a stop signal may then interrupt the wait
        self._next: DeviceBatch | None = None
        self._wait_seconds = 0.0
        self._batches = 0
        self._counts = dict.fromkeys(READ_COUNTERS, 0)

    def next(self) -> DeviceBatch:
        """The next batch, on the device; the one after it starts copying now."""
        current = self._next if self._next is not None else self._fetch()
        if self.copy_stream is not None:
            # The compute stream waits for the copy (on the GPU, not the host), and the caching allocator must not
            # hand the memory to the copy stream again while compute still reads it.
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
            current.images.record_stream(torch.cuda.current_stream(self.device))
            current.labels.record_stream(torch.cuda.current_stream(self.device))
        self._next = self._fetch()
        return current

    def _fetch(self) -> DeviceBatch:
        started = time.perf_counter()
        self.waiting = True
        try:
            batch = next(self.batches)
        finally:
            self.waiting = False
        self._wait_seconds += time.perf_counter() - started
        self._batches += 1
        for name, count in batch.counts.items():
            self._counts[name] += count
        stream = torch.cuda.stream(self.copy_stream) if self.copy_stream is not None else contextlib.nullcontext()
        with stream:  # the layout change too: it reads the copy, so it runs on the copy's stream
            images = batch.images.to(self.device, non_blocking=True)
            labels = batch.labels.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        return DeviceBatch(images, labels, batch.keys, batch.position)

    def counts_since_last_read(self) -> DataCounts:
        """Waiting time, batches and loader counters since the previous call (host numbers, no device sync)."""
        counts = DataCounts(
            wait_seconds=self._wait_seconds,
            batches=self._batches,
            shards_opened=self._counts["shards_opened"],
            skipped={name.removeprefix("skipped_"): n for name, n in self._counts.items() if name != "shards_opened"},
        )
        self._wait_seconds, self._batches, self._counts = 0.0, 0, dict.fromkeys(READ_COUNTERS, 0)
        return counts
