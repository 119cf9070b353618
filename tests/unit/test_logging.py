"""Log format choice in-process; whole-process output (JSON lines, console text, redaction) is in
tests/integration/test_logging_process.py."""

import io

import pytest

from gand.errors import ConfigError
from gand.observability.logging import log_format


def test_format_follows_the_terminal_unless_set(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("GAND_LOG_FORMAT", raising=False)
    assert log_format(Terminal()) == "console" and log_format(io.StringIO()) == "json"
    monkeypatch.setenv("GAND_LOG_FORMAT", "json")
    assert log_format(Terminal()) == "json"
    monkeypatch.setenv("GAND_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match=r"GAND_LOG_FORMAT.*json, console"):
        log_format()
