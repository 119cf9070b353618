"""Log output of a whole process: JSON lines off a terminal, readable lines on one, library logs and threads
included, no secrets. Each case runs in a fresh interpreter, because logging set-up is process-wide."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # a fresh interpreter per case

SCRIPT = """
import logging, threading, warnings
import structlog
from gand.observability.logging import configure_logging
configure_logging(rank=1, is_main=True, run_name="can256")
log = structlog.get_logger("gand.train")
log.info("train_step", step=3, url="s3://AKIAEXAMPLE:hunter2@bucket/run", aws_secret_access_key="hunter2")
logging.getLogger("torch.distributed").warning("from torch: %s", "peer gone")
logging.getLogger("botocore.endpoint").info("request headers: Authorization hunter2")  # too chatty: not shown
thread = threading.Thread(target=lambda: log.info("checkpoint_committed", checkpoint="ckpt-1"))
thread.start(); thread.join()
warnings.warn("deprecated thing")
"""


def run_script(env_format: str | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin", **({"GAND_LOG_FORMAT": env_format} if env_format else {})}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_json_lines_carry_run_and_rank_everywhere_and_never_a_secret():
    output = run_script()
    assert "hunter2" not in output and "AKIAEXAMPLE" not in output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON, library lines included
    events = {line["event"]: line for line in lines}
    assert {"train_step", "from torch: peer gone", "checkpoint_committed"} <= set(events)
    assert any("deprecated thing" in event for event in events)  # warnings.warn too
    assert not any("request headers" in event for event in events)  # botocore's request log is kept quiet
    assert all(line["run"] == "can256" and line["rank"] == 1 for line in lines)
    assert events["train_step"]["url"] == "s3://bucket/run"
    assert events["train_step"]["aws_secret_access_key"] == "[redacted]"
    assert events["from torch: peer gone"]["logger"] == "torch.distributed"
    assert events["from torch: peer gone"]["level"] == "warning"


def test_console_format_is_readable_text():
    output = run_script("console")
    assert "train_step" in output and "from torch: peer gone" in output and "run=can256" in output
    assert not output.lstrip().startswith("{") and "hunter2" not in output
