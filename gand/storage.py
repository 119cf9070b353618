"""The one place gand talks to fsspec: local paths, file://, s3://, gs:// behind one small interface.

Writes are atomic: a reader sees the whole object or nothing. Locally that is a write under a temporary name,
fsync, then rename; on object stores a single PUT (or a completed multipart upload) is already all-or-nothing.
Credentials come from the environment and the providers' standard chains; URLs are logged without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from gand.errors import StorageError


def join(base: str, *parts: str) -> str:
    """Join URL or path segments with '/', keeping the scheme of `base`."""
    return posixpath.join(base, *parts) if parts else base


def redact(url: str) -> str:
    """The URL without any user:password part, safe to log or store."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Free text (an error message) with every URL in it redacted: `https://user:token@host/x` -> `https://host/x`."""
    if "://" not in text or "@" not in text:
        return text
    return " ".join(redact(word) if "://" in word else word for word in text.split(" "))


class Store:
    """Files under one root URL. Paths given to methods are relative to the root and use '/'."""

    def __init__(self, root_url: str):
        self.root_url = root_url.rstrip("/") or root_url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.root_url)
        except (ImportError, ValueError) as err:
            raise StorageError(f"cannot open storage {redact(root_url)}: {err}") from None
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({redact(self.root_url)!r})"

    def url(self, relpath: str = "") -> str:
        return join(self.root_url, relpath) if relpath else self.root_url

    def _path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath) if relpath else self.root

    # -- reading -------------------------------------------------------------------------------------------
    def _fresh(self, path: str) -> str:
        """Drop cached listings: other processes (the daemon, other ranks) add files while we run."""
        self.fs.invalidate_cache(path)
        return path

    @contextlib.contextmanager
    def _errors(self, doing: str, relpath: str) -> Iterator[None]:
        """Backend failures (botocore's connection errors are not OSErrors) become StorageError, which callers
        retry; FileNotFoundError stays what it is: an answer, not a failure."""
        try:
            yield
        except (FileNotFoundError, StorageError):
            raise
        except Exception as err:
            raise StorageError(f"cannot {doing} {redact(self.url(relpath))}: {type(err).__name__}: {err}") from err

    def exists(self, relpath: str) -> bool:
        with self._errors("check", relpath):
            return self.fs.exists(self._fresh(self._path(relpath)))

    def read_bytes(self, relpath: str) -> bytes:
        with self._errors("read", relpath):
            return self.fs.cat_file(self._path(relpath))

    def size(self, relpath: str) -> int:
        with self._errors("stat", relpath):
            return int(self.fs.size(self._path(relpath)))

    def list_dir(self, relpath: str = "") -> list[str]:
        """Names (not paths) directly under relpath; empty when it does not exist."""
        try:
            with self._errors("list", relpath):
                entries = self.fs.ls(self._fresh(self._path(relpath)), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)

    def walk_files(self, relpath: str = "") -> list[str]:
        """Every file below relpath, as sorted paths relative to the root."""
        base = self._fresh(self._path(relpath))
        try:
            with self._errors("list", relpath):
                found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = self.root.rstrip("/") + "/"
        return sorted(path[len(prefix) :] if path.startswith(prefix) else path for path in found)

    # -- writing -------------------------------------------------------------------------------------------
    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Publish `data` at relpath atomically."""
        with self.open_atomic(relpath) as handle:
            handle.write(data)

    @contextlib.contextmanager
    def open_atomic(self, relpath: str) -> Iterator[IO[bytes]]:
        """A binary file to write; it appears at relpath only if the block finishes without an error."""
        if self.is_local:
            final = self._path(relpath)
            os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
            staging = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(staging, "wb") as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(staging, final)
            except OSError as err:
                if err.filename is None:  # a write that failed (a full disk) names no file: name the one we wrote
                    raise OSError(err.errno, err.strerror, final) from err
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staging)
            return
        with tempfile.NamedTemporaryFile(prefix="gand-upload-", suffix=".part") as handle:
            yield handle
            handle.flush()
            with self._errors("write", relpath):
                self.fs.put_file(handle.name, self._path(relpath))

    # -- conditional writes (the run's lease) ----------------------------------------------------------------
    @property
    def conditional_writes(self) -> bool:
        """Whether write_if is atomic here: local files (a lock file, one machine) and S3 (If-None-Match / If-Match
        on PUT). Elsewhere it is a read-compare-write with a small race window."""
        return self.is_local or self._is_s3

    @property
    def _is_s3(self) -> bool:
        return not self.is_local and _protocol(self.fs) in ("s3", "s3a")

    def read_tagged(self, relpath: str) -> tuple[bytes, str] | None:
        """The object's bytes and a version tag for write_if (S3: its ETag; elsewhere a SHA-256 of the bytes), or
        None when there is no object. The tag may be newer than the bytes, never older: a write_if with it fails
        rather than overwrite a change it did not see."""
        path = self._fresh(self._path(relpath))
        try:
            with self._errors("read", relpath):
                if not self._is_s3:
                    data = self.fs.cat_file(path)
                    return data, hashlib.sha256(data).hexdigest()
                tag = self.fs.info(path)["ETag"]
                return self.fs.cat_file(path), tag
        except FileNotFoundError:
            return None

    def write_if(self, relpath: str, data: bytes, tag: str | None) -> bool:
        """Write `data` only if the object still has `tag` (from read_tagged), or, with tag None, only if there is
        no object. False when another writer got there first."""
        if self.is_local:
            return self._write_if_local(relpath, data, tag)
        path = self._path(relpath)
        if not self._is_s3:
            current = self.read_tagged(relpath)
            if (current[1] if current else None) != tag:
                return False
            self.write_bytes(relpath, data)
            return True
        try:
            with self._errors("write", relpath):
                if tag is None:
                    self.fs.pipe_file(path, data, mode="create")  # If-None-Match: *
                else:
                    self.fs.pipe_file(path, data, IfMatch=tag)
        except FileExistsError:
            return False
        except StorageError as err:
            if _precondition_failed(err):
                return False
            raise
        return True

    def _write_if_local(self, relpath: str, data: bytes, tag: str | None) -> bool:
        import fcntl

        final = self._path(relpath)
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        with open(f"{final}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            current = self.read_tagged(relpath)
            if (current[1] if current else None) != tag:
                return False
            self.write_bytes(relpath, data)
            return True

    def delete(self, relpath: str) -> None:
        """Remove one object (nothing when it is not there)."""
        with contextlib.suppress(FileNotFoundError), self._errors("delete", relpath):
            self.fs.rm_file(self._path(relpath))

    def delete_tree(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError), self._errors("delete", relpath):
            self.fs.rm(self._path(relpath), recursive=True)


def _protocol(fs) -> str:
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


def _precondition_failed(err: BaseException) -> bool:
    """Whether an S3 write failed on its If-Match / If-None-Match condition (HTTP 412), not on anything else."""
    seen: BaseException | None = err
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return True
        if "pre-conditions you specified did not hold" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def read_url(url: str) -> bytes:
    """The whole object at a full URL or local path (raises FileNotFoundError / OSError)."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path)


def open_url(url: str, mode: str = "rb") -> IO[bytes]:
    """Open a full URL or local path for streaming reads (used by the shard loader)."""
    try:
        return fsspec.open(url, mode).open()
    except FileNotFoundError:
        raise StorageError(f"{redact(url)} does not exist") from None
    except OSError as err:
        raise StorageError(f"cannot open {redact(url)}: {err}") from err


def is_local(url: str) -> bool:
    return isinstance(fsspec.core.url_to_fs(url)[0], LocalFileSystem)
