"""Background uploads: one checkpoint at a time, retried with exponential backoff and jitter, under a hard timeout.

Training hands over a finished snapshot (bytes in host memory) and goes on. While one upload is in flight, a newer
snapshot waits in a single slot; a still newer one replaces it (the newest state is the one worth keeping). What
happened comes back to the training loop through `poll()`, so it can log it and put it in the metrics.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from gand.errors import StorageError

log = structlog.get_logger("gand.checkpoint")
T = TypeVar("T")

# What a retry can cure: network and service errors. FileNotFoundError is an answer, not a failure; the errors in
# PERMANENT are not cured by waiting either, and stop at once.
TRANSIENT = (OSError, StorageError)
PERMANENT = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


# Refused access is usually for good (a wrong bucket policy), but expired or skewed credentials look the same for a
# moment while they are refreshed: such refusals are retried this long before they count as permanent.
DENIED_RETRY_SECONDS = 60.0
DENIALS = ("permission denied", "operation not permitted")


class PermanentStorageError(StorageError):
    """A storage failure that retrying cannot cure: no space, no permission, a read-only store."""


def permanent_cause(err: BaseException) -> str | None:
    """What makes `err` (or an error it was raised from) permanent, or None for a transient one."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in PERMANENT:
            return PERMANENT[seen.errno]
        if isinstance(seen, PermissionError):  # object stores' 403 (AccessDenied) carries no errno
            return "permission denied"
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class RetryPolicy:
    first_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0
    timeout_seconds: float = 900.0  # one checkpoint's whole upload; no new attempt starts after it

    def delay(self, attempt: int) -> float:
        """Full jitter (uniform in [0, cap]) so that ranks and restarted jobs do not retry in lock-step."""
        cap = min(self.max_delay_seconds, self.first_delay_seconds * 2**attempt)
        return random.uniform(0.0, cap)


class UploadTimeout(StorageError):
    pass


_main_thread_retrying = 0  # main-thread with_retries calls that have failed at least once and are retrying


def waiting_on_storage() -> bool:
    """Whether the main thread is retrying a failed storage request right now (the training loop's run control
    abandons such a wait a few seconds after a stop signal; a healthy save in progress is left to finish)."""
    return _main_thread_retrying > 0


def with_retries(
    action: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    deadline: float,
    on_failure: Callable[[], None] = lambda: None,
) -> T:
    """`action()`, tried again after transient errors until it succeeds or `deadline` (monotonic) passes."""
    global _main_thread_retrying
    marks = threading.current_thread() is threading.main_thread()
    retrying = False
    attempt = 0
    first_denied: float | None = None
    try:
        while True:
            try:
                return action()
            except FileNotFoundError:
                raise
            except TRANSIENT as err:
                on_failure()
                cause = permanent_cause(err)
                if cause in DENIALS:
                    first_denied = first_denied or time.monotonic()
                    if time.monotonic() - first_denied < DENIED_RETRY_SECONDS:
                        cause = None  # perhaps credentials being refreshed: retried for a while
                if cause is not None:
                    raise PermanentStorageError(f"{what}: {cause} ({err}); retrying cannot help") from err
                if marks and not retrying:
                    retrying, _main_thread_retrying = True, _main_thread_retrying + 1
                wait = policy.delay(attempt)
                if time.monotonic() + wait > deadline:
                    raise UploadTimeout(f"{what}: still failing after {attempt + 1} attempts: {err}") from err
                log.warning(
                    "storage_retry",
                    what=what,
                    attempt=attempt + 1,
                    retry_in_seconds=round(wait, 2),
                    error=str(err)[:300],
                )
                time.sleep(wait)
                attempt += 1
    finally:
        if retrying:
            _main_thread_retrying -= 1


@dataclass(frozen=True)
class UploadResult:
    name: str
    committed: bool
    seconds: float
    error: str | None = None
    permanent: bool = False  # the error was one retrying cannot cure (no space, no permission)
    images_seen: int | None = None  # the checkpoint's image count (filled in by the checkpoint manager)


class Uploader:
    """A daemon thread that runs upload jobs (callables) one at a time, newest pending job first."""

    def __init__(self):
        self._lock = threading.Condition()
        self._pending: tuple[str, Callable[[], bool]] | None = None
        self._running: str | None = None
        self._results: list[UploadResult] = []
        self.failed_attempts = 0  # every failed storage request, retried or not: the metrics' failure count
        self.replaced = 0  # snapshots dropped because a newer one arrived before they started uploading
        self._thread: threading.Thread | None = None

    def count_failure(self) -> None:
        with self._lock:
            self.failed_attempts += 1

    def submit(self, name: str, job: Callable[[], bool]) -> None:
        with self._lock:
            if self._pending is not None:
                self.replaced += 1
                log.warning(
                    "checkpoint_replaced",
                    checkpoint=self._pending[0],
                    by=name,
                    reason="the previous upload is still running",
                )
            self._pending = (name, job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="gand-checkpoint-upload", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    @property
    def busy(self) -> int:
        """Snapshots not yet finished: the one uploading plus the one waiting."""
        with self._lock:
            return int(self._running is not None) + int(self._pending is not None)

    def poll(self) -> list[UploadResult]:
        with self._lock:
            results, self._results = self._results, []
            return results

    def wait(self, timeout_seconds: float | None = None) -> bool:
        """Until nothing is uploading or waiting; False when the timeout came first."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        with self._lock:
            while self._running is not None or self._pending is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None:
                    self._lock.wait()
                (name, job), self._pending = self._pending, None
                self._running = name
            started = time.monotonic()
            try:
                result = UploadResult(name, job(), time.monotonic() - started)
            except Exception as err:  # surfaced to the training loop, which decides what to do
                result = UploadResult(
                    name,
                    False,
                    time.monotonic() - started,
                    f"{type(err).__name__}: {err}",
                    permanent=isinstance(err, PermanentStorageError),
                )
            with self._lock:
                self._results.append(result)
                self._running = None
                self._lock.notify_all()
