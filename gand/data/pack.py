"""`gand pack` / the daemon's poll: source images -> parts (WebDataset shards at every resolution) -> generation.

reader (scan the source; skip what earlier runs already recorded) -> transform (worker processes: read, check
the header, decode once, hash, resize to every resolution, encode) -> decide (in source order, in this process:
duplicates) -> write (parts published atomically, then a new manifest generation).

Incremental and crash-safe: everything already recorded in a published part is skipped, so running the same
command again after a crash, or with new images in the source, packs exactly what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import posixpath
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context

import structlog

from gand.config import MAX_RESOLUTION, MIN_RESOLUTION
from gand.data.dedup import DuplicateFilter
from gand.data.images import (
    OUTPUT_EXTENSIONS,
    RESIZE_MODES,
    ImageChecks,
    ImageRejected,
    decode_rgb,
    encode,
    family_names,
    perceptual_hash,
    resize_all,
)
from gand.data.manifest import (
    MANIFEST_NAME,
    PackedManifest,
    PartRecord,
    PartSample,
    build_manifest,
    latest_generation,
    part_path,
    publish_generation,
    read_parts,
    read_record,
)
from gand.data.shards import EncodedSample, PartWriter
from gand.data.sources import LABEL_MODES, SourceItem, scan_source
from gand.errors import ConfigError, DataError
from gand.processes import die_with_parent
from gand.storage import Store, read_url, redact

LOGGED_SKIPS_PER_REASON = 10  # name the first few files per reason; the records count them all
# A damaged manifest.json loses nothing: the part records are the dataset, and a pack lists them again.
MANIFEST_REMEDY = (
    "delete it and run the same command again (the parts/ records rebuild it), or start over with --overwrite"
)
log = structlog.get_logger("gand.pack")


@dataclass(frozen=True)
class PackOptions:
    resolutions: tuple[int, ...]
    shard_size: int = 1000
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    overwrite: bool = False
    # filters
    min_side: int = 0  # drop images whose shortest side is below this (the 100x100 scrape outliers)
    max_aspect: float | None = None  # drop images whose long side exceeds this many times the short side
    max_pixels: int = 178_956_970  # decompression-bomb guard, checked from the header
    formats: tuple[str, ...] | None = None  # allowed source format families (jpeg, png, webp, gif, tiff, ...)
    exact_duplicates: bool = True
    near_duplicates: int | None = None  # perceptual-hash Hamming distance that counts as a duplicate; None = off
    exclude: tuple[str, ...] = ()  # file-name patterns to leave out (e.g. the Rice report's scroll paintings)
    # shaping
    upscale: bool = False  # allow sources smaller than the largest resolution
    resize: str = "center_crop"
    output: str = "png"  # png (lossless) | webp (lossless) | jpg | raw (uncompressed uint8 .npy: nothing to decode)
    quality: int = 95  # jpg only
    draft: bool = True  # JPEG draft decoding at reduced scale where it keeps quality
    # labels
    labels: str = "auto"  # folder sources: auto | folder | none
    label_column: str | None = None  # list sources: the column holding the class name
    # publication
    generation_seconds: float = 30.0  # publish a new generation at most this often while packing

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
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"--resize: {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.output not in OUTPUT_EXTENSIONS:
            raise ConfigError(f"--output-format: {self.output!r} is not one of {', '.join(OUTPUT_EXTENSIONS)}")
        if self.output == "jpg" and not 95 <= self.quality <= 100:
            raise ConfigError(f"--quality: JPEG output needs 95 to 100 to stay near-lossless (got {self.quality})")
        if self.near_duplicates is not None and not 0 <= self.near_duplicates <= 16:
            raise ConfigError(f"--near-duplicates: a Hamming distance of 0 to 16 bits (got {self.near_duplicates})")
        if self.max_aspect is not None and self.max_aspect < 1:
            raise ConfigError(f"--max-aspect must be at least 1 (got {self.max_aspect})")
        if self.formats:
            try:
                family_names(self.formats)
            except ValueError as err:
                raise ConfigError(f"--formats: {err}") from None
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"--labels: {self.labels!r} is not one of {', '.join(LABEL_MODES)}")

    @property
    def layout(self) -> dict[str, object]:
        """What every part of one dataset must share; a second run with a different layout is refused."""
        return {"resolutions": sorted(self.resolutions), "resize": self.resize, "format": self.output}

    def checks(self) -> ImageChecks:
        largest = max(self.resolutions)
        return ImageChecks(
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            max_aspect=self.max_aspect,
            formats=family_names(self.formats) if self.formats else None,
            needed_side=0 if self.upscale or self.resize == "none" else largest,
            side_rule="long" if self.resize == "keep_ratio" else "short",
        )


@dataclass
class PackReport:
    """What one run (or daemon poll) did, and the dataset it left."""

    files: int = 0  # new source files considered
    packed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    parts: int = 0
    seconds: float = 0.0
    stopped: bool = False
    first_frame_only: int = 0  # packed files with several frames (GIF, APNG, MPO, TIFF pages): the first was used
    manifest: PackedManifest | None = None

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0


# -- the run ---------------------------------------------------------------------------------------------------
def pack(
    src: str,
    dest: str,
    options: PackOptions,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int, PackReport], None] | None = None,
    require_images: bool = True,
) -> PackReport:
    """Pack what `src` has that `dest` does not; publish a new generation if anything changed."""
    started = time.perf_counter()
    store = Store(dest)
    check_destination(src, dest, store, options.overwrite)  # before anything is written or deleted there
    if options.overwrite:
        _wipe(store)
    state = DatasetState.load(store, src, options)
    scan = scan_source(src, options.labels, options.label_column, options.exclude)
    class_names = state.merge_labels(scan.labelled, sorted({i.label for i in scan.items if i.label is not None}))
    new_items = [item for item in scan.items if item.source_id not in state.done]
    new_skips = [skip for skip in scan.skips if skip.source_id not in state.done]
    if require_images and not scan.items and not state.parts:
        raise DataError(f"no images found under {redact(src)} (extensions: jpg, jpeg, png, webp, bmp, gif, tif)")

    report = PackReport(files=len(new_items) + len(new_skips))
    if report.files:
        log.info(
            "pack_start",
            source=redact(src),
            dest=redact(dest),
            new_files=report.files,
            already_packed=len(state.done),
            classes=class_names,
        )
    publisher = GenerationPublisher(store, state, src, options)
    writer = PartWriter(
        store,
        len(state.parts),
        options.resolutions,
        options.shard_size,
        class_names=lambda: class_names,
        on_part=publisher.part_published,
    )
    try:
        _pack_items(writer, report, state, new_items, new_skips, class_names, options, stop, on_progress, publisher)
    except BaseException as error:
        writer.abort(error)  # a full disk or a stop mid-part: no half-written shard stays behind
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            # A failed write names no file: name where it was written (a remote DEST stages shards locally).
            where = dest if store.is_local else f"{tempfile.gettempdir()} (staging for {redact(dest)})"
            raise OSError(error.errno, error.strerror, where) from error
        raise
    report.stopped = stop is not None and stop.is_set()
    if require_images and report.files and not report.packed and not state.parts and not report.stopped:
        writer.abort(ConfigError("nothing packed"))
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(report.skipped.items()))
        raise ConfigError(
            f"every file in {redact(src)} was skipped ({reasons}); nothing was packed. "
            "Loosen the filters (--min-side, --max-aspect, --formats, --near-duplicates, "
            "--exclude) or add images, then run the same command again"
        )
    writer.publish()  # the last, partial part (and any trailing skip records)
    report.manifest = publisher.publish_if_changed()
    report.parts = publisher.parts_this_run
    report.seconds = time.perf_counter() - started
    if report.files:
        log.info(
            "pack_done",
            packed=report.packed,
            skipped=dict(report.skipped),
            parts=report.parts,
            first_frame_only=report.first_frame_only,
            generation=report.manifest.generation if report.manifest else None,
            seconds=round(report.seconds, 2),
            stopped=report.stopped,
        )
    return report


def _pack_items(  # noqa: PLR0913 (the body of pack(), apart so that one handler can abort the open part)
    writer: PartWriter,
    report: PackReport,
    state,
    new_items: list,
    new_skips: list,
    class_names: list[str] | None,
    options: PackOptions,
    stop: threading.Event | None,
    on_progress: Callable[[int, int, PackReport], None] | None,
    publisher,
) -> None:
    """Transform the new files in worker processes and write each result into the open part, or count its skip."""
    for skip in new_skips:
        _record_skip(writer, report, skip.source_id, skip.reason, "")
    done = len(new_skips)
    for item, result in _transform_all(new_items, options, stop):
        if isinstance(result, ImageRejected):
            _record_skip(writer, report, item.source_id, result.reason, result.detail)
        elif (reason := state.duplicates.check(result.record.sha256, int(result.record.phash, 16))) is not None:
            _record_skip(writer, report, item.source_id, reason, "")
        else:
            label_index = class_names.index(item.label) if class_names and item.label is not None else None
            writer.add_sample(_with_label(result, label_index))
            report.packed += 1
            report.first_frame_only += result.frames > 1
        done += 1
        if on_progress is not None:
            on_progress(done, report.files, report)
        publisher.maybe_publish()
        if stop is not None and stop.is_set():
            break


def _record_skip(writer: PartWriter, report: PackReport, source: str, reason: str, detail: str) -> None:
    writer.add_skip(source, reason)
    report.skipped[reason] += 1
    if report.skipped[reason] <= LOGGED_SKIPS_PER_REASON:
        log.warning("image_skipped", file=source, reason=reason, detail=detail)


def _with_label(sample: EncodedSample, label_index: int | None) -> EncodedSample:
    return dataclasses.replace(sample, label_index=label_index)


# -- what the destination already holds --------------------------------------------------------------------------
class DatasetState:
    """The published parts of a destination, rebuilt from its part records (the truth after any crash)."""

    def __init__(self, parts: list[PartRecord], generation: int, duplicates: DuplicateFilter):
        self.parts = parts
        self.generation = generation
        self.duplicates = duplicates
        self.done: set[str] = {s.source for part in parts for s in part.samples}
        self.done |= {s.source for part in parts for s in part.skipped}
        self.class_names: list[str] | None = parts[-1].class_names if parts else None
        self.labelled: bool | None = (self.class_names is not None) if parts else None

    @classmethod
    def load(cls, store: Store, src: str, options: PackOptions) -> DatasetState:
        _remove_stale_temporaries(store)
        parts = read_parts(store)
        generation = latest_generation(store)
        if parts or generation:
            _check_same_dataset(store, src, options)
        duplicates = DuplicateFilter(options.exact_duplicates, options.near_duplicates)
        for part in parts:
            for sample in part.samples:
                duplicates.remember(sample.sha256, int(sample.phash, 16))
        return cls(parts, generation, duplicates)

    def merge_labels(self, labelled: bool, names: list[str]) -> list[str] | None:
        """Class names are append-only: earlier shards' label indices never change."""
        if self.labelled is not None and labelled != self.labelled and names:
            raise DataError(
                "the destination holds a "
                + ("labelled" if self.labelled else "unlabelled")
                + " dataset but the source now reads as "
                + ("labelled" if labelled else "unlabelled")
                + "; pass --labels to match it, or --overwrite to start again"
            )
        if not labelled and not self.labelled:
            return None
        known = list(self.class_names or [])
        self.class_names = known + [name for name in names if name not in known]
        return self.class_names


