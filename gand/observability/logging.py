"""structlog set-up: one JSON object per line on stdout (and optionally appended to a file in the run dir)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import IO, Any

import structlog


class _Tee:
    """A minimal file that writes each log line to several files."""

    def __init__(self, *targets: IO[str]):
        self.targets = targets

    def write(self, text: str) -> None:
        for target in self.targets:
            target.write(text)

    def flush(self) -> None:
        for target in self.targets:
            target.flush()


def configure_logging(rank: int = 0, is_main: bool = True, log_file: Path | None = None) -> None:
    """JSON lines with ISO timestamps; ranks other than the main one report warnings and errors only."""
    targets: list[IO[str]] = [sys.stdout]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        targets.append(log_file.open("a", buffering=1))
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO if is_main else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(_Tee(*targets) if len(targets) > 1 else sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if rank:
        structlog.contextvars.bind_contextvars(rank=rank)
