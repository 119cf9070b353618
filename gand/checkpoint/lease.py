"""One writer per run: a lease in the checkpoint store, so two trainers never interleave their commits (issue 18).

`LEASE.json` next to the checkpoints names its holder (a random owner id, host, PID) and when it expires. Rank 0
takes it before it lists or deletes anything, renews it from a background thread every third of its time to live,
and gives it back when it exits. Writes are conditional where the store supports it (S3 If-None-Match / If-Match,
a lock file locally), so of two trainers starting at once exactly one wins. Another trainer on the same
`checkpoint.url`:
- waits while the lease is live (an old pod still terminating), up to `checkpoint.lease_wait_seconds`, then exits 2
  with who holds it;
- takes it over once it has expired (the holder stopped renewing: killed, frozen, cut off) or, on the same
  machine, as soon as the holder's process is gone.

A trainer that finds its lease taken (it was frozen or cut off past the expiry) publishes no manifest from then on
and stops with exit 75: the new holder's checkpoints are the run's.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from gand.checkpoint.uploader import RetryPolicy, with_retries
from gand.errors import ConfigError, GandError, StorageError
from gand.storage import Store, redact

log = structlog.get_logger("gand.checkpoint")
LEASE = "LEASE.json"
POLL_SECONDS = 1.0  # how often a waiting trainer looks again


class LeaseHeld(ConfigError):
    """Another live trainer holds the run's lease: starting a second one on the same checkpoints is a mistake
    that retrying will not fix (exit 2)."""


class LeaseLost(GandError):
    """This trainer's lease was taken over: it must not publish anything more (exit 75, the holder goes on)."""

    exit_code = 75


@dataclass(frozen=True)
class Holder:
    owner: str
    host: str
    pid: int
    run: str
    expires_at: float  # Unix time, by the holder's clock
    ttl_seconds: float = 60.0
    boot_id: str = ""
    pid_namespace: int = 0  # the inode of the holder's PID namespace: PIDs mean something only within it
    started_at: str = ""  # the holder process's start time (/proc/PID/stat), to tell a reused PID

    def describe(self) -> str:
        left = self.expires_at - time.time()
        state = f"expires in {left:.0f} s" if left > 0 else "expired"
        return f"{self.host} PID {self.pid} (run {self.run!r}), lease {state}"

    def gone_from_this_machine(self) -> bool:
        """Whether the holder is a process of this machine (same host, boot and PID namespace: containers that
        share a hostname do not count) that no longer runs."""
        here = (socket.gethostname(), _boot_id(), _pid_namespace())
        same_place = (self.host, self.boot_id, self.pid_namespace) == here
        if not same_place or not self.boot_id or not self.pid_namespace or not self.started_at:
            return False
        return _process_start(self.pid) != self.started_at


