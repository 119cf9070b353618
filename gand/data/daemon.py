"""`gand daemon SRC DEST`: keep a packed dataset up to date with its source while training reads it.

Every `interval_seconds` it packs whatever the source has that the destination lacks into new parts and publishes
a new manifest generation (training picks it up at its next epoch). SIGTERM or SIGINT stops it cleanly: the part
being written is published with what it holds, the generation follows, and the process exits 0.
"""

from __future__ import annotations

import signal
import threading
import time

import structlog

from gand.data.pack import PackOptions, pack
from gand.errors import ConfigError, GandError
from gand.observability.metrics import PackMetrics
from gand.storage import redact

log = structlog.get_logger("gand.daemon")


def run_daemon(
    src: str,
    dest: str,
    options: PackOptions,
    interval_seconds: float,
    metrics_port: int | None,
    max_polls: int | None = None,
) -> int:
    """Poll until stopped (or `max_polls` polls); returns the exit code."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: _request_stop(stop, signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    metrics = PackMetrics(metrics_port)
    log.info(
        "daemon_start",
        source=redact(src),
        dest=redact(dest),
        interval_seconds=interval_seconds,
        metrics_port=metrics.port,
    )
    polls = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = pack(src, dest, options, stop=stop, require_images=False)
            except ConfigError:
                raise  # a layout or option clash will not fix itself by waiting
            except (GandError, OSError) as err:
                metrics.record_failure()
                log.error("poll_failed", error=str(err), retry_in_seconds=interval_seconds)
            else:
                metrics.record_poll(report)
                log.info(
                    "poll_done",
                    new_files=report.files,
                    packed=report.packed,
                    skipped=dict(report.skipped),
                    parts=report.parts,
                    generation=report.manifest.generation if report.manifest else None,
                    seconds=round(time.monotonic() - started, 2),
                )
            polls += 1
            if max_polls is not None and polls >= max_polls:
                break
            stop.wait(interval_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        metrics.close()
    log.info("daemon_stopped", polls=polls)
    return 0


def _request_stop(stop: threading.Event, signum: int) -> None:
    log.info("stop_requested", signal=signal.Signals(signum).name)
    stop.set()
