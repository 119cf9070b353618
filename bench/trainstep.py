"""Training step: images/s of `gand train` against a minimal hand-written PyTorch loop with the same models, batch
and precision (gand's overhead in %), and gand's fastest setting (bf16 + channels_last) against the bare fp32 loop.

The bare loop is what a reproduction script does: the same G and D (gand's model code), Adam as in the config,
the non-saturating loss on D's real/fake column, fresh noise for each update; batches either already in memory or
from gand's own shard loader (so the comparison isolates the training loop); nothing else: no logging, no
checkpoints, no health statistics, no class or style terms, D's parameters not frozen during G's update.
gand's number is its steady state, from the first to the last logged step (start-up and the final save
excluded), reading real packed data. Runs alternate, in reverse order every other repeat (bare, gand, then gand,
bare), so that a machine slowing down or speeding up hits both alike; gand's overhead is the median over repeats
of its step time over the bare loop's in the same repeat, and images/s are medians.

    .venv/bin/python bench/trainstep.py [--configs dcgan64,can256] [--repeats 2] [--full]
    (internal) bench/trainstep.py --bare CONFIG --resolution R --width W --batch B --steps N [--precision P]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, print_table, write_record

# CPU-sized settings per config: (resolution, width, batch, steps). On a GPU, --full uses the configs' own sizes.
SETTINGS = {"dcgan64": (64, 0.5, 32, 40), "can256": (256, 0.125, 8, 30), "dcgan32": (32, 0.5, 64, 60)}
FULL_STEPS = 60
LOG_EVERY = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="dcgan64,can256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the configs' own width and batch (a GPU's job)")
    parser.add_argument("--work", default="bench/work/trainstep")
    parser.add_argument("--out", default="bench/results/trainstep.json")
    parser.add_argument("--bare", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, default=0.5, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=40, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        print(json.dumps({"seconds_per_step": bare_loop(args)}))
        return 0

    work = REPO / args.work
    data = pack_demo(work)
    import torch

    gpu = torch.cuda.is_available()
    rows = []
    names = args.configs.split(",")
    sizes = {name: full_size(name) if args.full else SETTINGS[name] for name in names}
    for name in names:
        batch = sizes[name][2]
        runs: dict[str, list[float]] = {"bare_memory": [], "bare": [], "gand": []}
        if gpu:  # bf16 on a CPU without bf16 units is emulated, 10-15x slower: the fastest setting is a GPU one
            runs["gand_fastest"] = []
        for repeat in range(args.repeats):
            for key in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
                runs[key].append(measure(key, name, sizes[name], data, work / f"{name}-{key}-{repeat}"))
            print(f"{name} repeat {repeat}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms/step" for k, v in runs.items()),
                  flush=True)  # fmt: skip
        bare = statistics.median(runs["bare"])
        paired = statistics.median(ours / theirs for ours, theirs in zip(runs["gand"], runs["bare"], strict=True))
        for label, key in (("bare loop, batches in memory, fp32", "bare_memory"),
                           ("bare loop, gand's shard loader, fp32", "bare"), ("gand, fp32", "gand"),
                           ("gand, bf16 + channels_last + compile", "gand_fastest")):  # fmt: skip
            if key not in runs:
                rows.append({"config": name, "loop": label, "images_per_second": "GPU only: not measured"})
                continue
            seconds = statistics.median(runs[key])
            overhead = round((paired - 1) * 100, 1) if key == "gand" else None
            rows.append({"config": name, "loop": label, "images_per_second": round(batch / seconds, 1),
                         "ratio": round(bare / seconds, 3), "overhead_percent": overhead})  # fmt: skip
    print_table(rows, [("config", "config"), ("loop", "loop"), ("images_per_second", "images/s"),
                       ("ratio", "vs bare"), ("overhead_percent", "gand overhead %")])  # fmt: skip
    overheads = [row["overhead_percent"] for row in rows if row.get("overhead_percent") is not None]
    print(
        f"target: gand overhead under 3% of the bare loop -> {'met' if max(overheads) < 3 else 'MISSED'} "
        f"({', '.join(f'{o:+.1f}%' for o in overheads)})"
    )
    settings = {"configs": {name: dict(zip(("resolution", "width", "batch", "steps"), sizes[name], strict=True))
                            for name in names}, "repeats": args.repeats, "full": args.full}  # fmt: skip
    write_record("trainstep", args.out, settings, rows, overhead_target_met=max(overheads) < 3)
    return 0


def full_size(name: str) -> tuple[int, float, int, int]:
    """The config's own resolution, width and batch per rank, for a GPU run."""
    from gand.config import load_config

    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.path=unused"])
    return cfg.data.resolution, cfg.model.width, cfg.train.batch_size, FULL_STEPS


