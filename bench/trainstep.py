"""Training step: where the time goes between a hand-written loop and `gand train`, on one device, four numbers
per config (images/s, each run in its own process, all on the same device: the GPU when there is one):

    bare      a minimal hand-written PyTorch loop: gand's G and D, Adam as in the config, the non-saturating
              loss, fresh noise per update, one batch already on the device; nothing else
    steps     gand's step functions (one D and one G update, the config's objective) on a batch on the device
    memory    the whole `gand train` loop (EMA, checkpoint decisions, logging every 10 steps) fed one batch from
              host memory over and over: the loop's own cost, without the loader
    loader    the whole `gand train` command reading raw shards with its loader, on an epoch of hundreds of
              batches: what users run

bare vs steps is the cost of gand's objective and engine; steps vs memory the loop's; memory vs loader the data
path's. On a GPU two more rows time the step functions in bf16, and in bf16 with each network compiled
(`memory.compile=true`; issue 17's target: the fastest setting >= 2x the fp32 step functions). Runs alternate order
every other repeat (so a machine that speeds up or slows down hits all alike); images/s are medians over repeats.
gand's numbers are its steady state between its first and last logged steps (start-up and the final save excluded).

Targets (issue 16): on a GPU, loader >= 90% of steps for CAN-256 at batch 64, and dcgan32 at batch 64 >= 20,000
images/s on an H100/H200-class GPU.

    .venv/bin/python bench/trainstep.py [--configs dcgan64,can256] [--repeats 2] [--full]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, print_table, write_record

# CPU-sized settings per config: (resolution, width, batch, steps). On a GPU, --full uses the configs' own sizes
# (batch 64: the measured H200 table's batch).
SETTINGS = {"dcgan64": (64, 0.5, 32, 40), "can256": (256, 0.125, 8, 30), "dcgan32": (32, 0.5, 64, 60)}
FULL_BATCH = 64
FULL_STEPS = {"can256": 100, "dcgan64": 200, "dcgan32": 400}  # a few seconds of steady state on an H200
LOG_EVERY = 10
EPOCH_BATCHES = 200  # "an epoch of hundreds of batches"
LABELS = {
    "bare": "bare PyTorch loop, batch on the device",
    "steps": "gand step functions, batch on the device",
    "memory": "gand train, batches from host memory",
    "loader": "gand train, shard loader (raw shards)",
    "steps_bf16": "gand step functions, bf16",
    "steps_bf16_compile": "gand step functions, bf16, torch.compile",
}
# The step-function rows: their precision and whether the networks are compiled.
STEP_VARIANTS = {"steps": ("fp32", False), "steps_bf16": ("bf16", False), "steps_bf16_compile": ("bf16", True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="dcgan64,can256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the configs' own width, batch 64 (a GPU's job)")
    parser.add_argument("--images", type=int, default=160, help="demo images packed for the loader row")
    parser.add_argument("--rows", default=None, help="only these rows (comma-separated keys, e.g. steps,steps_bf16)")
    parser.add_argument("--sizes", default=None, help="RES,WIDTH,BATCH,STEPS for every config (a quick check)")
    parser.add_argument("--work", default="bench/work/trainstep")
    parser.add_argument("--out", default="bench/results/trainstep.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: bare | steps | memory
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.one:
        size = tuple(json.loads(args.size))
        if args.one == "memory":
            return train_from_memory(rest)
        seconds = ONE[args.one](args.config, size, args.precision, args.compile)
        print(json.dumps({"seconds_per_step": seconds}))
        return 0

    import torch

    gpu = torch.cuda.is_available()
    work = REPO / args.work
    data = pack_demo(work, args.images)
    names = args.configs.split(",")
    sizes = {name: full_size(name) if args.full else SETTINGS[name] for name in names}
    if args.sizes:
        resolution, width, batch, steps = args.sizes.split(",")
        sizes = dict.fromkeys(names, (int(resolution), float(width), int(batch), int(steps)))
    keys = ["bare", "steps", "memory", "loader"] + (["steps_bf16", "steps_bf16_compile"] if gpu else [])
    if args.rows:
        unknown = set(args.rows.split(",")) - set(LABELS)
        if unknown or "steps" not in args.rows.split(","):
            parser.error(f"--rows: {sorted(unknown) or 'steps is the baseline and must be one'}; known: {list(LABELS)}")
        keys = [key for key in keys if key in args.rows.split(",")]
    rows = []
    for name in names:
        runs: dict[str, list[float]] = {key: [] for key in keys}
        for repeat in range(args.repeats):
            for key in keys[:: 1 if repeat % 2 == 0 else -1]:
                runs[key].append(measure(key, name, sizes[name], data, work / f"{name}-{key}-{repeat}"))
            print(f"{name} repeat {repeat}: " + ", ".join(f"{k} {v[-1] * 1000:.1f} ms/step" for k, v in runs.items()),
                  flush=True)  # fmt: skip
        batch = sizes[name][2]
        steps = statistics.median(runs["steps"])
        for key in keys:
            seconds = statistics.median(runs[key])
            rows.append({"config": name, "loop": LABELS[key], "images_per_second": round(batch / seconds, 1),
                         "vs_steps": round(steps / seconds, 3)})  # fmt: skip
    print_table(rows, [("config", "config"), ("loop", "what runs"), ("images_per_second", "images/s"),
                       ("vs_steps", "vs gand step functions")])  # fmt: skip
    loader_share = {row["config"]: row["vs_steps"] for row in rows if row["loop"] == LABELS["loader"]}
    if loader_share:
        print("gand train with its loader, as a share of its step functions' images/s: "
              + ", ".join(f"{name} {share:.0%}" for name, share in loader_share.items())
              + ("" if gpu else " (on a CPU the model is the limit: GPU targets need a GPU)"))  # fmt: skip
    settings = {"configs": {name: dict(zip(("resolution", "width", "batch", "steps"), sizes[name], strict=True))
                            for name in names}, "repeats": args.repeats, "full": args.full, "device": "cuda" if gpu
                else "cpu", "epoch_batches": EPOCH_BATCHES}  # fmt: skip
    write_record("trainstep", args.out, settings, rows, loader_share_of_steps=loader_share)
    return 0


def full_size(name: str) -> tuple[int, float, int, int]:
    """The config's own resolution and width, batch 64 per rank, for a GPU run."""
    from gand.config import load_config

    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.path=unused"])
    return cfg.data.resolution, cfg.model.width, FULL_BATCH, FULL_STEPS.get(name, 100)


