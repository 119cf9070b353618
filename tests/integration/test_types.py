"""The type check over gand/: mypy (with pydantic's plugin, settings in pyproject.toml) must find no error that is
not in tests/mypy-baseline.txt, the errors known when the check came in (issue 22). Fixing one means taking it out
of the baseline: `GAND_WRITE_MYPY_BASELINE=1 pytest tests/integration/test_types.py` rewrites the file."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration  # an external tool: mypy
BASELINE = REPO / "tests" / "mypy-baseline.txt"


def mypy_errors() -> list[str]:
    """mypy's errors as `path: message  [code]`, without line numbers (code moves; the finding is the same)."""
    result = subprocess.run([sys.executable, "-m", "mypy", "gand", "--no-error-summary", "--show-error-codes"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "No module named mypy" not in result.stderr, "mypy is installed by the test extras: pip install -e '.[test]'"
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 2: mypy itself failed (a config error, a crash)
    assert result.returncode == 0 or "error:" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    errors = []
    for line in result.stdout.splitlines():
        match = re.match(r"^(gand/[^:]+):\d+(?::\d+)?: error: (.*)$", line)
        if match:
            errors.append(f"{match.group(1)}: {match.group(2)}")
    return sorted(errors)


def test_no_type_errors_beyond_the_baseline():
    errors = mypy_errors()
    if os.environ.get("GAND_WRITE_MYPY_BASELINE"):
        BASELINE.write_text("".join(f"{error}\n" for error in errors))
    known = BASELINE.read_text().splitlines()
    remaining = list(known)
    new = []
    for error in errors:  # a multiset difference: the same message twice in one file counts twice
        if error in remaining:
            remaining.remove(error)
        else:
            new.append(error)
    assert not new, "new type errors (the baseline holds only those known when the check came in):\n" + "\n".join(new)
    assert not remaining, (
        "fixed type errors still in the baseline: run GAND_WRITE_MYPY_BASELINE=1 pytest "
        "tests/integration/test_types.py\n" + "\n".join(remaining)
    )
