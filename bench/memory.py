"""Peak GPU memory and speed of CAN at 256 px (configs/can256.yaml) under gand's memory settings.

For batch 64 and 128 (the config's own) per GPU, each setting trains a few real D+G updates on synthetic images
already on the device (data loading is measured in its own bench), in a fresh process, and records the allocator's
peak, images per second, the ratio to the fp32 step time, and what `gand plan` predicted for the same setting. The
last row per batch runs what `gand plan --budget 15GiB` chooses with `precision: auto` (bf16 on an A100/H100/H200,
fp16 on a T4): the setting a T4 user is told to run.

    .venv/bin/python bench/memory.py                    # on a GPU machine: the table in docs/benchmarks.md
                                                        # (without a GPU: the planner's predictions only)
    .venv/bin/python bench/memory.py --smoke            # CPU, tiny width: checks the bench itself still runs

Targets: CAN-256 at batch 64 under 15 GiB peak (a Colab T4) at no more than 1.5x the fp32 step time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, print_table, write_record

SETTINGS = {
    "fp32": ["precision=fp32"],
    "bf16": ["precision=bf16"],
    "bf16 + checkpointing": ["precision=bf16", "memory.grad_checkpointing=both"],
    "bf16 + checkpointing + ZeRO-2 + optimizer offload": [
        "precision=bf16", "memory.grad_checkpointing=both", "memory.zero_stage=2", "memory.offload_optimizer=cpu"],
}  # fmt: skip
PLAN_CHOICE = "gand plan's choice for a T4 budget"
GIB = 1024**3
WIKIART_STYLES = 27  # CAN-256's style classes
T4_BUDGET_GIB = 15.0  # a Colab T4's 16 GB, less the CUDA context and cuDNN's own allocations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--steps", type=int, default=5, help="timed updates per setting (after 2 warm-up ones)")
    parser.add_argument("--smoke", action="store_true", help="CPU, 128 px, width 1/16, batch 4, 1 step: a check")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one setting
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default=None, help="only these rows (comma-separated names, as in the table)")
    parser.add_argument("--row-timeout", type=float, default=600, help="seconds one setting may take (a failed row)")
    parser.add_argument("--out", default="bench/results/memory.json")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.batch, args.steps, args.smoke)))
        return 0

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        return predictions_only([int(b) for b in args.batches.split(",")], args.out)
    batches = [4] if args.smoke else [int(b) for b in args.batches.split(",")]
    steps = 1 if args.smoke else args.steps
    rows = []
    for batch in batches:
        baseline = None
        for name in chosen_settings(args.settings):
            row = measure_in_subprocess(name, batch, steps, args.smoke, args.row_timeout)
            baseline = baseline or row.get("seconds_per_step")
            if "seconds_per_step" in row:
                row["vs_fp32_step_time"] = round(row["seconds_per_step"] / baseline, 2)
            rows.append(row)
            print(format_row(row), flush=True)
    write_record("memory", args.out, {"batches": args.batches, "steps": args.steps, "smoke": args.smoke}, rows)
    return 0


def chosen_settings(names: str | None) -> list[str]:
    """The rows to run, in table order: all, or those named and fp32 (the baseline of the step-time ratios)."""
    every = [*SETTINGS, PLAN_CHOICE]
    if names is None:
        return every
    unknown = set(names.split(",")) - set(every)
    if unknown:
        raise SystemExit(f"--settings: unknown {sorted(unknown)}; known: {every}")
    return [name for name in every if name in names.split(",") or name == "fp32"]


def predictions_only(batches: list[int], out: str) -> int:
    """Without a GPU: the table with what `gand plan` predicts per setting (from its CPU probe, which counts
    autograd's saved tensors), and the measured columns left for a GPU machine."""
    import torch

    from gand.train.planner import measure, predict

    print("bench/memory.py: no GPU here, so peaks and speeds are not measured; what gand plan predicts on CPU:")
    components_by_precision = {}
    rows = []
    for batch in batches:
        for name in [*SETTINGS, PLAN_CHOICE]:
            overrides, _ = chosen_overrides(name, batch, torch.device("cpu"))
            cfg = setting_config(overrides, f"train.batch_size={batch}")
            if cfg.precision not in components_by_precision:  # activations depend on precision only
                components_by_precision[cfg.precision] = measure(cfg, WIKIART_STYLES, torch.device("cpu"))
            predicted = predict(components_by_precision[cfg.precision], planner_setting(cfg), ranks=1)
            row = {"setting": name, "batch": batch, "predicted_peak_gib": round(predicted / GIB, 2),
                   "peak_gib": "GPU only", "images_per_second": "GPU only",
                   "overrides": " ".join(overrides)}  # fmt: skip
            row["fits_t4"] = fits_t4(row)
            rows.append(row)
    choices = {row["batch"]: row["overrides"] for row in rows if row["setting"] == PLAN_CHOICE}
    print_table(rows, [("batch", "batch"), ("setting", "setting"), ("predicted_peak_gib", "predicted GiB"),
                       ("peak_gib", "peak GiB"), ("images_per_second", "images/s"),
                       ("fits_t4", f"fits a T4 ({T4_BUDGET_GIB:.0f} GiB)")])  # fmt: skip
    for batch, overrides in choices.items():
        print(f"{PLAN_CHOICE} at batch {batch}: {overrides}")
    write_record("memory", out, {"batches": batches, "measured": False}, rows)
    return 0


def setting_config(overrides: list[str], *extra: str):
    """can256.yaml with a setting's overrides, EMA off (not part of what is measured)."""
    from gand.config import load_config

    return load_config(REPO / "configs" / "can256.yaml", [*overrides, "ema.half_life_kimg=null", *extra])


def chosen_overrides(name: str, batch: int, device, *extra: str) -> tuple[list[str], int | None]:
    """A row's config overrides, and for PLAN_CHOICE the peak bytes `gand plan` predicts for what it chose (the
    fastest setting under the T4 budget, as `gand plan --budget 15GiB` prints it)."""
    if name != PLAN_CHOICE:
        return SETTINGS[name], None
    from gand.train.planner import make_plan

    base = ["precision=auto"]
    cfg = setting_config(base, f"train.batch_size={batch}", *extra)
    plan = make_plan(cfg, WIKIART_STYLES, int(T4_BUDGET_GIB * GIB), 1, device)
    if plan.best is None:
        raise SystemExit(f"gand plan finds nothing that fits {T4_BUDGET_GIB} GiB at batch {batch}")
    predicted = next(peak for setting, peak, _ in plan.rows if setting == plan.best)
    return [*base, *plan.best.overrides()], predicted


def planner_setting(cfg):
    """The planner's view of a config's memory options (micro-batch and accumulation included)."""
    from gand.train.planner import Setting

    micro = cfg.memory.micro_batch or cfg.train.batch_size
    return Setting(micro, cfg.train.batch_size // micro, cfg.memory.grad_checkpointing, cfg.memory.zero_stage,
                   cfg.memory.offload_optimizer, cfg.memory.offload_params)  # fmt: skip


def measure_in_subprocess(name: str, batch: int, steps: int, smoke: bool, row_timeout_seconds: float) -> dict:
    command = [sys.executable, str(Path(__file__)), "--one", name, "--batch", str(batch), "--steps", str(steps)]
    command += ["--smoke"] if smoke else []
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=row_timeout_seconds,
                                env={**os.environ, "WORLD_SIZE": ""})  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"setting": name, "batch": batch, "error": f"did not finish in {row_timeout_seconds} s"}
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"setting": name, "batch": batch, "error": (result.stderr or result.stdout)[-600:]}
    return json.loads(lines[-1])


