"""Progress for long, one-shot work on a terminal: a bar on stderr when it is a TTY, log lines otherwise."""

from __future__ import annotations

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
        line = (f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} "
                f"{rate:6.1f} img/s  skipped {skipped}  eta {eta:4.0f}s ")  # fmt: skip
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


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
            f"dataset: {manifest.num_samples} images, generation {manifest.generation}, {manifest.parts} parts"
            + (f", {len(manifest.class_names)} classes" if manifest.class_names else "")
        )
        for res in manifest.resolutions:
            shards = manifest.shards_at(res)
            size = sum(shard.bytes for shard in shards)
            lines.append(f"  {res:>4} px  {len(shards):>5} shards  {_human_bytes(size):>10}")
    return "\n".join(lines)


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"
