"""The code style is part of the build: ruff's lint and format checks over the package, tests and benchmarks."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration  # an external tool: ruff
RUFF = Path(sys.executable).parent / "ruff"


@pytest.mark.skipif(not RUFF.exists() and shutil.which("ruff") is None, reason="ruff is installed by the test extras")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    ruff = str(RUFF) if RUFF.exists() else "ruff"
    result = subprocess.run(
        [ruff, *command, "gand", "tests", "bench", "deploy"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