def _check_same_dataset(store: Store, src: str, options: PackOptions) -> None:
    try:
        manifest = read_record(store, MANIFEST_NAME, PackedManifest, MANIFEST_REMEDY)
    except FileNotFoundError:
        return  # parts without a generation yet: the layout check below has nothing to compare against
    source = redact(_normalised(src))
    if manifest.source != source:
        raise ConfigError(
            f"{redact(store.root_url)} was packed from {manifest.source}, not {source}; use another destination "
            "or --overwrite"
        )
    have = manifest.options.get("layout")
    if have is not None and have != options.layout:
        raise ConfigError(
            f"{redact(store.root_url)} was packed with {have}; this run asks for {options.layout}. Pass the same "
            "--resolutions/--resize/--output-format, or --overwrite"
        )


def _normalised(src: str) -> str:
    return src if "://" in src else os.path.abspath(src)


def _remove_stale_temporaries(store: Store) -> None:
    """Leftovers of a killed run: half-written files that no reader ever sees; removed so they do not pile up."""
    if not store.is_local:
        return  # object stores publish with one PUT; nothing half-written exists there
    for relpath in store.walk_files():
        if ".tmp-" in posixpath.basename(relpath):
            store.delete_tree(relpath)


# Everything gand writes under a dataset's root. Nothing else there is gand's, and gand never deletes anything else.
GAND_FILES = re.compile(
    r"(\d+/shard-\d{6,}\.tar|parts/part-\d{6,}\.json|manifests/generation-\d{6,}\.json|manifest\.json"
    r"|eval/inception-\d+px-\d+\.npz)"
)


