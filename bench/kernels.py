"""Which GPU kernels one CAN-256 training step runs, per precision: are the layouts and BatchNorm on their fast path?

One D update and one G update (gand's step functions, batch 64 already on the GPU, after warm-up steps that let
cudnn.benchmark choose its algorithms) under torch.profiler, for fp32, bf16 and bf16 with checkpointing as gand runs
them (channels_last and cudnn.benchmark by default on CUDA). Prints the wall-clock step time (10 steps) beside the
kernel time (a step far longer than its kernels is bound by the host), the host-device synchronisations in one step
(CUDA's sync debug mode), the total kernel time, the time in layout transposes (NCHW <-> NHWC
conversions: what bf16 paid on the H200 before channels_last, ../shared/measurements/h200-2026-11-30.md) and in
BatchNorm kernels with their names (cuDNN's `bn_fw`/`bn_bw` family is the fast path; `batch_norm_collect_statistics`
and friends are PyTorch's native fallback), the ten costliest kernels, and the operators with the most host time
of their own.

    python3 bench/kernels.py                  # a GPU's job (bench/gpu_check.sh runs it)
    python3 bench/kernels.py --smoke          # CPU, tiny: checks the script itself (CPU kernels are listed)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, write_record

WIKIART_STYLES = 27
TRANSPOSE_KEYS = ("nchwtonhwc", "nhwctonchw", "transpose", "convert_layout")
BATCHNORM_KEYS = ("bn_", "batch_norm", "batchnorm", "welford")
TIMED_STEPS = 10


def profile_step(row: str, batch: int, smoke: bool) -> dict:
    import time
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile

    from gand.config import load_config
    from gand.train.engine import build_engine
    from gand.train.steps import Recipe, setup_networks, synthetic_batch, train_step

    smaller = ["model.width=0.0625", "data.resolution=128"] if smoke else []
    precision, _, saver = row.partition("+")
    checkpointing = "both" if saver == "ckpt" else "none"
    overrides = [f"precision={precision}", f"train.batch_size={batch}", "ema.half_life_kimg=null",
                 f"memory.grad_checkpointing={checkpointing}", *smaller]  # fmt: skip
    cfg = load_config(REPO / "configs" / "can256.yaml", overrides)
    engine = build_engine(cfg.precision, cfg.memory, batch)
    g, d = setup_networks(cfg, engine, WIKIART_STYLES)
    recipe = Recipe.from_config(cfg, WIKIART_STYLES)
    data = synthetic_batch(cfg, batch, WIKIART_STYLES, engine)
    gpu = engine.device.type == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    for _ in range(3):
        train_step(engine, g, d, recipe, data)
    sync()
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        train_step(engine, g, d, recipe, data)
    sync()
    wall_ms = (time.perf_counter() - started) / TIMED_STEPS * 1000
    syncs = None
    if gpu:  # host-device synchronisations inside one step (they stop the host from running ahead of the GPU)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_step(engine, g, d, recipe, data)
        torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        sync()
    activities = [ProfilerActivity.CUDA, ProfilerActivity.CPU] if gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        train_step(engine, g, d, recipe, data)
        sync()
    kernels = []
    for event in prof.key_averages():
        if gpu and event.device_type != torch.autograd.DeviceType.CUDA:
            continue  # kernels only: an operator's time is its kernels' time again
        microseconds = event.device_time_total if gpu else event.self_cpu_time_total
        if microseconds > 0:
            kernels.append((event.key, microseconds / 1000, event.count))
    total = sum(ms for _, ms, _ in kernels)

    def share(keys: tuple[str, ...]) -> tuple[float, list]:
        chosen = [k for k in kernels if any(key in k[0].lower() for key in keys)]
        return sum(ms for _, ms, _ in chosen), chosen

    transposes_ms, _ = share(TRANSPOSE_KEYS)
    batchnorm_ms, batchnorm = share(BATCHNORM_KEYS)
    top = sorted(kernels, key=lambda k: -k[1])[:10]
    return {"row": row, "precision": engine.precision, "channels_last": engine.channels_last, "batch": batch,
            "wall_ms": round(wall_ms, 2), "syncs": syncs,
            "kernel_ms": round(total, 2), "transpose_ms": round(transposes_ms, 2),
            "batchnorm_ms": round(batchnorm_ms, 2),
            "batchnorm_kernels": sorted({name[:90] for name, _, _ in batchnorm}),
            "top": [(name[:100], round(ms, 2), count) for name, ms, count in top],
            "host_top": host_operations(prof)}  # fmt: skip


def host_operations(prof, shown: int = 12) -> list:
    """The operators with the most host (CPU) time of their own in the profiled step: where a host-bound step's time
    goes (a step whose wall-clock time is far above its kernel time)."""
    rows = [(event.key, event.self_cpu_time_total / 1000, event.count) for event in prof.key_averages()
            if event.self_cpu_time_total > 0]  # fmt: skip
    total = sum(ms for _, ms, _ in rows)
    top = sorted(rows, key=lambda row: -row[1])[:shown]
    return [("host total", round(total, 2), sum(count for _, _, count in rows))] + [
        (name[:100], round(ms, 2), count) for name, ms, count in top
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="fp32,bf16,bf16+ckpt", help="precision, +ckpt for checkpointing G and D")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="bench/results/kernels.json")
    args = parser.parse_args()
    batch = 4 if args.smoke else args.batch
    rows = []
    for name in args.rows.split(","):
        row = profile_step(name, batch, args.smoke)
        rows.append(row)
        print(f"{name} (channels_last {row['channels_last']}): {row['wall_ms']} ms a step, kernels {row['kernel_ms']} "
              f"ms (transposes {row['transpose_ms']}, BatchNorm {row['batchnorm_ms']}), {row['syncs']} syncs",
              flush=True)  # fmt: skip
        print("  BatchNorm kernels: " + "; ".join(row["batchnorm_kernels"][:6]))
        for name, ms, count in row["top"]:
            print(f"  {ms:8.2f} ms x{count:<4} {name}")
        print("  host time by operator (its own time; the profiler's overhead included):")
        for name, ms, count in row["host_top"]:
            print(f"  {ms:8.2f} ms x{count:<5} {name}")
    write_record("kernels", args.out, {"batch": batch, "smoke": args.smoke}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
