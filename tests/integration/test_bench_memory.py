"""The GPU memory bench's command keeps working: its CPU smoke mode runs every setting through the real engine."""

import json
import sys

import pytest

from tests.conftest import REPO, run_command

pytestmark = pytest.mark.integration


def test_memory_bench_smoke_runs_every_setting(tmp_path):
    out = tmp_path / "memory.json"
    result = run_command([sys.executable, str(REPO / "bench" / "memory.py"), "--smoke", "--out", str(out)], timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["setting"] for row in rows] == [
        "fp32", "bf16", "bf16 + checkpointing", "bf16 + checkpointing + ZeRO-2 + optimizer offload",
        "gand plan's choice for a T4 budget",
    ]  # fmt: skip
    assert all("error" not in row and row["images_per_second"] > 0 for row in rows), rows
    # The last row ran what `gand plan` chose, with `precision: auto` resolved for this device (fp32 on a CPU).
    choice = rows[-1]
    assert choice["overrides"].startswith("precision=auto memory.micro_batch=") and choice["precision"] == "fp32"
