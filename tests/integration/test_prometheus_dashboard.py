"""A real Prometheus scrapes a real training run and the packing daemon; every dashboard query returns data and
every alert rule loads."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import torch

from gand.eval.fid import random_inception
from tests.conftest import REPO, free_port, gand, tiny_config
from tests.integration.preempt import Live, train_command

pytestmark = pytest.mark.integration
sys.path.insert(0, str(REPO / "deploy" / "grafana"))
from build_dashboard import dashboard, queries  # noqa: E402


def query(port: int, expression: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_prometheus_scrapes_a_run_and_every_panel_and_rule_works(tmp_path, packed, promtool):
    prometheus = shutil.which("prometheus")
    assert prometheus, "the prometheus package is installed by `make test`"
    trainer_port, daemon_port, prometheus_port = free_port(), free_port(), free_port()

    # The packing daemon, with one file it must skip (so the skipped-by-reason series exists).
    source = tmp_path / "source"
    assert gand("demo-data", str(source), "--n", "6").returncode == 0
    (source / "noon" / "broken.jpg").write_bytes(b"not a jpeg")
    daemon = Live([sys.executable, "-m", "gand.cli", "daemon", str(source), str(tmp_path / "packed"), "--resolutions",
                   "32", "--interval", "1", "--workers", "1", "--metrics-port", str(daemon_port)])  # fmt: skip
    # fp16 on CPU, so that the loss-scale series exist too; evaluation with a random-weight Inception network
    # (no download), so that the evaluation panels have data.
    weights = random_inception(str(tmp_path / "random-inception.pth"))
    config = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 1},
                         samples={"every_steps": 3},
                         augment={"policy": ["translation"], "target": 0.6, "adjust_every": 1},  # ADA's panel
                         eval={"every_kimg": 0.024, "samples": 10, "inception_weights": weights},
                         metrics={"port": trainer_port},
                         checkpoint={"every_steps": 3, "preemption_notice": "gcp",  # polled, unreachable: no notice
                                     "notice_endpoint": f"http://127.0.0.1:{free_port()}"})  # fmt: skip
    trainer = Live(train_command(config, "precision=fp16"))
    settings = tmp_path / "prometheus.yml"
    settings.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "deploy" / "prometheus" / "rules.yaml")],
        "scrape_configs": [
            {"job_name": "gand", "static_configs": [{"targets": [f"127.0.0.1:{trainer_port}"]}]},
            {"job_name": "gand-daemon", "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"]}]},
        ],
    }))  # fmt: skip
    server = subprocess.Popen([prometheus, f"--config.file={settings}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        trainer.wait_for(lambda e: e["event"] == "checkpoint_committed" and e["checkpoint"] >= "ckpt-000000000072")
        expressions = queries(dashboard())
        gpu_only = [e for e in expressions if "gand_gpu_" in e] if not torch.cuda.is_available() else []

        def missing() -> list[str]:
            return [e for e in expressions if e not in gpu_only and not query(prometheus_port, e)]

        wait_until(lambda: not missing(), timeout=90, what=f"data for every panel query (missing: {missing()})")
        rules = wait_until(lambda: json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{prometheus_port}/api/v1/rules", timeout=10).read())["data"]["groups"],
            timeout=30, what="rules")  # fmt: skip
        loaded = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
        assert len(loaded) == 12 and set(loaded.values()) == {"ok"}, loaded
    finally:
        server.terminate()
        server.wait(timeout=30)
        trainer.stop_group(signal.SIGTERM)
        daemon.stop_group(signal.SIGTERM)
        trainer.finish(timeout=120)
        daemon.finish(timeout=60)
