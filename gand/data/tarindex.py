"""Random access to the samples of packed shards: each tar's members indexed by reading headers only, then any
sample read by offset with one `pread`.

Shards are WebDataset tars: a sample is the run of consecutive members that share a key (the member name up to the
first dot of its base name, as in `webdataset.tariterators.base_plus_ext`), e.g. `0a1b...png`, `0a1b...cls`,
`0a1b...json`. The index keeps, per sample, its key, where its image member's bytes are and its class (the `.cls`
member is a few bytes, read with the header). Remote shards (s3://, gs://) are copied once into a local cache
named by their SHA-256 so that reads are local seeks, as `webdataset`'s own indexed reader (wids) does.

A tar is parsed with gand's own USTAR header reader (1.5 us per member against 16 us for `tarfile`, which matters
at a million members); headers it does not handle (pax, GNU long names) fall back to `tarfile`. A header whose
checksum fails (flipped bytes) is skipped block by block until the next valid header: the members around the
damage stay usable, and `complete` is False.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import numpy as np
import structlog

from gand.data.images import IMAGE_EXTENSIONS
from gand.storage import is_local, open_url, redact

log = structlog.get_logger("gand.loader")

UNLABELLED = -1
BLOCK = 512
REGULAR_TYPES = (b"0", b"\0", b"7")  # regular files ('7': contiguous, read as regular)
SKIPPED_TYPES = (b"5", b"1", b"2", b"3", b"4", b"6")  # directories, links, devices: no sample data


@dataclass(frozen=True)
class ShardIndex:
    """The samples of one shard, in tar order. Arrays have one entry per sample."""

    path: str  # a local file
    keys: np.ndarray  # bytes (numpy "S"): one array, not a million Python strings copied into every worker
    image_offsets: np.ndarray  # int64: byte offset of the image member's data (-1: the sample has no image)
    image_sizes: np.ndarray  # int64: its length in bytes
    image_kinds: np.ndarray  # int8: index into IMAGE_EXTENSIONS
    labels: np.ndarray  # int64: the .cls value, UNLABELLED without one
    complete: bool  # the scan reached the end of the archive (False: damaged or truncated after the last sample)

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, sample: int) -> str:
        return self.keys[sample].decode("utf-8")


class _Builder:
    """Collects members into samples as the scan meets them."""

    def __init__(self):
        self.keys: list[str] = []
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self.kinds: list[int] = []
        self.labels: list[int] = []

    def add(self, name: str, offset: int, size: int, head: bytes) -> None:
        """One member; `head` holds at least its first bytes when it is a .cls member."""
        key, ext = _key_and_extension(name)
        if key is None:
            return
        if not self.keys or self.keys[-1] != key:
            self.keys.append(key)
            self.offsets.append(-1)
            self.sizes.append(0)
            self.kinds.append(-1)
            self.labels.append(UNLABELLED)
        if ext in IMAGE_EXTENSIONS and self.offsets[-1] < 0:
            self.offsets[-1], self.sizes[-1], self.kinds[-1] = offset, size, IMAGE_EXTENSIONS.index(ext)
        elif ext == "cls":
            with contextlib.suppress(ValueError):
                self.labels[-1] = int(head[:size].decode("ascii").strip())

    def build(self, path: str, complete: bool) -> ShardIndex:
        return ShardIndex(
            path=path,
            keys=np.asarray([key.encode("utf-8") for key in self.keys], dtype=np.bytes_),
            image_offsets=np.asarray(self.offsets, dtype=np.int64),
            image_sizes=np.asarray(self.sizes, dtype=np.int64),
            image_kinds=np.asarray(self.kinds, dtype=np.int8),
            labels=np.asarray(self.labels, dtype=np.int64),
            complete=complete,
        )


def _key_and_extension(name: str) -> tuple[str | None, str]:
    """`dir/abc.seg.png` -> (`dir/abc`, `seg.png`); webdataset's rule (the first dot of the base name)."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (posixpath.join(directory, stem) if directory else stem), ext.lower()


