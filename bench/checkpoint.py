"""Checkpoint cost: the training stall per save, and the time from process start to the first resumed step.

For each config (dcgan64, can256) and store (a local folder, and a real S3-protocol server on 127.0.0.1: moto,
through s3fs), it trains a few steps with a checkpoint every other step, twice:
  - background: gand's default, the state is turned into bytes in host memory and uploaded by a thread
  - synchronous (the baseline): the same save, with the upload inside the stall (`checkpoint.background_upload=false`)
then starts the same command again and times process start -> first resumed step (wall clock, as a user sees it).

    .venv/bin/python bench/checkpoint.py [--configs dcgan64,can256] [--batch 4] [--out bench/results/checkpoint.json]

The stall is what each rank's training loop waits (`checkpoint_snapshot` events' stall_seconds); full widths as in
the configs, small batches so that CPU steps stay short (batch size does not change checkpoint size).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, write_record

RESOLUTION = {"dcgan64": 64, "can256": 256}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="dcgan64,can256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="steps per run; a save every other step")
    parser.add_argument("--work", default="bench/work/checkpoint")
    parser.add_argument("--out", default="bench/results/checkpoint.json")
    args = parser.parse_args()

    work = REPO / args.work
    shutil.rmtree(work, ignore_errors=True)
    data = make_data(work / "data")
    endpoint, server = start_s3()
    rows = []
    try:
        for name in args.configs.split(","):
            for store in ("local", "s3"):
                rows.append(measure(name, store, data, work, args.batch, args.steps, endpoint))
                print_row(rows[-1])
    finally:
        server.stop()
    write_record("checkpoint", args.out, {"configs": args.configs, "batch": args.batch, "steps": args.steps}, rows)
    return 0


def make_data(dest: Path) -> Path:
    raw, packed = dest / "raw", dest / "packed"
    run([sys.executable, "-m", "gand.cli", "demo-data", str(raw), "--n", "48"])
    run([sys.executable, "-m", "gand.cli", "pack", str(raw), str(packed), "--resolutions", "64,256",
         "--min-side", "256", "--shard-size", "16", "--workers", "2"])  # fmt: skip
    return packed


def start_s3():
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    import boto3

    boto3.client("s3").create_bucket(Bucket="gand-bench")
    return endpoint, server


def measure(name: str, store: str, data: Path, work: Path, batch: int, steps: int, endpoint: str) -> dict:
    stalls = {}
    for mode, background in (("background", True), ("synchronous", False)):
        run_dir = work / f"{name}-{store}-{mode}"
        url = f"s3://gand-bench/{name}-{mode}" if store == "s3" else str(run_dir / "checkpoints")
        command = train_command(name, data, run_dir, url, batch, steps, background)
        events = [json.loads(line) for line in run(command).splitlines() if line.startswith("{")]
        stalls[mode] = [e["stall_seconds"] for e in events if e["event"] == "checkpoint_snapshot"]
    resume_seconds, resumed_step = time_to_first_resumed_step(
        train_command(
            name, data, work / f"{name}-{store}-background", url_for(name, store, work), batch, steps + 1, True
        )
    )
    checkpoint_bytes = sum_sizes(name, store, work)
    return {
        "config": name,
        "store": store,
        "checkpoint_mib": round(checkpoint_bytes / 2**20, 1),
        "stall_seconds_background": round(statistics.median(stalls["background"]), 3),
        "stall_seconds_synchronous": round(statistics.median(stalls["synchronous"]), 3),
        "stall_ratio_background_vs_synchronous": round(
            statistics.median(stalls["background"]) / statistics.median(stalls["synchronous"]), 3
        ),
        "saves_measured": len(stalls["background"]),
        "process_start_to_first_resumed_step_seconds": round(resume_seconds, 2),
        "resumed_at_step": resumed_step,
    }


def url_for(name: str, store: str, work: Path) -> str:
    return (
        f"s3://gand-bench/{name}-background"
        if store == "s3"
        else str(work / f"{name}-local-background" / "checkpoints")
    )


def train_command(name: str, data: Path, run_dir: Path, url: str, batch: int, steps: int, background: bool) -> list:
    return [
        sys.executable, "-m", "gand.cli", "train", str(REPO / "configs" / f"{name}.yaml"),
        f"data.path={data}", f"data.resolution={RESOLUTION[name]}", f"run.dir={run_dir}", f"checkpoint.url={url}",
        f"train.batch_size={batch}", f"train.max_steps={steps}", "train.log_every_steps=1", "data.workers=1",
        "samples.every_steps=100000", "samples.count=4", "checkpoint.every_steps=2",
        f"checkpoint.background_upload={str(background).lower()}", "metrics.port=null",
    ]  # fmt: skip


def time_to_first_resumed_step(command: list) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    elapsed, step = float("nan"), -1
    for line in proc.stdout:
        if line.startswith("{") and '"train_step"' in line:
            elapsed, step = time.perf_counter() - started, json.loads(line)["step"]
            break
    proc.wait()
    return elapsed, step


def sum_sizes(name: str, store: str, work: Path) -> int:
    from gand.checkpoint.manager import CheckpointManager, SingleProcess

    manager = CheckpointManager(url_for(name, store, work), SingleProcess())
    newest = manager.committed()[-1]
    return sum(manager.store.size(f"{newest}/{f}") for f in manager.store.list_dir(newest))


def run(command: list) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(map(str, command))}\n{result.stderr[-3000:]}")
    return result.stdout


def print_row(row: dict) -> None:
    print(
        f"{row['config']:8s} {row['store']:5s} {row['checkpoint_mib']:7.1f} MiB"
        f"  stall {row['stall_seconds_background']:.3f} s"
        f" (synchronous {row['stall_seconds_synchronous']:.3f} s, x{row['stall_ratio_background_vs_synchronous']:.2f})"
        f"  start->first resumed step {row['process_start_to_first_resumed_step_seconds']:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
