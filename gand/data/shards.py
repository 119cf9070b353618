"""Writing parts: one tar shard per resolution (same samples, same order), published atomically, then the record.

A part closes when it holds `shard_size` samples (and when the packer flushes). Skip records ride along with the
next part to be published, so every source file is accounted for exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import posixpath
import tarfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO

from gand.data.manifest import PartRecord, PartSample, PartSkip, ShardInfo, now_iso, part_path
from gand.storage import Store


@dataclass(frozen=True)
class EncodedSample:
    key: str
    images: dict[int, bytes]  # resolution -> encoded image
    extension: str  # the image member's: png | webp | jpg | npy
    label_index: int | None
    meta: bytes  # the <key>.json member
    record: PartSample
    frames: int = 1  # frames in the source file; only the first was packed


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: IO[bytes]):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes_written += len(data)
        return self.target.write(data)


class PartWriter:
    """Parts numbered from `first_index`; calls `on_part(record)` after each part is published."""

    def __init__(
        self,
        store: Store,
        first_index: int,
        resolutions: tuple[int, ...],
        shard_size: int,
        class_names: Callable[[], list[str] | None],
        on_part: Callable[[PartRecord], None],
    ):
        self.store = store
        self.index = first_index
        self.resolutions = tuple(sorted(resolutions))
        self.shard_size = shard_size
        self.class_names = class_names
        self.on_part = on_part
        self._open: ExitStack | None = None
        self._tars: dict[int, tuple[tarfile.TarFile, _HashingWriter, str]] = {}
        self._samples: list[PartSample] = []
        self._skips: list[PartSkip] = []

    def add_sample(self, sample: EncodedSample) -> None:
        if self._open is None:
            self._start_tars()
        for res, (tar, _, _) in self._tars.items():
            _add_member(tar, f"{sample.key}.{sample.extension}", sample.images[res])
            if sample.label_index is not None:
                _add_member(tar, f"{sample.key}.cls", str(sample.label_index).encode())
            _add_member(tar, f"{sample.key}.json", sample.meta)
        self._samples.append(sample.record)
        if len(self._samples) == self.shard_size:
            self.publish()

    def add_skip(self, source: str, reason: str) -> None:
        self._skips.append(PartSkip(source=source, reason=reason))

    @property
    def pending(self) -> bool:
        return bool(self._samples or self._skips)

    def publish(self) -> PartRecord | None:
        """Close and publish the open part (shards, then the record); None when there is nothing to publish."""
        if not self.pending:
            return None
        shards = {}
        if self._open is not None:
            for res, (tar, hashing, relpath) in self._tars.items():
                tar.close()  # writes the end-of-archive blocks through the hashing writer
                shards[str(res)] = ShardInfo(
                    path=relpath,
                    samples=len(self._samples),
                    bytes=hashing.bytes_written,
                    sha256=hashing.sha256.hexdigest(),
                )
            self._open.close()  # publishes every resolution's tar (rename / single put)
        record = PartRecord(
            index=self.index,
            created_at=now_iso(),
            shards=shards,
            samples=self._samples,
            skipped=self._skips,
            class_names=self.class_names(),
        )
        self.store.write_bytes(part_path(self.index), record.model_dump_json().encode())
        self._open, self._tars, self._samples, self._skips = None, {}, [], []
        self.index += 1
        self.on_part(record)
        return record

    def abort(self, error: BaseException) -> None:
        """Drop the open part after `error` (a full disk, a stop): its staged shards are deleted, nothing of it is
        published, and the next pack packs its images again."""
        stack, self._open, self._tars = self._open, None, {}
        if stack is not None:
            # The tar streams close without their end blocks; a second failure while closing changes nothing.
            with contextlib.suppress(Exception):
                stack.__exit__(type(error), error, error.__traceback__)

    def _start_tars(self) -> None:
        self._open = ExitStack()
        for res in self.resolutions:
            relpath = posixpath.join(str(res), f"shard-{self.index:06d}.tar")
            handle = self._open.enter_context(self.store.open_atomic(relpath))
            hashing = _HashingWriter(handle)
            # Closed explicitly in publish(), or by the ExitStack if the part is aborted.
            tar = tarfile.open(fileobj=hashing, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            self._open.enter_context(tar)
            self._tars[res] = (tar, hashing, relpath)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # reproducible shards: the same input packs to the same bytes
    tar.addfile(info, io.BytesIO(data))