def index_shard(path: str) -> ShardIndex:
    """Scan a local tar's headers (not its data) into a ShardIndex."""
    builder = _Builder()
    fd = os.open(path, os.O_RDONLY)
    damaged_blocks = 0
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while True:
            if offset + BLOCK > size:
                return _finish(builder, path, damaged_blocks, truncated=True)  # no end-of-archive marker
            block = os.pread(fd, 2 * BLOCK, offset)
            header = block[:BLOCK]
            if header == bytes(BLOCK):
                return _finish(builder, path, damaged_blocks, truncated=False)  # end-of-archive marker
            if not _checksum_ok(header):
                damaged_blocks += 1  # inside a damaged header or the data after it: look for the next header
                offset += BLOCK
                continue
            kind = header[156:157]
            member_size = _octal(header[124:136])
            data_offset = offset + BLOCK
            if kind in REGULAR_TYPES:
                if data_offset + member_size > size:
                    return _finish(builder, path, damaged_blocks, truncated=True)  # the last member is cut short
                builder.add(_ustar_name(header), data_offset, member_size, block[BLOCK:])
            elif kind not in SKIPPED_TYPES:
                return _index_with_tarfile(path)  # pax / GNU extensions: let the standard library read them
            offset = data_offset + -(-member_size // BLOCK) * BLOCK
    finally:
        os.close(fd)


def _finish(builder: _Builder, path: str, damaged_blocks: int, truncated: bool) -> ShardIndex:
    if damaged_blocks:
        log.warning("shard_damaged", shard=redact(path), blocks_skipped=damaged_blocks, reason="bad tar headers")
    return builder.build(path, complete=not (damaged_blocks or truncated))


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _octal(header[148:156])
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 256 * sum(1 for byte in header[:148] + header[156:] if byte > 127)  # old tars (as tarfile)
    return stored in (unsigned, signed)


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # base-256 (GNU) for sizes over 8 GiB
        return int.from_bytes(field[1:], "big", signed=field[:1] == b"\xff")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            return f"{prefix}/{name}"
    return name


def _index_with_tarfile(path: str) -> ShardIndex:
    builder = _Builder()
    complete = True
    with open(path, "rb") as handle:
        try:
            with tarfile.open(fileobj=handle, mode="r:") as tar:
                for member in tar:
                    if member.isfile():
                        head = tar.extractfile(member).read(64) if member.name.lower().endswith(".cls") else b""
                        builder.add(member.name, member.offset_data, member.size, head)
        except (tarfile.TarError, EOFError, OSError) as err:
            log.warning("shard_damaged", shard=redact(path), reason=str(err))
            complete = False
    return builder.build(path, complete)


class SampleReader:
    """Reads samples' image bytes by offset, holding one open file per shard (per process: open it in the worker)."""

    def __init__(self):
        self._files: dict[str, int] = {}
        self.opened = 0

    def image_bytes(self, shard: ShardIndex, sample: int) -> bytes:
        fd = self._files.get(shard.path)
        if fd is None:
            fd = self._files[shard.path] = os.open(shard.path, os.O_RDONLY)
            self.opened += 1
        size = int(shard.image_sizes[sample])
        data = os.pread(fd, size, int(shard.image_offsets[sample]))
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes")
        return data

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def cache_dir() -> Path:
    """Where remote shards are copied: $GAND_CACHE/shards (default ~/.cache/gand/shards)."""
    return Path(os.environ.get("GAND_CACHE", Path.home() / ".cache" / "gand")) / "shards"


def verify_shard(path: str, size: int, sha256: str) -> str | None:
    """Why the local shard at `path` is not what the manifest promises (size, then SHA-256), or None when it is.
    Raises OSError when it cannot be read at all (that is not damage).

    Hashing reads the whole file; a match is remembered in $GAND_CACHE/verified by path, size and modification
    time, so a shard is hashed once per machine until it changes (the ranks of one machine take turns through a
    lock file: one hashes, the others find its note)."""
    stat = os.stat(path)
    if not S_ISREG(stat.st_mode):
        return None  # a pipe or a device: nothing to size or hash up front; it is read as it comes
    if stat.st_size != size:
        return f"{stat.st_size} bytes where the manifest says {size} (truncated or replaced)"
    marker, stamp = _verified_marker(sha256), _stamp(path, stat)
    marker.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{marker}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            if marker.read_text() == stamp:
                return None
        digest = _file_sha256(path)
        if digest != sha256:
            return f"SHA-256 {digest[:16]}... where the manifest says {sha256[:16]}... (damaged)"
        _remember_verified(marker, stamp)
    return None


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_marker(sha256: str) -> Path:
    """Where a machine notes that the shard with this SHA-256 was hashed and matched."""
    return cache_dir().parent / "verified" / sha256


def _stamp(path: str, stat: os.stat_result) -> str:
    """What the note says: the file, its size and modification time (a changed file is hashed again)."""
    return f"{os.path.abspath(path)}\n{stat.st_size}\n{stat.st_mtime_ns}\n"


def _remember_verified(marker: Path, stamp: str) -> None:
    with contextlib.suppress(OSError):
        staging = marker.with_suffix(f".tmp-{os.getpid()}")
        staging.write_text(stamp)
        os.replace(staging, marker)


def local_shard(url: str, sha256: str) -> str:
    """A local path holding the shard at `url`: the path itself, or a cached copy named by its SHA-256 (copied
    and checked on first use; the copy is published atomically, so concurrent ranks never see half a file). A
    copy whose SHA-256 differs is fetched once more (a bad transfer); if it still differs, the source itself is
    damaged and the copy is kept under its own digest, for verify_shard to report."""
    if is_local(url):
        return url.removeprefix("file://")
    target = cache_dir() / f"{sha256}.tar"
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        digest = _download(url, target.with_suffix(f".tmp-{os.getpid()}"))
        if digest == sha256:
            break
        log.warning("shard_checksum_mismatch", shard=redact(url), expected=sha256, got=digest, attempt=attempt)
    staging = target.with_suffix(f".tmp-{os.getpid()}")
    final = target if digest == sha256 else target.with_name(f"{digest}.tar")
    os.replace(staging, final)
    if final == target:  # checked while copying: no need to hash it again
        _verified_marker(sha256).parent.mkdir(parents=True, exist_ok=True)
        _remember_verified(_verified_marker(sha256), _stamp(str(final), final.stat()))
    log.info("shard_cached", shard=redact(url), path=str(final))
    return str(final)


def _download(url: str, staging: Path) -> str:
    """Copy `url` to `staging`; its SHA-256."""
    digest = hashlib.sha256()
    try:
        with open_url(url) as source, open(staging, "wb") as copy:
            while chunk := source.read(1 << 22):
                digest.update(chunk)
                copy.write(chunk)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    return digest.hexdigest()