def gands_own(relpath: str) -> bool:
    """Whether a file under a dataset's root is one gand writes (or a temporary of one of its atomic writes)."""
    return GAND_FILES.fullmatch(relpath.split(".tmp-")[0]) is not None


def check_destination(src: str, dest: str, store: Store, overwrite: bool = False) -> None:
    """Refuse (ConfigError, exit 2) a DEST that is SRC or inside it or around it, and a new DEST (no dataset there
    yet), or one about to be overwritten, that holds files gand did not write: packing there would mix gand's files
    with the user's, and `--overwrite` could not tell them apart. An existing dataset with a README added later is
    packed into as before (its extra files are never touched). Hidden files (`.DS_Store`, `.git`) and the empty
    "folder" objects of bucket consoles do not count."""
    source, target = _location(src), _location(dest)
    if source == target or target.startswith(source + "/") or source.startswith(target + "/"):
        relation = "the same place as" if source == target else "inside" if target.startswith(source) else "around"
        raise ConfigError(
            f"DEST {redact(dest)} is {relation} SRC {redact(src)}: gand would pack its own output, and "
            "--overwrite would delete the source. Pack into a folder or prefix of its own"
        )
    if not overwrite and (store.exists(MANIFEST_NAME) or store.exists(part_path(0))):
        return  # an existing dataset: incremental packs and daemon polls add to it
    foreign = [
        path
        for path in store.walk_files()
        if path and not path.endswith("/") and not gands_own(path) and not _hidden(path)
    ]
    if foreign:
        examples = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(
            f"DEST {redact(dest)} holds files gand did not write ({examples}); pack into an empty folder "
            "or prefix, or into an existing gand dataset. Nothing was changed"
        )


