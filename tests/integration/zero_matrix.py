"""Run under `accelerate launch --num_processes 2 --cpu`: the same tiny GANs trained with DDP and with ZeRO 1/2/3,
each stopped at step 5 and resumed to step 10 in the same process group. Rank 0 writes every run's losses as JSON.

    accelerate launch --num_processes 2 --cpu -m tests.integration.zero_matrix PACKED OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch

from gand.config import load_config
from gand.train.launch import requested_cpu_ranks, run_cpu_ranks, shutdown_distributed
from gand.train.loop import train

REPO = Path(__file__).resolve().parents[2]
MODELS = {"dcgan": "configs/dcgan32.yaml", "can": "configs/can128.yaml"}
PRECISIONS = ("fp32", "bf16")
STAGES = (0, 1, 2, 3)
STOP, END = 5, 10


def overrides(packed: str, run_dir: Path, precision: str, stage: int, steps: int) -> list[str]:
    return [
        f"data.path={packed}", f"run.dir={run_dir}", "data.workers=0",
        "model.width=0.0625", "train.batch_size=4", f"train.max_steps={steps}", "train.log_every_steps=1",
        "samples.count=4", "samples.every_steps=5", f"checkpoint.every_steps={STOP}", "metrics.port=null",
        f"precision={precision}", f"memory.zero_stage={stage}", "ema.half_life_kimg=null",
    ]  # fmt: skip


def losses(run_dir: Path) -> dict[int, dict[str, float]]:
    found = {}
    for line in (run_dir / "train.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "train_step":
            found[event["step"]] = {"g": event["loss_g"], "d": event["loss_d"]}
    return found


def main(packed: str, out_dir: str) -> None:
    results = {}
    for model, config in MODELS.items():
        for precision in PRECISIONS:
            for stage in STAGES:
                run_dir = Path(out_dir) / f"{model}-{precision}-zero{stage}"
                for steps in (STOP, END):  # the second call resumes from the step-5 checkpoint
                    train(load_config(REPO / config, overrides(packed, run_dir, precision, stage, steps)))
                if torch.distributed.get_rank() == 0:
                    results[f"{model}/{precision}/{stage}"] = losses(run_dir)
    for stage in (0, 2):  # micro-batches of 2 with gradient accumulation, under DDP and under ZeRO
        run_dir = Path(out_dir) / f"dcgan-fp32-zero{stage}-micro"
        for steps in (STOP, END):
            extra = ["memory.micro_batch=2"]
            train(load_config(REPO / MODELS["dcgan"], overrides(packed, run_dir, "fp32", stage, steps) + extra))
        if torch.distributed.get_rank() == 0:
            results[f"dcgan/fp32/{stage}/micro"] = losses(run_dir)
    for stage in STAGES[1:]:  # the same runs without the stop at step 5: resuming must change nothing
        run_dir = Path(out_dir) / f"dcgan-fp32-zero{stage}-straight"
        train(load_config(REPO / MODELS["dcgan"], overrides(packed, run_dir, "fp32", stage, END)))
        if torch.distributed.get_rank() == 0:
            results[f"dcgan/fp32/{stage}/straight"] = losses(run_dir)
    if torch.distributed.get_rank() == 0:
        (Path(out_dir) / "losses.json").write_text(json.dumps(results))


if __name__ == "__main__":
    ranks = requested_cpu_ranks()  # as `gand train` does: accelerate's --cpu launcher starts only one process
    if ranks > 1:
        sys.exit(run_cpu_ranks(ranks, "tests.integration.zero_matrix", sys.argv[1:]))
    try:
        main(sys.argv[1], sys.argv[2])
    finally:
        shutdown_distributed()
