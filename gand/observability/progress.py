"""Progress for long, one-shot work on a terminal: a bar on stderr when it is a TTY, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO

import structlog

log = structlog.get_logger("gand.progress")
BAR_WIDTH = 30


class ProgressReporter:
    """Call with (done, total, report); redraws at most 10 times a second, logs every `log_seconds` off a TTY."""

    def __init__(self, stream: IO[str] = sys.stderr, log_seconds: float = 5.0):
        self.stream = stream
        self.tty = stream.isatty()
        self.log_seconds = log_seconds
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_log = self.started
        self._drawn = False
        self._handlers = [h for h in logging.getLogger().handlers if getattr(h, "gand", False)] if self.tty else []
        for handler in self._handlers:  # a warning (a skipped image) goes above the bar, not through it
            handler.addFilter(self._clear_bar)

    def _clear_bar(self, _record: logging.LogRecord) -> bool:
        if self._drawn:
            self.stream.write("\r\033[K")  # erase the bar's line; the next update draws it under the log line
            self.stream.flush()
            self._drawn = False
            self._last_draw = 0.0
        return True

    def __call__(self, done: int, total: int, report) -> None:
        now = time.monotonic()
        rate = done / max(now - self.started, 1e-9)
        if self.tty:
            if now - self._last_draw >= 0.1 or done == total:
                self._last_draw = now
                self._draw(done, total, rate, sum(report.skipped.values()))
        elif now - self._last_log >= self.log_seconds:
            self._last_log = now
            eta = round((total - done) / rate) if rate else None
            log.info(
                "pack_progress",
                done=done,
                total=total,
                packed=report.packed,
                skipped=sum(report.skipped.values()),
                images_per_second=round(rate, 1),
                eta_seconds=eta,
            )

    def _draw(self, done: int, total: int, rate: float, skipped: int) -> None:
        filled = int(BAR_WIDTH * done / total) if total else BAR_WIDTH
        eta = (total - done) / rate if rate else 0
        line = (
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} "
            f"{rate:6.1f} img/s  skipped {skipped}  eta {eta:4.0f}s "
        )
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self._clear_bar)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class TaskProgress:
    """Progress of one long task in `total` units (images, probes): a bar on stderr at a terminal, else a
    `progress` log line every `log_seconds` and at the end. `advance(n)` after each piece of work; `close()`."""

    def __init__(
        self, task: str, total: int, unit: str = "images", stream: IO[str] | None = None, log_seconds: float = 5.0
    ):
        self.task, self.total, self.unit = task, max(total, 1), unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_seconds = log_seconds
        self.done = 0
        self.started = time.monotonic()
        self._last = float("-inf")  # the first advance shows itself at once (advance(0) before slow work)
        self._drawn = False

    def advance(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        now = time.monotonic()
        finished = self.done >= self.total
        if self.tty and (now - self._last >= 0.1 or finished):
            self._last = now
            self._draw()
        elif not self.tty and (now - self._last >= self.log_seconds or finished):
            self._last = now
            log.info(
                "progress", task=self.task, done=self.done, total=self.total, unit=self.unit, eta_seconds=self._eta()
            )

    def _eta(self) -> int | None:
        elapsed = time.monotonic() - self.started
        return round(elapsed / self.done * (self.total - self.done)) if self.done else None

    def _draw(self) -> None:
        filled = int(BAR_WIDTH * self.done / self.total)
        eta = self._eta()
        self.stream.write(
            f"\r{self.task} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} "
            f"{self.unit}" + (f"  eta {eta}s " if eta is not None else " ")
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def pack_summary(report) -> str:
    """What a one-shot pack did, for people: read, kept, skipped by reason, shards and bytes, images/s."""
    lines = [
        f"read {report.files} new files in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s): "
        f"kept {report.packed}, skipped {sum(report.skipped.values())}"
        + (" (stopped early)" if report.stopped else ""),
    ]
    for reason, count in sorted(report.skipped.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  skipped {count:>7}  {reason}")
    manifest = report.manifest
    if manifest is not None:
        lines.append(
            f"dataset: {plural(manifest.num_samples, 'image')}, generation {manifest.generation}, "
            f"{plural(manifest.parts, 'part')}"
            + (f", {plural(len(manifest.class_names), 'class', 'classes')}" if manifest.class_names else "")
        )
        for res in manifest.resolutions:
            shards = manifest.shards_at(res)
            size = sum(shard.bytes for shard in shards)
            lines.append(
                f"  {res:>4} px  {len(shards):>5} {'shard ' if len(shards) == 1 else 'shards'}  "
                f"{_human_bytes(size):>10}"
            )
    return "\n".join(lines)


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """`1 part`, `2 parts`, `1 class`, `3 classes`."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"
