"""What metrics and health statistics cost per training step, measured inside one process so that the machine's
drift cancels out.

The training loop gathers health statistics (D outputs and accuracy, gradient norms and vanishing shares per
layer group, the cross-rank mean, learning rates, D dominance) only on logging steps, then updates the exporter
and the loss history. Here the same functions the loop calls run on a real model, real packed data and a live
exporter, in alternating blocks of `--log-every` steps:

    off: log-every plain steps            on: log-every - 1 plain steps + 1 step with statistics and metrics

Blocks alternate (off, on, off, on, ...) so slow drift hits both alike; the overhead is the ratio of the median
block times. The exporter is scraped once a second throughout, as Prometheus would; what one scrape costs is
timed on its own.

    .venv/bin/python bench/metrics.py [--config configs/dcgan64.yaml] [--blocks 30] [--log-every 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import REPO, write_record
from gand.config import load_config
from gand.data.loader import ImageLoader
from gand.data.manifest import check_dataset, read_manifest
from gand.observability.curves import LossHistory
from gand.observability.health import discriminator_outputs
from gand.observability.metrics import TrainingMetrics
from gand.observability.report import NetworkReport, StepReport
from gand.train.control import FiniteWatch
from gand.train.engine import build_engine
from gand.train.feed import DeviceFeed
from gand.train.periodic import Outputs, StepLog
from gand.train.snapshot import Networks
from gand.train.state import TrainState
from gand.train.steps import Recipe, setup_networks, train_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/dcgan64.yaml")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=30, help="blocks of each kind")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--work", default="bench/work/metrics")
    parser.add_argument("--out", default="bench/results/metrics.json")
    args = parser.parse_args()

    data = pack_demo(REPO / args.work, args.resolution)
    cfg = load_config(REPO / args.config, [f"data.path={data}", f"data.resolution={args.resolution}",
                                           f"model.width={args.width}", f"train.batch_size={args.batch}",
                                           "data.workers=1", "metrics.port=0"])  # fmt: skip
    run = Harness(cfg)
    scraper = threading.Thread(target=scrape_forever, args=(run.metrics.port, run.stop), daemon=True)
    scraper.start()
    for _ in range(3):  # warm-up: allocator, data workers, first exporter updates
        run.block(args.log_every, with_stats=True)
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for index in range(args.blocks):
        for mode in ("off", "on"):
            seconds[mode].append(run.block(args.log_every, with_stats=mode == "on"))
        print(f"block {index}: off {seconds['off'][-1]:.3f} s, on {seconds['on'][-1]:.3f} s", flush=True)
    scrape_seconds = time_scrapes(run.metrics.port)
    added_seconds = run.time_added_work()
    run.stop.set()

    off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    step_seconds = off / args.log_every
    result = {
        "ms_per_step_off": round(step_seconds * 1000, 2),
        "ms_per_block_off": round(off * 1000, 1),
        "ms_per_block_on": round(on * 1000, 1),
        "overhead_percent": round((on / off - 1) * 100, 2),
        "paired_overhead_percent_median": round(statistics.median(paired_ratios(seconds)) * 100 - 100, 2),
        "ms_added_per_log_step_direct": round(added_seconds * 1000, 2),
        "direct_overhead_percent": round(added_seconds / args.log_every / step_seconds * 100, 3),
        "ms_per_scrape": round(scrape_seconds * 1000, 2),
        "scrape_percent_of_time_at_1_per_second": round(scrape_seconds * 100, 3),
    }
    print(json.dumps(result, indent=2))
    settings = {"config": args.config, "resolution": args.resolution, "width": args.width, "batch": args.batch,
                "log_every_steps": args.log_every, "blocks": args.blocks}  # fmt: skip
    write_record("metrics", args.out, settings, [result], runs=seconds)
    return 0


class Harness:
    """What the training loop builds, and its step, with the statistics switched per call."""

    def __init__(self, cfg):
        manifest, _ = read_manifest(cfg.data.path)
        num_classes = check_dataset(manifest, cfg)
        self.engine = build_engine(cfg.precision, cfg.memory, cfg.train.batch_size)
        self.g, self.d = setup_networks(cfg, self.engine, num_classes)
        self.recipe = Recipe.from_config(cfg, num_classes)
        self.batch_size = cfg.train.batch_size
        loader = ImageLoader(cfg.data.path, cfg.data.resolution, cfg.train.batch_size, seed=0,
                             workers=cfg.data.workers, num_classes=num_classes)  # fmt: skip
        self.feed = DeviceFeed(loader.batches(), self.engine.device, self.engine.channels_last)
        self.metrics = TrainingMetrics(cfg.metrics.port, "bench")
        self.history, self.finite, self.state = LossHistory(), FiniteWatch(), TrainState()
        nets = Networks(self.g, self.d, None, torch.zeros(1, cfg.model.latent_dim), None)  # no EMA, no grid
        outputs = Outputs(self.metrics, None, self.history)
        self.step_log = StepLog(cfg, self.engine, nets, self.recipe, self.feed, loader, outputs, self.state)
        self.stop = threading.Event()

    def block(self, steps: int, with_stats: bool) -> float:
        started = time.perf_counter()
        for index in range(steps):
            self.train_step(with_stats and index == steps - 1)
        return time.perf_counter() - started

    def time_added_work(self, repeats: int = 200) -> float:
        """Median seconds of what a logging step adds, timed directly on the model's real gradients (far less
        noisy than whole steps): D's outputs and accuracy, both networks' gradient statistics, the cross-rank
        mean, the host numbers, the exporter update and the loss history."""
        for net in (self.g, self.d):  # gradients of the real shapes (the optimizer step cleared the real ones)
            for parameter in net.module.parameters():
                parameter.grad = torch.randn_like(parameter) * 0.01
        real_logits, fake_logits = torch.randn(self.batch_size, 1), torch.randn(self.batch_size, 1)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            report = StepReport(detailed=True, d_outputs=discriminator_outputs(real_logits, fake_logits, False))
            report.discriminator = NetworkReport(losses={"adv": torch.tensor(1.0)})
            report.generator = NetworkReport(losses={"adv": torch.tensor(1.0)})
            self.engine.gradient_stats(self.d, report.discriminator)
            self.engine.gradient_stats(self.g, report.generator)
            self.record(report)
            timings.append(time.perf_counter() - started)
        for net in (self.g, self.d):
            net.optimizer.zero_grad(set_to_none=True)
        return statistics.median(timings)

    def record(self, report: StepReport) -> None:
        """The loop's logging-step bookkeeping after the statistics are gathered."""
        host = self.step_log.host_numbers(self.state)
        logged = report.read(self.engine.mean_across_ranks, self.engine.world_size, host)
        self.metrics.record_step(logged)
        self.history.record_step(logged)

    def train_step(self, with_stats: bool) -> None:
        batch = self.feed.next()
        report = train_step(self.engine, self.g, self.d, self.recipe, batch, detailed=with_stats)
        self.finite.observe(report.discriminator.finite() & report.generator.finite())  # every step, as in the loop
        self.state.advance(self.batch_size)
        if with_stats:
            self.finite.read()  # a logging step reads the flag, as the loop's check does
            self.record(report)


def paired_ratios(seconds: dict[str, list[float]]) -> list[float]:
    """Each "on" block over the "off" block just before it: neighbours share the machine's state."""
    return [on / off for off, on in zip(seconds["off"], seconds["on"], strict=True)]


def pack_demo(work: Path, resolution: int) -> Path:
    data = work / "packed"
    if not (data / "manifest.json").exists():
        gand = [sys.executable, "-m", "gand.cli"]
        subprocess.run([*gand, "demo-data", str(work / "raw"), "--n", "256"], check=True, capture_output=True)
        subprocess.run([*gand, "pack", str(work / "raw"), str(data), "--resolutions", str(resolution),
                        "--min-side", "128", "--workers", "2"], check=True, capture_output=True)  # fmt: skip
    return data


def scrape_forever(port: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()


def time_scrapes(port: int, count: int = 50) -> float:
    """Median seconds for one full scrape (request, exposition of every series, response)."""
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


if __name__ == "__main__":
    sys.exit(main())