def measure(key: str, name: str, size: tuple[int, float, int, int], data: Path, run_dir: Path) -> float:
    """Seconds per step of one run: the bare loop (batches in memory or from gand's loader) or gand."""
    resolution, width, batch, steps = size
    if key.startswith("bare"):
        return bare_subprocess(name, resolution, width, batch, steps, data if key == "bare" else None)
    fastest = ("precision=bf16", "memory.channels_last=true", "memory.compile=true") if key == "gand_fastest" else ()
    return gand_run(name, data, run_dir, resolution, width, batch, steps, *fastest)


def pack_demo(work: Path) -> Path:
    data = work / "packed"
    if not (data / "manifest.json").exists():
        gand = [sys.executable, "-m", "gand.cli"]
        subprocess.run([*gand, "demo-data", str(work / "raw"), "--n", "160"], check=True, capture_output=True)
        subprocess.run([*gand, "pack", str(work / "raw"), str(data), "--resolutions", "32,64,256", "--min-side",
                        "256", "--workers", "2"], check=True, capture_output=True)  # fmt: skip
    return data


def gand_run(name: str, data: Path, run_dir: Path, resolution: int, width: float, batch: int, steps: int,
             *extra: str) -> float:  # fmt: skip
    """Seconds per step of `gand train`, between its first and last logged steps."""
    command = [sys.executable, "-m", "gand.cli", "train", str(REPO / "configs" / f"{name}.yaml"), f"data.path={data}",
               f"data.resolution={resolution}", f"model.width={width}", f"train.batch_size={batch}",
               f"train.max_steps={steps}", f"train.log_every_steps={LOG_EVERY}", f"run.dir={run_dir}",
               "samples.every_steps=100000", "checkpoint.every_steps=100000", "metrics.port=null", "data.workers=1",
               "ema.half_life_kimg=null",  # the bare loop has no EMA either
               "--fresh", *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"gand train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    stamps = [(event["step"], datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")))
              for event in map(json.loads, filter(lambda line: line.startswith("{"), result.stdout.splitlines()))
              if event.get("event") == "train_step"]  # fmt: skip
    (first_step, first), (last_step, last) = stamps[0], stamps[-1]
    return (last - first).total_seconds() / (last_step - first_step)


def bare_subprocess(name: str, resolution: int, width: float, batch: int, steps: int,
                    data: Path | None = None) -> float:  # fmt: skip
    command = [sys.executable, str(Path(__file__)), "--bare", name, "--resolution", str(resolution), "--width",
               str(width), "--batch", str(batch), "--steps", str(steps)]  # fmt: skip
    command += ["--data", str(data)] if data else []
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_step"]


def bare_loop(args) -> float:
    """The hand-written loop: seconds per step after a warm-up of LOG_EVERY steps (as gand's first log point)."""
    import torch
    import torch.nn.functional as F

    from gand.config import load_config
    from gand.models import build_models, spec_from_config

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / f"{args.bare}.yaml", ["data.path=unused", f"data.resolution={args.resolution}",
                                                                f"model.width={args.width}"])  # fmt: skip
    classes = 4  # the demo data's styles, for a class head
    generator, discriminator = build_models(cfg.model.arch, spec_from_config(cfg.model, args.resolution, 3, classes))
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.optim.g.lr, betas=tuple(cfg.optim.g.betas))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.optim.d.lr, betas=tuple(cfg.optim.d.betas))
    in_memory = torch.rand(args.batch, 3, args.resolution, args.resolution) * 2 - 1
    ones, zeros = torch.ones(args.batch), torch.zeros(args.batch)
    batches = None
    if args.data:  # the same data pipeline as gand: one loader worker, shuffled shards
        from gand.data.loader import ImageLoader

        batches = ImageLoader(args.data, args.resolution, args.batch, seed=0, workers=1, shuffle_buffer=1000).batches()

    def step() -> None:
        real = next(batches).images if batches is not None else in_memory
        z = torch.randn(args.batch, cfg.model.latent_dim)
        fake = generator(z)
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real)[:, 0], ones) + \
            F.binary_cross_entropy_with_logits(discriminator(fake.detach())[:, 0], zeros)  # fmt: skip
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # A fresh batch of z for G's update, as gand's recipe draws (the PyTorch DCGAN example reuses `fake`,
        # which saves a G forward but is a different algorithm).
        g_loss = F.binary_cross_entropy_with_logits(discriminator(generator(torch.randn_like(z)))[:, 0], ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    if args.steps <= LOG_EVERY:
        raise SystemExit(f"--steps must be more than the {LOG_EVERY} warm-up steps (got {args.steps})")
    for _ in range(LOG_EVERY):
        step()
    started = time.perf_counter()
    for _ in range(args.steps - LOG_EVERY):
        step()
    return (time.perf_counter() - started) / (args.steps - LOG_EVERY)


if __name__ == "__main__":
    sys.exit(main())