def measure(key: str, name: str, size: tuple[int, float, int, int], data: Path, run_dir: Path) -> float:
    """Seconds per step of one run, in its own process."""
    if key == "loader":
        return gand_run(gand_command(name, data, run_dir, size), data_path=data)
    if key == "memory":
        own = [sys.executable, str(Path(__file__)), "--one", "memory", "--size", json.dumps(size)]
        return gand_run(own + gand_command(name, data, run_dir, size)[3:], data_path=data)
    precision, compiled = STEP_VARIANTS.get(key, ("fp32", False))
    one = "steps" if key.startswith("steps") else key
    command = [sys.executable, str(Path(__file__)), "--one", one, "--config", name, "--size", json.dumps(size),
               "--precision", precision] + (["--compile"] if compiled else [])  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:  # the row reads nan; the other rows still run
        print(f"{key} run failed ({result.returncode}):\n{result.stderr[-3000:]}", flush=True)
        return math.nan
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_step"]


def pack_demo(work: Path, images: int) -> Path:
    data = work / f"packed-raw-{images}"
    if not (data / "manifest.json").exists():
        gand = [sys.executable, "-m", "gand.cli"]
        subprocess.run([*gand, "demo-data", str(work / f"raw-{images}"), "--n", str(images)], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([*gand, "pack", str(work / f"raw-{images}"), str(data), "--resolutions", "32,64,256",
                        "--min-side", "256", "--output-format", "raw"], check=True, capture_output=True)  # fmt: skip
    return data


def gand_command(name: str, data: Path, run_dir: Path, size: tuple[int, float, int, int]) -> list[str]:
    resolution, width, batch, steps = size
    return [sys.executable, "-m", "gand.cli", "train", str(REPO / "configs" / f"{name}.yaml"), f"data.path={data}",
            f"data.resolution={resolution}", f"model.width={width}", f"train.batch_size={batch}",
            f"train.max_steps={steps}", f"train.log_every_steps={LOG_EVERY}", f"run.dir={run_dir}",
            f"data.epoch_images={EPOCH_BATCHES * batch}", "samples.every_steps=100000",
            "checkpoint.every_steps=100000", "checkpoint.every_seconds=null", "metrics.port=null",
            "--fresh"]  # fmt: skip


def gand_run(command: list[str], data_path: Path) -> float:
    """Seconds per step of a `gand train` run, between its first and last logged steps."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"gand train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    stamps = [(event["step"], datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")))
              for event in map(json.loads, filter(lambda line: line.startswith("{"), result.stdout.splitlines()))
              if event.get("event") == "train_step"]  # fmt: skip
    (first_step, first), (last_step, last) = stamps[0], stamps[-1]
    return (last - first).total_seconds() / (last_step - first_step)


def _config(name: str, size: tuple[int, float, int, int], precision: str = "fp32", compiled: bool = False):
    from gand.config import load_config

    resolution, width, batch, _ = size
    return load_config(REPO / "configs" / f"{name}.yaml", ["data.path=unused", f"data.resolution={resolution}",
                       f"model.width={width}", f"train.batch_size={batch}", f"precision={precision}",
                       f"memory.compile={str(compiled).lower()}"])  # fmt: skip


def _timed(step, steps: int) -> float:
    """Seconds per step after LOG_EVERY warm-up steps, the device drained before each clock reading."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    if steps <= LOG_EVERY:
        raise SystemExit(f"steps must be more than the {LOG_EVERY} warm-up steps (got {steps})")
    for _ in range(LOG_EVERY):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(steps - LOG_EVERY):
        step()
    sync()
    return (time.perf_counter() - started) / (steps - LOG_EVERY)


CLASSES = 4  # the demo data's styles, for a class head


def bare_loop(name: str, size: tuple[int, float, int, int], precision: str, compiled: bool = False) -> float:
    """The hand-written loop, on the same device as gand (the GPU when there is one)."""
    import torch
    import torch.nn.functional as F

    from gand.models import build_models, spec_from_config

    torch.manual_seed(0)
    cfg = _config(name, size)
    resolution, _, batch, steps = size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator, discriminator = build_models(cfg.model.arch, spec_from_config(cfg.model, resolution, 3, CLASSES))
    generator, discriminator = generator.to(device), discriminator.to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.optim.g.lr, betas=tuple(cfg.optim.g.betas))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.optim.d.lr, betas=tuple(cfg.optim.d.betas))
    real = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    ones, zeros = torch.ones(batch, device=device), torch.zeros(batch, device=device)

    torch.backends.cudnn.benchmark = device.type == "cuda"  # what a hand-written GPU script usually sets

    def step() -> None:
        z = torch.randn(batch, cfg.model.latent_dim, device=device)
        with torch.no_grad():  # D's fakes: G gets its own forward below (as gand's recipe does)
            fake = generator(z)
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real)[:, 0], ones) + \
            F.binary_cross_entropy_with_logits(discriminator(fake)[:, 0], zeros)  # fmt: skip
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # A fresh batch of z for G's update, as gand's recipe draws (the PyTorch DCGAN example reuses `fake`,
        # which saves a G forward but is a different algorithm).
        g_loss = F.binary_cross_entropy_with_logits(discriminator(generator(torch.randn_like(z)))[:, 0], ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    return _timed(step, steps)


def step_functions(name: str, size: tuple[int, float, int, int], precision: str, compiled: bool = False) -> float:
    """gand's step functions, on a uint8 batch already on the device, with the engine's defaults (compiling happens
    in the warm-up steps)."""
    from gand.train.engine import build_engine
    from gand.train.steps import Recipe, setup_networks, synthetic_batch, train_step

    cfg = _config(name, size, precision, compiled)
    _, _, batch, steps = size
    engine = build_engine(cfg.precision, cfg.memory, batch)
    g, d = setup_networks(cfg, engine, CLASSES)
    recipe = Recipe.from_config(cfg, CLASSES)
    data = synthetic_batch(cfg, batch, CLASSES, engine)
    return _timed(lambda: train_step(engine, g, d, recipe, data), steps)


ONE = {"bare": bare_loop, "steps": step_functions}


def train_from_memory(arguments: list[str]) -> int:
    """`gand train ARGS` with the loader replaced by one real batch served from host memory, again and again (the
    loop and the host-to-device copy stay; reading and decoding go): the loop's own cost."""
    import itertools

    from gand import cli
    from gand.data import loader as loader_module
    from gand.train import loop

    class FromMemory(loader_module.ImageLoader):
        def batches(self, start=None):
            start = start or loader_module.DataPosition()
            first = next(super().batches(start))
            for count in itertools.count(1):
                position = loader_module.DataPosition(start.epoch, count, first.position.generation, count)
                yield loader_module.Batch(first.images, first.labels, first.keys, position, {})

    loop.ImageLoader = FromMemory
    return cli.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