class RunLease:
    def __init__(self, store: Store, run_name: str, ttl_seconds: float):
        self.store = store
        self.run_name = run_name
        self.ttl_seconds = ttl_seconds
        self.owner = uuid.uuid4().hex
        self.lost = False
        self.held = False
        self.waiting_for_holder = False  # acquire() is waiting for another trainer's live lease
        self._seen: tuple[str, float] | None = None  # (tag, monotonic time first seen) of another's lease
        self._valid_until = 0.0  # monotonic: past it without a renewal, another trainer may hold the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it -----------------------------------------------------------------------------------------------
    def acquire(
        self, wait_seconds: float, retry: RetryPolicy | None = None, storage_timeout_seconds: float = 120.0
    ) -> None:
        """Take the lease, waiting up to wait_seconds while another live trainer holds it.

        Raises LeaseHeld (exit 2) when it is still held after that; storage failures are retried (`retry`) for up to
        storage_timeout_seconds, then raised as StorageError."""
        retry = retry or RetryPolicy()
        storage_deadline = time.monotonic() + storage_timeout_seconds
        deadline = time.monotonic() + wait_seconds
        announced = False
        if not self.store.conditional_writes:
            log.warning(
                "lease_best_effort",
                url=redact(self.store.url()),
                reason="this store has no conditional writes: two trainers starting at the same moment "
                "could both take the lease",
            )
        while True:
            self.waiting_for_holder = False
            if with_retries(self._try_take, "taking the run's lease", retry, storage_deadline):
                return
            holder = with_retries(self._holder, "reading the run's lease", retry, storage_deadline)
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"another trainer writes checkpoints to {redact(self.store.url())}: "
                    f"{holder.describe() if holder else 'a lease just taken'}. Stop it, use another "
                    "checkpoint.url, or wait: a stopped trainer gives the lease back at once, a killed one after "
                    f"checkpoint.lease_seconds ({self.ttl_seconds:g} s); raise checkpoint.lease_wait_seconds to wait "
                    "longer"
                )
            if not announced and holder is not None:
                log.warning(
                    "waiting_for_lease",
                    holder=holder.describe(),
                    url=redact(self.store.url()),
                    wait_seconds=wait_seconds,
                )
                announced = True
            self.waiting_for_holder = True
            time.sleep(POLL_SECONDS)

    def _try_take(self) -> bool:
        current = self.store.read_tagged(LEASE)
        if current is None:
            return self._write(None, previous=None)
        data, tag = current
        holder = _parse(data)
        if holder is not None and holder.owner == self.owner:
            return self._write(tag, previous=None)
        if self._seen is None or self._seen[0] != tag:
            self._seen = (tag, time.monotonic())  # when this version of the lease was first seen, by our clock
        return self._free(holder) and self._write(tag, previous=holder)

    def _free(self, holder: Holder | None) -> bool:
        """Whether a lease may be taken over: unreadable, its holder gone from this machine, or expired. Expiry is
        judged on both clocks: by the holder's stamp, and by this process's own clock having seen the same version
        unchanged for a whole lifetime (or the stamp being a lifetime past), so that clock skew cannot shorten it."""
        if holder is None or holder.gone_from_this_machine():
            return True
        now = time.time()
        if holder.expires_at > now:
            return False
        unchanged_for = time.monotonic() - self._seen[1] if self._seen else 0.0
        return unchanged_for >= holder.ttl_seconds or now >= holder.expires_at + holder.ttl_seconds

    def _holder(self) -> Holder | None:
        current = self.store.read_tagged(LEASE)
        return _parse(current[0]) if current else None

    def _write(self, tag: str | None, previous: Holder | None) -> bool:
        written_at = time.monotonic()
        record = Holder(
            self.owner,
            socket.gethostname(),
            os.getpid(),
            self.run_name,
            time.time() + self.ttl_seconds,
            self.ttl_seconds,
            _boot_id(),
            _pid_namespace(),
            _process_start(os.getpid()),
        )
        if not self.store.write_if(LEASE, json.dumps(asdict(record), indent=2).encode(), tag):
            return False
        self._valid_until = written_at + self.ttl_seconds
        if not self.held:
            self.held = True
            if previous is not None:
                log.warning("lease_taken_over", previous=previous.describe(), url=redact(self.store.url()))
            log.info("lease_taken", owner=self.owner, ttl_seconds=self.ttl_seconds, url=redact(self.store.url()))
        return True

    # -- keeping it ----------------------------------------------------------------------------------------------
    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="gand-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 3):
            try:
                current = self.store.read_tagged(LEASE)
                holder = _parse(current[0]) if current else None
                if holder is None or holder.owner != self.owner:
                    self._lose(f"now held by {holder.describe() if holder else 'nobody (deleted)'}")
                    return
                if not self._write(current[1], previous=None):
                    self._lose("changed by another writer while renewing")
                    return
            except (OSError, StorageError) as err:
                log.warning("lease_renewal_failed", error=str(err)[:300], retry_in_seconds=round(self.ttl_seconds / 3))
                if time.monotonic() >= self._valid_until:
                    self._lose("not renewed before it expired")
                    return

    def _lose(self, why: str) -> None:
        if not self.lost:
            self.lost = True
            log.error(
                "lease_lost",
                why=why,
                url=redact(self.store.url()),
                effect="no more checkpoints from this trainer; it stops",
            )

    def confirm(self) -> None:
        """Before publishing a manifest: raise LeaseLost unless this trainer still holds a live lease."""
        if not self.lost:
            current = self.store.read_tagged(LEASE)
            holder = _parse(current[0]) if current else None
            # A margin before the lease runs out: the write that follows must land while it is still ours.
            if holder is None or holder.owner != self.owner or time.monotonic() >= self._valid_until - self.margin:
                self._lose(f"found {holder.describe() if holder else 'no lease'} before a commit")
        if self.lost:
            raise LeaseLost(f"this trainer no longer holds the lease on {redact(self.store.url())}")

    @property
    def margin(self) -> float:
        return self.ttl_seconds / 10

    def describe_holder(self) -> str:
        """Who holds the lease now, for a message ("unknown" when storage cannot say)."""
        try:
            holder = self._holder()
        except (OSError, StorageError):
            return "unknown"
        return holder.describe() if holder else "nobody"

    # -- giving it back ------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Stop renewing and, if the lease is still ours, delete it so that the next trainer starts at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # a renewal under way finishes first
        if not self.held or self.lost:
            return
        try:
            current = self.store.read_tagged(LEASE)
            holder = _parse(current[0]) if current else None
            if holder is not None and holder.owner == self.owner:
                self.store.delete(LEASE)
                log.info("lease_released", url=redact(self.store.url()))
        except (OSError, StorageError) as err:
            log.warning("lease_release_failed", error=str(err)[:300], effect="it expires by itself")
        self.held = False


def _parse(data: bytes) -> Holder | None:
    """The holder a lease names; None for an unreadable lease (treated as free: nobody can renew it)."""
    try:
        fields = json.loads(data)
        return Holder(**{key: fields[key] for key in Holder.__dataclass_fields__ if key in fields})
    except (ValueError, TypeError, KeyError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" when there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return ""
