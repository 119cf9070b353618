"""The training exporter, scraped for real while a run trains, and checked by Prometheus's own promtool."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import free_port, tiny_config
from tests.integration.preempt import Live, accelerate_command, train_command

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def value(text: str, series: str) -> float:
    """The value of one exact series line, e.g. 'gand_discriminator_accuracy{input="real"}'."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} not exported"
    return float(match.group(1))


def test_a_training_run_exports_progress_health_data_and_checkpoint_metrics(tmp_path, packed, promtool):
    port = free_port()
    config = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 2},
                         samples={"every_steps": 4}, checkpoint={"every_steps": 4}, metrics={"port": port})  # fmt: skip
    live = Live(train_command(config))
    try:
        live.wait_for(lambda e: e["event"] == "checkpoint_committed" and e["checkpoint"] >= "ckpt-000000000064")
        live.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 10)
        # The log line comes just before the metrics update: scrape until the exporter has caught up.
        deadline = time.monotonic() + 30
        while value(text := scrape(port), "gand_train_steps") < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        live.proc.send_signal(signal.SIGTERM)
        assert live.finish() == 75

    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked.stdout

    assert value(text, "gand_train_steps") >= 10
    assert value(text, "gand_train_images_seen") == value(text, "gand_train_steps") * 8
    for side in ("real", "fake"):
        assert 0 <= value(text, f'gand_discriminator_output{{input="{side}"}}') <= 1
        assert 0 <= value(text, f'gand_discriminator_accuracy{{input="{side}"}}') <= 1
    for network in ("generator", "discriminator"):
        assert value(text, f'gand_grad_norm{{network="{network}"}}') > 0
        assert value(text, f'gand_learning_rate{{network="{network}"}}') == pytest.approx(2e-4)
    assert 0 <= value(text, 'gand_vanishing_gradient_ratio{group="blocks.0",network="discriminator"}') <= 1
    assert value(text, "gand_health_sample_diversity") > 0
    assert value(text, "gand_health_discriminator_dominating") in (0, 1)
    assert value(text, "gand_data_wait_seconds_total") > 0 and value(text, "gand_data_batches_total") >= 10
    assert value(text, "process_resident_memory_bytes") > 0
    assert value(text, "gand_checkpoint_commits_total") >= 2
    assert value(text, "gand_checkpoint_stall_seconds_count") >= 2
    assert value(text, "gand_checkpoint_size_bytes") > 0
    assert 'gand_train_loss{network="d",term="adv"}' in text and "gand_build_info" in text


def test_two_ranks_export_one_endpoint_with_images_summed_over_ranks(tmp_path, packed, promtool):
    port = free_port()
    config = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 1},
                         samples={"every_steps": 100_000}, checkpoint={"every_steps": 100_000},
                         metrics={"port": port})  # fmt: skip
    live = Live(accelerate_command(config))
    try:
        event = live.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 3)
        text = scrape(port)
    finally:
        live.stop_group(signal.SIGTERM)
        live.finish(timeout=120)
    steps = value(text, "gand_train_steps")
    assert steps >= event["step"]
    assert value(text, "gand_train_images_seen") == steps * 8 * 2  # batch 8 on each of two ranks
    assert value(text, "gand_data_batches_total") >= 3  # per rank, averaged over the two
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout
