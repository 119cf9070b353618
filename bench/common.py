"""What every benchmark shares: the record it writes (machine, versions, command, date), its table, and a timer.

Each bench prints a table of ratios against a baseline measured in the same run and writes the same numbers as
JSON under bench/results/ (git-ignored); docs/benchmarks.md holds the latest ones with their commands.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def environment() -> dict[str, Any]:
    """Machine and library versions, for the record."""
    import numpy
    import PIL
    import torch

    from gand import __version__

    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"}
    if torch.cuda.is_available():
        machine["device"] = torch.cuda.get_device_name(0)
    versions = {"gand": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, "pillow": PIL.__version__}  # fmt: skip
    return {"machine": machine, "versions": versions}


def write_record(bench: str, out: str, settings: dict[str, Any], rows: list[dict[str, Any]], **extra: Any) -> Path:
    """bench/results/<bench>.json (or `out`) with the environment, the exact command and the date."""
    record = {
        "bench": bench,
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "settings": settings,
        "rows": rows,
        **extra,
    }
    path = REPO / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    print(f"written {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Rows as an aligned text table; `columns` are (key, heading). Floats get 2 decimals, ratios an x."""
    cells = [[_cell(key, row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(heading), *(len(line[i]) for line in cells)) for i, (_, heading) in enumerate(columns)]
    print()
    print("  ".join(heading.ljust(width) for (_, heading), width in zip(columns, widths, strict=True)))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _cell(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}x" if key == "ratio" else f"{value:.2f}"
    return "" if value is None else str(value)


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started
