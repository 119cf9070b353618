"""The only module that imports Accelerate (and, later, DeepSpeed): devices, processes, precision, wrapping.

The loop asks it for a few verbs (backward, a frozen discriminator for the G step, the unwrapped modules,
collectives) and never sees DDP or mixed-precision details.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from torch import nn

PRECISIONS = {"fp32": "no", "bf16": "bf16"}


class Engine:
    def __init__(self, precision: str = "fp32"):
        # cpu=True where there is no GPU: Accelerate only sets up a gloo process group (MULTI_CPU) when told.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=PRECISIONS[precision])
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        """Move models and optimizers to the device and wrap them for the process group (DDP)."""
        return self.accelerator.prepare(*objects)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    @contextlib.contextmanager
    def frozen(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model to call in the other network's step: no parameter gradients, no DDP gradient sync.

        Gradients still flow through it to its input. Calling the unwrapped module keeps DDP from waiting for
        gradients that will never come, and requires_grad=False is what ZeRO needs too (../DESIGN.md).
        """
        inner = self.unwrap(model)
        flags = [p.requires_grad for p in inner.parameters()]
        inner.requires_grad_(False)
        try:
            yield inner
        finally:
            for param, flag in zip(inner.parameters(), flags, strict=True):
                param.requires_grad_(flag)

    def mean_across_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each value's mean over ranks, in one collective."""
        stacked = torch.stack([value.detach().float().reshape(()) for value in values.values()])
        reduced = self.accelerator.reduce(stacked, reduction="mean").tolist()
        return dict(zip(values, reduced, strict=True))

    def from_rank_zero(self, value: int) -> int:
        """Rank 0's value on every rank (collective)."""
        if self.world_size == 1:
            return value
        return int(broadcast_object_list([value], from_process=0)[0])

    # Collective protocol used by the checkpoint manager.
    def gather_objects(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        return gather_object([obj])

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        self.accelerator.end_training()


# -- `accelerate launch --cpu --num_processes N` ------------------------------------------------------------------
# Accelerate starts N CPU processes only through mpirun; without it, that command runs ONE process (and sets
# MASTER_ADDR because N > 1 was asked for). Rather than silently train on one rank, gand starts the N ranks
# itself with torch.distributed.run, which is what Accelerate's GPU path does.


def requested_cpu_ranks() -> int:
    """N when this process is the lone process of `accelerate launch --cpu --num_processes N`, else 1."""
    env = os.environ
    lone_cpu_launch = (
        env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        and "MASTER_ADDR" in env
        and "WORLD_SIZE" not in env
        and "LOCAL_RANK" not in env
    )
    if not lone_cpu_launch:
        return 1
    try:
        launcher = [arg.decode() for arg in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return 1
    if "launch" not in launcher:
        return 1
    from accelerate.commands.launch import launch_command_parser

    known, _ = launch_command_parser().parse_known_args(launcher[launcher.index("launch") + 1 :])
    processes = known.num_processes
    if processes is None and known.config_file:
        from accelerate.commands.config.config_args import load_config_from_file

        processes = load_config_from_file(known.config_file).num_processes
    return max(1, int(processes or 1))


def run_cpu_ranks(ranks: int, module: str, args: Sequence[str]) -> int:
    """Start `ranks` processes of `python -m module args` as one gloo process group; their exit code."""
    structlog.get_logger("gand.engine").info(
        "starting_cpu_ranks", ranks=ranks, reason="accelerate launch --cpu runs one process without mpirun"
    )
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={ranks}",
        f"--master_addr={os.environ['MASTER_ADDR']}",
        f"--master_port={os.environ.get('MASTER_PORT', '29500')}",
        "-m", module, *args,
    ]  # fmt: skip
    return subprocess.call(command)
