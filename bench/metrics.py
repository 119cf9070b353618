"""What metrics and health statistics cost: the same training run with the exporter and per-step statistics on
(log every `--log-every` steps, /metrics served and scraped once a second) and off (no exporter, one log line at the
end), alternating, several times. Reports seconds per step for each and their ratio.

    .venv/bin/python bench/metrics.py [--config configs/dcgan64.yaml] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/dcgan64.yaml")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="bench/work/metrics")
    parser.add_argument("--out", default="bench/results/metrics.json")
    args = parser.parse_args()

    work = REPO / args.work
    shutil.rmtree(work, ignore_errors=True)
    data = work / "packed"
    run([sys.executable, "-m", "gand.cli", "demo-data", str(work / "raw"), "--n", "256"])
    run([sys.executable, "-m", "gand.cli", "pack", str(work / "raw"), str(data), "--resolutions",
         str(args.resolution), "--min-side", "128", "--workers", "2"])  # fmt: skip
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for mode in ("off", "on"):
            seconds[mode].append(seconds_per_step(args, data, work / f"{mode}-{repeat}", mode == "on"))
            print(f"repeat {repeat} metrics {mode}: {seconds[mode][-1] * 1000:.1f} ms/step", flush=True)
    off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    result = {
        "bench": "metrics",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "config": args.config,
        "steps": args.steps,
        "log_every_steps": args.log_every,
        "ms_per_step_metrics_off": round(off * 1000, 2),
        "ms_per_step_metrics_on": round(on * 1000, 2),
        "overhead_percent": round((on / off - 1) * 100, 2),
        "runs": seconds,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


def seconds_per_step(args, data: Path, run_dir: Path, metrics_on: bool) -> float:
    port = free_port() if metrics_on else None
    command = [
        sys.executable, "-m", "gand.cli", "train", str(REPO / args.config), f"data.path={data}",
        f"data.resolution={args.resolution}", f"run.dir={run_dir}", f"model.width={args.width}",
        f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "data.workers=1",
        f"train.log_every_steps={args.log_every if metrics_on else args.steps}",
        f"metrics.port={port if metrics_on else 'null'}", "samples.every_steps=100000",
        "checkpoint.every_steps=100000", "ema.half_life_kimg=null",
    ]  # fmt: skip
    stop = threading.Event()
    if metrics_on:  # a Prometheus-like scraper, once a second
        threading.Thread(target=scrape_forever, args=(port, stop), daemon=True).start()
    output = run(command)
    stop.set()
    stamps = {}
    for line in output.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] in ("train_start", "train_done"):
                stamps[event["event"]] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    return (stamps["train_done"] - stamps["train_start"]).total_seconds() / args.steps


def scrape_forever(port: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command: list) -> str:
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}) after {time.perf_counter() - started:.0f} s: {command}\n"
                 f"{result.stderr[-3000:]}")  # fmt: skip
    return result.stdout


if __name__ == "__main__":
    sys.exit(main())