def _location(url: str) -> str:
    """A comparable form of a path or URL: absolute and resolved locally, protocol + path otherwise."""
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/")
    return os.path.realpath(url.removeprefix("file://")).rstrip("/")


def _hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def _wipe(store: Store) -> None:
    """`--overwrite`: delete gand's files only (check_destination has made sure there is nothing else). The
    manifest goes first, so an interrupted wipe never leaves a manifest that lists deleted shards."""
    store.delete(MANIFEST_NAME)
    for relpath in store.walk_files():
        if gands_own(relpath):
            store.delete(relpath)
    if store.is_local:  # folders gand made, now empty (object stores have no folders)
        for folder in sorted(
            {path.split("/")[0] for path in ("parts/", "manifests/", "eval/")}
            | {name for name in store.list_dir() if name.isdigit()}
        ):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(store.root, folder))


class GenerationPublisher:
    """Publishes manifest generations: at most every `generation_seconds` while packing, and at the end."""

    def __init__(self, store: Store, state: DatasetState, src: str, options: PackOptions):
        self.store = store
        self.state = state
        self.source = redact(_normalised(src))
        self.options = options
        self.parts_this_run = 0
        self._unlisted = self._count_unlisted()
        self._last = time.monotonic()

    def _count_unlisted(self) -> int:
        try:
            listed = read_record(self.store, MANIFEST_NAME, PackedManifest, MANIFEST_REMEDY).parts
        except FileNotFoundError:
            listed = 0
        return len(self.state.parts) - listed  # complete parts a killed run published but never listed

    def part_published(self, part: PartRecord) -> None:
        self.state.parts.append(part)
        self.parts_this_run += 1
        self._unlisted += 1

    def maybe_publish(self) -> None:
        if self._unlisted and time.monotonic() - self._last >= self.options.generation_seconds:
            self.publish()

    def publish_if_changed(self) -> PackedManifest | None:
        if self._unlisted:
            return self.publish()
        try:
            return read_record(self.store, MANIFEST_NAME, PackedManifest, MANIFEST_REMEDY)
        except FileNotFoundError:
            return None

    def publish(self) -> PackedManifest:
        self.state.generation += 1
        options = {
            "layout": self.options.layout,
            "shard_size": self.options.shard_size,
            "min_side": self.options.min_side,
            "max_aspect": self.options.max_aspect,
            "upscale": self.options.upscale,
            "filter": "lanczos",
            "near_duplicates": self.options.near_duplicates,
        }
        manifest = build_manifest(
            self.state.parts, self.state.generation, self.source, list(self.options.resolutions), options
        )
        publish_generation(self.store, manifest)
        log.info(
            "generation_published", generation=manifest.generation, parts=manifest.parts, images=manifest.num_samples
        )
        self._unlisted, self._last = 0, time.monotonic()
        return manifest


