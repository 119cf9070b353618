"""The run's high-water mark, kept next to its checkpoints: how far training got, whatever was saved.

A SIGKILL (an OOM kill, a spot reclaim without notice) loses the steps since the last commit. The next process
only knows how many if the previous one left a note where the checkpoints live, since a new machine has none of
the old local files. The note is a tiny JSON object, written off the training thread at most every
`every_seconds`, so it can trail by that much: "steps lost" is a lower bound.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import structlog

from gand.errors import StorageError
from gand.storage import Store

log = structlog.get_logger("gand.checkpoint")
PROGRESS = "PROGRESS.json"


class ProgressMarker:
    def __init__(self, store: Store, every_seconds: float | None):
        self.store = store
        self.every_seconds = every_seconds
        self._last_write = float("-inf")
        self._writer: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        """The previous process's last note, or None (none, unreadable: it is a hint, never a reason to fail)."""
        try:
            note = json.loads(self.store.read_bytes(PROGRESS))
            return note if isinstance(note, dict) and isinstance(note.get("step"), int) else None
        except (FileNotFoundError, StorageError, ValueError):
            return None

    def steps_lost(self, note: dict[str, Any] | None, resumed_step: int) -> int | None:
        """Steps the previous process trained past the checkpoint this one resumes from (None: unknown)."""
        if note is None:
            return None
        return max(0, note["step"] - resumed_step)

    def update(self, step: int, images_seen: int, last_commit: str | None = None) -> None:
        """Called every step on rank 0; writes in the background when the interval is up and no write is running.
        `last_commit` (the newest checkpoint known committed) tells a later start that there was one to resume."""
        now = time.monotonic()
        if not self.every_seconds or now - self._last_write < self.every_seconds:
            return
        if self._writer is not None and self._writer.is_alive():
            return  # a slow store: skip this note rather than queue them up
        self._last_write = now
        note = json.dumps(
            {"step": step, "images_seen": images_seen, "time": time.time(), "last_commit": last_commit}
        ).encode()
        self._writer = threading.Thread(target=self._write, args=(note,), name="gand-progress", daemon=True)
        self._writer.start()

    def _write(self, note: bytes) -> None:
        try:
            self.store.write_bytes(PROGRESS, note)
        except (OSError, StorageError) as err:
            log.warning("progress_note_failed", error=str(err), effect="steps lost at the next resume may be unknown")

    def discard(self) -> None:
        """`--fresh`: the old run's high-water mark does not describe the new one."""
        self.store.delete_tree(PROGRESS)
