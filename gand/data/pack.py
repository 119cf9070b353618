"""`gand pack`: image folder -> WebDataset shards at every resolution + manifest.json.

reader (scan the source, read bytes) -> transform (decode once, cut, resize to each resolution, encode PNG, in
worker processes) -> writer (tar shards published atomically, then the manifest, in source order).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from typing import IO

import structlog

from gand import __version__
from gand.config import MAX_RESOLUTION, MIN_RESOLUTION
from gand.data.images import ImageRejected, decode_rgb, encode_png, resize_square
from gand.data.manifest import MANIFEST_NAME, PackedManifest, ShardInfo
from gand.errors import ConfigError, DataError
from gand.storage import Store, redact

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LOGGED_SKIPS_PER_REASON = 20  # name the first few files per reason; the manifest counts them all
log = structlog.get_logger("gand.pack")


@dataclass(frozen=True)
class PackOptions:
    resolutions: tuple[int, ...]
    shard_size: int = 1000
    min_side: int = 0  # drop images whose shortest side is below this (the 100x100 scrape outliers)
    upscale: bool = False  # allow sources smaller than the largest resolution
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    overwrite: bool = False

    def __post_init__(self) -> None:
        bad = [r for r in self.resolutions if not MIN_RESOLUTION <= r <= MAX_RESOLUTION]
        if not self.resolutions or bad:
            raise ConfigError(
                f"--resolutions: {bad or 'none given'} not supported; allowed: {MIN_RESOLUTION} to {MAX_RESOLUTION} "
                "px, e.g. 28,32,64,128,256"
            )
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1 (got {self.shard_size})")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1 (got {self.workers})")


@dataclass(frozen=True)
class SourceItem:
    relpath: str
    label: int | None


@dataclass(frozen=True)
class PackedSample:
    key: str
    pngs: dict[int, bytes]
    label: int | None
    meta: bytes


@dataclass(frozen=True)
class Skipped:
    relpath: str
    reason: str
    detail: str


def pack(src: str, dest: str, options: PackOptions) -> PackedManifest:
    """Pack every usable image under `src` into shards under `dest`; returns the published manifest."""
    dest_store = Store(dest)
    if dest_store.exists(MANIFEST_NAME) and not options.overwrite:
        raise ConfigError(f"{redact(dest)} already holds a packed dataset; pass --overwrite to replace it")
    items, class_names, skipped = scan_source(src)
    if not items:
        raise DataError(f"no images found under {redact(src)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    files_seen = len(items) + sum(skipped.values())
    log.info("pack_start", source=redact(src), dest=redact(dest), images=len(items), classes=class_names)

    writer = ShardSetWriter(dest_store, options.resolutions, options.shard_size)
    progress = Progress(total=len(items))
    for result in _transform_all(src, items, class_names, options):
        if isinstance(result, Skipped):
            skipped[result.reason] += 1
            if skipped[result.reason] <= LOGGED_SKIPS_PER_REASON:
                log.warning("image_skipped", file=result.relpath, reason=result.reason, detail=result.detail)
        else:
            writer.add(result)
        progress.step(writer.samples_written, skipped)
    shards = writer.close()

    manifest = PackedManifest(
        gand_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=redact(src),
        resolutions=sorted(options.resolutions),
        class_names=class_names,
        num_samples=writer.samples_written,
        shards={str(res): infos for res, infos in shards.items()},
        files_seen=files_seen,
        skipped=dict(sorted(skipped.items())),
        options={
            "shard_size": options.shard_size,
            "min_side": options.min_side,
            "upscale": options.upscale,
            "resize": "center_crop",
            "filter": "lanczos",
            "format": "png",
        },
    )
    dest_store.write_bytes(MANIFEST_NAME, manifest.model_dump_json(indent=2).encode())
    _remove_unlisted_shards(dest_store, manifest)
    log.info("pack_done", images=manifest.num_samples, skipped=manifest.skipped, seconds=progress.elapsed())
    return manifest


# -- reader --------------------------------------------------------------------------------------------------
def scan_source(src: str) -> tuple[list[SourceItem], list[str] | None, Counter[str]]:
    """List images in a folder; first-level sub-folder names are class labels when there are any."""
    store = Store(src)
    skipped: Counter[str] = Counter()
    if not store.exists(""):
        raise DataError(f"source {redact(src)} does not exist")
    images = []
    for relpath in store.walk_files():
        if any(part.startswith(".") for part in relpath.split("/")):
            continue  # hidden files and folders (.DS_Store, stamps, .git) are not part of a collection
        if relpath.lower().endswith(IMAGE_EXTENSIONS):
            images.append(relpath)
        else:
            skipped["not_an_image"] += 1
    folders = sorted({path.split("/")[0] for path in images if "/" in path})
    if not folders:
        return [SourceItem(path, None) for path in images], None, skipped
    label_of = {name: index for index, name in enumerate(folders)}
    items = []
    for path in images:
        if "/" in path:
            items.append(SourceItem(path, label_of[path.split("/")[0]]))
        else:
            skipped["no_label"] += 1  # beside the class folders, with no class of its own
    return items, folders, skipped


# -- transform -----------------------------------------------------------------------------------------------
_worker_store: Store | None = None
_worker_options: PackOptions | None = None
_worker_class_names: list[str] | None = None


def _init_worker(src: str, options: PackOptions, class_names: list[str] | None) -> None:
    global _worker_store, _worker_options, _worker_class_names
    _worker_store, _worker_options, _worker_class_names = Store(src), options, class_names


def _transform_all(
    src: str, items: list[SourceItem], class_names: list[str] | None, options: PackOptions
) -> Iterator[PackedSample | Skipped]:
    init_args = (src, options, class_names)
    if options.workers == 1:
        _init_worker(*init_args)
        yield from map(transform_item, items)
        return
    # spawn, not fork: the parent may hold threads (metrics server, storage clients) that fork would copy badly
    with get_context("spawn").Pool(options.workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(transform_item, items, chunksize=8)  # ordered: shards follow source order


def transform_item(item: SourceItem) -> PackedSample | Skipped:
    assert _worker_store is not None and _worker_options is not None
    options = _worker_options
    try:
        data = _worker_store.read_bytes(item.relpath)
    except OSError as err:
        return Skipped(item.relpath, "read_error", str(err))
    try:
        decoded = decode_rgb(data)
    except ImageRejected as rejected:
        return Skipped(item.relpath, rejected.reason, rejected.detail)
    width, height = decoded.original_width, decoded.original_height
    shortest = min(width, height)
    largest = max(options.resolutions)
    if shortest < options.min_side:
        return Skipped(
            item.relpath, "too_small", f"{width}x{height}: shortest side below --min-side {options.min_side}"
        )
    if shortest < largest and not options.upscale:
        return Skipped(item.relpath, "too_small", f"{width}x{height}: would be upscaled to {largest} px")
    pngs = {res: encode_png(resize_square(decoded.image, res)) for res in sorted(options.resolutions)}
    meta = {"source": item.relpath, "width": width, "height": height, "format": decoded.source_format}
    if item.label is not None and _worker_class_names is not None:
        meta["class_name"] = _worker_class_names[item.label]
    return PackedSample(sample_key(item.relpath), pngs, item.label, json.dumps(meta, sort_keys=True).encode())


def sample_key(relpath: str) -> str:
    """Stable across runs and machines, and free of dots (WebDataset splits key from extension at the dot)."""
    return hashlib.sha1(relpath.encode()).hexdigest()[:16]


# -- writer --------------------------------------------------------------------------------------------------
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


class ShardSetWriter:
    """One tar shard per resolution at a time, the same samples in the same order in each; atomic publish."""

    def __init__(self, store: Store, resolutions: tuple[int, ...], shard_size: int):
        self.store = store
        self.resolutions = tuple(sorted(resolutions))
        self.shard_size = shard_size
        self.samples_written = 0
        self.shards: dict[int, list[ShardInfo]] = {res: [] for res in self.resolutions}
        self._open: ExitStack | None = None
        self._tars: dict[int, tuple[tarfile.TarFile, _HashingWriter, str]] = {}
        self._in_shard = 0

    def add(self, sample: PackedSample) -> None:
        if self._open is None:
            self._start_shard()
        for res, (tar, _, _) in self._tars.items():
            _add_member(tar, f"{sample.key}.png", sample.pngs[res])
            if sample.label is not None:
                _add_member(tar, f"{sample.key}.cls", str(sample.label).encode())
            _add_member(tar, f"{sample.key}.json", sample.meta)
        self._in_shard += 1
        self.samples_written += 1
        if self._in_shard == self.shard_size:
            self._finish_shard()

    def close(self) -> dict[int, list[ShardInfo]]:
        if self._open is not None:
            self._finish_shard()
        return self.shards

    def _start_shard(self) -> None:
        index = len(self.shards[self.resolutions[0]])
        self._open = ExitStack()
        for res in self.resolutions:
            relpath = posixpath.join(str(res), f"shard-{index:06d}.tar")
            handle = self._open.enter_context(self.store.open_atomic(relpath))
            hashing = _HashingWriter(handle)
            # Closed by the ExitStack (after the explicit close in _finish_shard) if anything goes wrong.
            tar = tarfile.open(fileobj=hashing, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            self._open.enter_context(tar)
            self._tars[res] = (tar, hashing, relpath)

    def _finish_shard(self) -> None:
        assert self._open is not None
        for res, (tar, hashing, relpath) in self._tars.items():
            tar.close()  # writes the end-of-archive blocks through the hashing writer
            self.shards[res].append(
                ShardInfo(
                    path=relpath,
                    samples=self._in_shard,
                    bytes=hashing.bytes_written,
                    sha256=hashing.sha256.hexdigest(),
                )
            )
        self._open.close()  # publishes every resolution's shard
        self._open, self._tars, self._in_shard = None, {}, 0


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # reproducible shards: the same input packs to the same bytes
    tar.addfile(info, io.BytesIO(data))


def _remove_unlisted_shards(store: Store, manifest: PackedManifest) -> None:
    """After an --overwrite, shards of the previous, larger dataset are no longer listed: delete them."""
    listed = {shard.path for shards in manifest.shards.values() for shard in shards}
    for relpath in store.walk_files():
        top = relpath.split("/")[0]
        if top.isdigit() and relpath.endswith(".tar") and relpath not in listed:
            store.delete_tree(relpath)


class Progress:
    """A log line every few seconds with the rate, so long packs show they are alive."""

    def __init__(self, total: int, every_seconds: float = 5.0):
        self.total = total
        self.every_seconds = every_seconds
        self.started = self.last = time.monotonic()
        self.done = 0

    def step(self, written: int, skipped: Counter[str]) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_seconds:
            self.last = now
            rate = self.done / (now - self.started)
            log.info(
                "pack_progress",
                done=self.done,
                total=self.total,
                packed=written,
                skipped=sum(skipped.values()),
                images_per_second=round(rate, 1),
                eta_seconds=round((self.total - self.done) / rate) if rate else None,
            )

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 2)
