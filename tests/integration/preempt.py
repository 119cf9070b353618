"""Helpers for the preemption tests: training as a live process whose log lines can be awaited and signalled."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

from gand.checkpoint.manager import CheckpointManager, SingleProcess
from tests.conftest import REPO


class Live:
    """A running command; its merged stdout/stderr lines are read by a thread so that the pipe never fills."""

    def __init__(self, args: list[str], env: dict | None = None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                                     cwd=REPO, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def events(self) -> list[dict]:
        self._drain()
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def _drain(self, timeout: float = 0.0) -> bool:
        """Move waiting lines into self.lines; False once the output has ended."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return True
        while True:
            if line is None:
                self._queue.put(None)  # keep the end marker for later calls
                return False
            self.lines.append(line)
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return True

    def wait_for(self, predicate, timeout: float = 120.0) -> dict:
        """The first event satisfying predicate; fails if the process ends or the time runs out first."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            alive = self._drain(timeout=0.2)
            events = self.events()
            for event in events[seen:]:
                if predicate(event):
                    return event
            seen = len(events)
            if not alive:
                break
        raise AssertionError(f"event not seen (exit code {self.proc.poll()}); output:\n" + "\n".join(self.lines[-40:]))

    def finish(self, timeout: float = 300.0) -> int:
        code = self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + 10  # children that outlive the process may hold the pipe open
        while self._drain(timeout=0.5) and time.monotonic() < deadline:
            pass
        return code

    def stop_group(self, signum: int = signal.SIGTERM) -> None:
        """Signal the whole process group, as a terminal's Ctrl-C or a container runtime does."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    @property
    def output(self) -> str:
        self._drain()
        return "\n".join(self.lines)


def train_command(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "gand.cli", "train", str(config), *overrides]


def accelerate_command(config: Path, *overrides: str) -> list[str]:
    launcher = str(Path(sys.executable).parent / "accelerate")
    return [launcher, "launch", "--num_processes", "2", "--cpu", "-m", "gand.train", str(config), *overrides]


def newest_valid(url: str) -> str | None:
    """What discovery must pick: the newest checkpoint whose manifest and every file verify, read independently."""
    found = CheckpointManager(url, SingleProcess()).load_latest_weights()
    return None if found is None else found[0]


def final_weights(url: str) -> dict[str, dict[str, torch.Tensor]]:
    manager = CheckpointManager(url, SingleProcess())
    name = manager.committed()[-1]
    return {
        network: load_safetensors(manager.store.read_bytes(f"{name}/{network}.safetensors"))
        for network in ("generator", "discriminator")
    }


def assert_same_weights(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> None:
    for network in a:
        assert a[network].keys() == b[network].keys()
        for key in a[network]:
            assert torch.equal(a[network][key], b[network][key]), f"{network}.{key} differs"


def rank_pids(marker: str) -> dict[int, int]:
    """rank -> pid of the training processes whose command line contains marker (their RANK variable)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker not in cmdline or "gand.train" not in cmdline:
            continue
        variables = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        if "RANK" in variables and "TORCHELASTIC_RUN_ID" in variables:
            found[int(variables["RANK"])] = int(entry.name)
    return found


def running(pid: int, group: bool = False) -> bool:
    """Whether the process (or, with group, any process of the group led by pid) still exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True
