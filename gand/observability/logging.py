"""structlog set-up: JSON lines off a terminal, readable lines on one; library logs routed through the same output.

Every line carries the run name and rank when training. Values that look like credentials are replaced before
anything is rendered, and URLs lose any user:password part, so no log line (or log file) holds a secret.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

import structlog
from structlog.stdlib import ProcessorFormatter

from gand.errors import ConfigError
from gand.storage import redact_text

FORMAT_VARIABLE = "GAND_LOG_FORMAT"
FORMATS = ("json", "console")
# Loggers of the libraries gand drives. Some install their own stderr/stdout handlers and stop propagation,
# which would print plain-text lines in between gand's JSON ones.
LIBRARY_LOGGERS = ("torch", "accelerate", "DeepSpeed", "botocore", "aiobotocore", "s3fs", "fsspec", "urllib3")
# Chatty at INFO (one line per HTTP request or retry), and request logs may carry signed headers.
QUIET_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3")
SECRET_KEY_WORDS = ("secret", "password", "passwd", "credential", "access_key", "session_token", "api_key", "auth")
REDACTED = "[redacted]"


def log_format(stream=None) -> str:
    """`GAND_LOG_FORMAT` if set, otherwise console output on a terminal and JSON lines anywhere else."""
    chosen = os.environ.get(FORMAT_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in FORMATS:
            raise ConfigError(f"{FORMAT_VARIABLE}: {chosen!r} is not allowed; use one of {', '.join(FORMATS)}")
        return chosen
    stream = stream or sys.stdout
    return "console" if hasattr(stream, "isatty") and stream.isatty() else "json"


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: credential-like keys lose their values, URLs lose their user:password part."""
    for key, value in event_dict.items():
        if any(word in key.lower() for word in SECRET_KEY_WORDS):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def configure_logging(
    rank: int | None = None,
    is_main: bool = True,
    log_file: Path | None = None,
    run_name: str | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Route structlog and the standard library's logging to `stream` (default stdout; stderr for the verbs whose
    stdout is their result, e.g. `gand eval > scores.json`), and to a JSON-lines file, if given.

    Ranks other than the main one report warnings and errors only. `rank` and `run_name`, when given, are bound
    to every line from here on, library lines included.
    """
    level = logging.INFO if is_main else logging.WARNING
    # Bound as fixed fields, not context variables: lines from the upload threads must carry them too.
    bound = {name: value for name, value in (("run", run_name), ("rank", rank)) if value is not None}
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _BindFields(bound),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # Library records arrive as plain logging records: the same processors give them the same shape.
    foreign = [structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(), *shared]
    json_renderer = structlog.processors.JSONRenderer(sort_keys=False)
    console = log_format() == "console"
    stream = stream or sys.stdout
    stream_renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console else json_renderer
    handlers: list[logging.Handler] = [_handler(logging.StreamHandler(stream), stream_renderer, foreign)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_handler(logging.FileHandler(log_file, encoding="utf-8"), json_renderer, foreign))

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "gand", False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    route_library_logs()
    logging.captureWarnings(True)  # warnings.warn(...) becomes a log line too


class _BindFields:
    """A structlog processor adding fixed fields to every line (explicit values win)."""

    def __init__(self, fields: dict[str, Any]):
        self.fields = fields

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for name, value in self.fields.items():
            event_dict.setdefault(name, value)
        return event_dict


def _handler(handler: logging.Handler, renderer: Any, foreign: list[Any]) -> logging.Handler:
    handler.setFormatter(
        ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.gand = True  # type: ignore[attr-defined]  # so a second configure_logging replaces, not adds
    return handler


def route_library_logs() -> None:
    """Send the libraries' own log handlers' records through gand's handlers instead. Call again after importing
    a library that sets up its logger on import (DeepSpeed does)."""
    for name in list(logging.root.manager.loggerDict):
        if not name.startswith(LIBRARY_LOGGERS):
            continue
        library_logger = logging.getLogger(name)
        for handler in [h for h in library_logger.handlers if isinstance(h, logging.StreamHandler)]:
            library_logger.removeHandler(handler)
        library_logger.propagate = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