def run_one(name: str, batch: int, steps: int, smoke: bool) -> dict:
    """One setting, in this process: a few real updates through gand's engine and step functions."""
    if not os.environ.get("WORLD_SIZE"):
        os.environ.pop("WORLD_SIZE", None)  # a lone process: ZeRO settings start their own process group
    import torch

    from gand.train.engine import build_engine
    from gand.train.planner import measure, predict
    from gand.train.steps import Recipe, setup_networks, synthetic_batch, train_step

    # The smoke check exercises the same code paths at 128 px and 1/16 width: quicker in the test suite.
    smaller = ["model.width=0.0625", "data.resolution=128"] if smoke else []
    classes = WIKIART_STYLES
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides, predicted = chosen_overrides(name, batch, device, *smaller)
    cfg = setting_config(overrides, f"train.batch_size={batch}", *smaller)
    if predicted is None:  # probing only this row's checkpointing option: each GPU probe trains the networks
        option = cfg.memory.grad_checkpointing
        predicted = predict(measure(cfg, classes, device, (option,)), planner_setting(cfg), ranks=1)
    engine = build_engine(cfg.precision, cfg.memory, batch)
    g, d = setup_networks(cfg, engine, classes)
    recipe = Recipe.from_config(cfg, classes)
    data = synthetic_batch(cfg, batch, classes, engine)  # on the device: the loader is measured elsewhere

    def update() -> None:
        train_step(engine, g, d, recipe, data)

    for _ in range(1 if smoke else 2):
        update()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    row = {"setting": name, "batch": batch, "seconds_per_step": round(seconds, 4), "precision": engine.precision,
           "images_per_second": round(batch / seconds, 1), "predicted_peak_gib": round(predicted / GIB, 2),
           "overrides": " ".join(overrides), "optimizer": optimizer_kind(d)}  # fmt: skip
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        row["peak_gib"] = round(peak / GIB, 2)
        row["prediction_error"] = round(predicted / peak - 1, 3)
    row["fits_t4"] = fits_t4(row)
    return row


def optimizer_kind(net) -> str:
    """The class of the optimizer doing the update (under DeepSpeed, the one inside its ZeRO wrapper): shows whether
    optimizer offload ran DeepSpeed's CPU Adam or fell back to torch's Adam."""
    inner = getattr(net.optimizer, "optimizer", net.optimizer)
    return type(inner).__name__


def fits_t4(row: dict) -> str:
    """Whether the setting fits a Colab T4: by the measured peak where there is one, else by the prediction. T4s have
    no bf16: there the same setting runs in fp16 (`precision: auto` picks it), which needs the same memory."""
    measured = isinstance(row.get("peak_gib"), float)
    peak = row["peak_gib"] if measured else row["predicted_peak_gib"]
    return ("yes" if peak <= T4_BUDGET_GIB else "no") + ("" if measured else " (predicted)")


def format_row(row: dict) -> str:
    if "error" in row:
        return f"batch {row['batch']:>4}  {row['setting']:52} FAILED: {row['error'][-200:]}"
    peak = f"{row['peak_gib']:.2f} GiB" if "peak_gib" in row else "-"
    predicted = f"{row['predicted_peak_gib']:.2f} GiB"
    speed = f"{row['images_per_second']:>7.1f} img/s  x{row.get('vs_fp32_step_time', 1.0):.2f} fp32 time"
    t4 = f"  T4 ({T4_BUDGET_GIB:.0f} GiB): {row.get('fits_t4', '-')}  {row.get('optimizer', '')}"
    line = f"batch {row['batch']:>4}  {row['setting']:52} peak {peak:>10}  predicted {predicted}  {speed}{t4}"
    return line + (f"\n           ({row['overrides']})" if row["setting"] == PLAN_CHOICE else "")


if __name__ == "__main__":
    sys.exit(main())