# -- transform, in worker processes ------------------------------------------------------------------------------
_worker_options: PackOptions | None = None
_worker_checks: ImageChecks | None = None


def _init_worker(options: PackOptions) -> None:
    global _worker_options, _worker_checks
    _worker_options, _worker_checks = options, options.checks()


def _init_pool_worker(options: PackOptions) -> None:
    """A pack worker leaves stopping to its parent. Signals sent to the whole process group (systemd, `timeout`,
    `kill -- -PGID`, Ctrl-C) would kill it mid-task, possibly holding the task queue's lock, and the pool's own
    shutdown would then wait for that lock forever: so it runs in its own session, out of the group's reach, and
    ignores SIGINT. The parent ends it (Pool.terminate) once it has published what is complete; if the parent dies
    (SIGKILL, a lost machine), the kernel ends the worker too."""
    with contextlib.suppress(OSError):  # already a session leader: nothing to do
        os.setsid()
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(options)


def _transform_all(
    items: list[SourceItem], options: PackOptions, stop: threading.Event | None
) -> Iterator[tuple[SourceItem, object]]:
    if not items:
        return
    if options.workers == 1:
        _init_worker(options)
        yield from zip(items, map(transform_item, items), strict=True)
        return
    # spawn, not fork: the parent may hold threads (metrics server, storage clients) that fork would copy badly
    with get_context("spawn").Pool(options.workers, initializer=_init_pool_worker, initargs=(options,)) as pool:
        # ordered, one item per task: parts follow source order, and .next(timeout) exists only for chunksize 1
        results = pool.imap(transform_item, items, chunksize=1)
        for item in items:
            while True:  # wait in slices so a stop request is honoured even while a worker is busy
                try:
                    result = results.next(timeout=0.5)
                    break
                except multiprocessing.TimeoutError:
                    if stop is not None and stop.is_set():
                        return
            yield item, result


def transform_item(item: SourceItem) -> EncodedSample | ImageRejected:
    options, checks = _worker_options, _worker_checks
    assert options is not None and checks is not None
    try:
        data = read_url(item.url)
    except OSError as err:
        return ImageRejected("read_error", str(err))
    try:
        decoded = decode_rgb(data, checks, draft_side=max(options.resolutions) if options.draft else 0)
        resized = resize_all(decoded.image, options.resolutions, options.resize)
        images = {res: encode(resized[res], options.output, options.quality) for res in sorted(resized)}
        phash = perceptual_hash(decoded.image)
    except ImageRejected as rejected:
        return rejected
    meta: dict[str, object] = {
        "source": item.source_id,
        "width": decoded.original_width,
        "height": decoded.original_height,
        "format": decoded.source_format,
    }
    if decoded.frames > 1:
        meta["frames"] = decoded.frames  # only the first was packed
    if item.label is not None:
        meta["class_name"] = item.label
    if item.columns:
        meta["columns"] = item.columns
    record = PartSample(
        key=item.key,
        source=item.source_id,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=f"{phash:016x}",
        label=item.label,
    )
    extension = OUTPUT_EXTENSIONS[options.output]  # raw -> npy
    return EncodedSample(
        item.key, images, extension, None, json.dumps(meta, sort_keys=True).encode(), record, decoded.frames
    )
