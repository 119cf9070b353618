"""Starting ranks and staying tied to whoever started them: `gand launch`, `accelerate launch --cpu` with N ranks,
and a trainer whose launcher is gone.

Where a stop signal goes decides whether work is lost (issue 18):
- `gand launch` (and `accelerate launch --cpu --num_processes N`, which gand turns into the same thing) starts the
  ranks with torch's elastic agent, each rank in its own session. The agent runs in a thread of this process so
  that the signals stay ours: SIGTERM/SIGINT to the launcher are forwarded to every rank's process group, each rank
  saves and exits 75 (or 1 when its save did not commit), and the launcher exits with the first failing rank's code.
  torch's own handling would give the ranks 30 s and then return "stopped by a signal", committed or not.
- `accelerate launch -m gand.train` on one process runs the trainer as a child and does not forward signals: a
  SIGTERM that reaches only the launcher ends it at once. The trainer asks the kernel for a SIGTERM when its
  launcher goes (Linux `PR_SET_PDEATHSIG`), so it saves, exits and leaves nothing behind. The exit code is the
  launcher's; where it matters (Kubernetes), use `gand launch`.

Also here, because they are about the processes rather than the training: the process-group environment a lone ZeRO
rank needs, the group's teardown at the end of a process, and telling a collective that failed because another rank
is gone (`lost_a_peer`: exit 75, resume) from a fault of this one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog
import torch

from gand.processes import children, command_line, die_with_parent

log = structlog.get_logger("gand.train")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What the kernel sends a tied trainer when its launcher ends: a real-time signal of its own, because a launcher with
# several threads makes the kernel send it once per thread, and none of those may count as a second ("stop at
# once") SIGTERM. Nothing else uses it; left unhandled (before training starts) it ends the process.
LAUNCHER_GONE: int | None = signal.SIGRTMIN + 1 if hasattr(signal, "SIGRTMIN") else None
_tied_to_launcher = False
LAUNCHER_COMMANDS = ("accelerate", "gand", "gand.cli")  # followed by `launch` on the parent's command line
LAUNCHER_MODULES = ("torchrun", "torch.distributed.run")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- a trainer tied to its launcher ---------------------------------------------------------------------------------
def started_by_launcher(parent_command: Sequence[str], environ: dict[str, str]) -> bool:
    """Whether a process with this parent and environment is a launcher's child: a rank of torch's elastic agent
    (torchrun, `gand launch`, accelerate on GPUs) or the one process of `accelerate launch`."""
    if "TORCHELASTIC_RUN_ID" in environ:
        return True
    names = [Path(arg).name for arg in parent_command]
    pairs = itertools.pairwise(names)
    return any(name in LAUNCHER_MODULES for name in names) or any(
        first in LAUNCHER_COMMANDS and second == "launch" for first, second in pairs
    )


def follow_launcher() -> bool:
    """When this process was started by a launcher, have the kernel send it LAUNCHER_GONE when the launcher ends
    (Linux only; elsewhere nothing changes). The trainer's run control takes that as a first SIGTERM: it saves and
    exits; repeats are ignored. Returns whether the tie was made."""
    global _tied_to_launcher
    if LAUNCHER_GONE is None or not started_by_launcher(command_line(os.getppid()), dict(os.environ)):
        return False
    _tied_to_launcher = die_with_parent(LAUNCHER_GONE)
    return _tied_to_launcher


def tied_to_launcher() -> bool:
    """Whether follow_launcher() tied this process to its launcher (then LAUNCHER_GONE means "stop")."""
    return _tied_to_launcher


# -- starting ranks -------------------------------------------------------------------------------------------------
# Accelerate starts N CPU processes only through mpirun; without it, `accelerate launch --cpu --num_processes N`
# runs ONE process (and sets MASTER_ADDR because N > 1 was asked for). Rather than silently train on one rank, gand
# starts the N ranks itself, as `gand launch` does.


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
    launcher = command_line(os.getppid())
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
    """`accelerate launch --cpu --num_processes N` done right: N local ranks as one gloo process group."""
    log.info("starting_cpu_ranks", ranks=ranks, reason="accelerate launch --cpu runs one process without mpirun")
    # One machine: any free port serves, and 29500 (Accelerate's default) may belong to another run.
    return launch_ranks(module, args, ranks, main_address="127.0.0.1", main_port=free_port())


class _NotOurSignalHandlers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to register signal handlers" not in record.getMessage()


def launch_ranks(
    module: str,
    args: Sequence[str],
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    main_address: str = "127.0.0.1",
    main_port: int = 29500,
) -> int:
    """Start `nproc_per_node` processes of `python -m module args` on this node, as part of `nnodes` nodes whose
    rank 0 listens at main_address:main_port; return their exit code.

    torch.distributed.run's own command line (and `accelerate launch`, which uses it) reports every failure as 1;
    its API says which rank failed first and with what code, which keeps 75 (preempted, resume me) and 2/3 (do
    not retry) intact for Kubernetes. SIGTERM/SIGINT to this process are forwarded to every rank, which decides
    its own exit code (75 only with a committed checkpoint); a second one is forwarded too (the ranks stop at once).
    """
    from torch.distributed.launcher.api import LaunchConfig

    if nproc_per_node > 1 and not os.environ.get("OMP_NUM_THREADS"):
        # Each rank would otherwise start one intra-op thread per core, N ranks fighting over the same cores;
        # torchrun's command line sets 1 and warns about it. gand knows the node: its cores (those this process
        # may run on) shared out.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc_per_node))
        log.info("threads_per_rank", omp_num_threads=int(os.environ["OMP_NUM_THREADS"]), ranks=nproc_per_node)
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc_per_node,
        run_id="gand",
        rdzv_backend="static",
        rdzv_endpoint=f"{main_address}:{main_port}",
        rdzv_configs={"rank": node_rank},
        max_restarts=0,
        monitor_interval=0.5,
    )
    outcome: dict[str, object] = {}
    if not Path("/proc").is_dir():  # ranks cannot be found to forward signals to: torch's agent handles them
        _run_agent(config, module, args, outcome)
    else:
        # In a thread, torch's agent leaves the signal handlers alone (it installs its own only in the main thread)
        # and warns that it could not install them ("could lead to orphaned worker processes"): gand knows, because
        # it forwards the signals itself and every rank dies with this process (PR_SET_PDEATHSIG). Quieted.
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_NotOurSignalHandlers())
        agent = threading.Thread(target=_run_agent, args=(config, module, args, outcome), name="gand-rank-agent")
        forwarder = _SignalForwarder()
        forwarder.install()
        try:
            agent.start()
            while agent.is_alive():
                agent.join(0.5)  # short waits: signal handlers run in this thread between them
                forwarder.forward_to_new_ranks()
        finally:
            forwarder.restore()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return int(outcome["code"])  # type: ignore[arg-type]


def _run_agent(config, module: str, args: Sequence[str], outcome: dict[str, object]) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    try:
        elastic_launch(config, sys.executable)("-u", "-m", module, *args)
        outcome["code"] = 0
    except ChildFailedError as failed:
        rank, code = ranks_exit_code(failed.failures)
        log.error(
            "rank_failed", rank=rank, exit_codes={r: f.exitcode for r, f in failed.failures.items()}, exiting_with=code
        )
        outcome["code"] = code
    except SignalException as stopped:  # only without /proc: torch's agent took the signal and stopped the ranks
        log.warning(
            "ranks_stopped_by_signal",
            signal=str(stopped.sigval),
            exit_code=1,
            reason="whether their checkpoint committed is unknown here",
        )
        outcome["code"] = 1
    except BaseException as error:  # handed to the main thread, which raises it
        outcome["error"] = error


def ranks_exit_code(failures: dict) -> tuple[int, int]:
    """(rank, exit code) for the launcher: the earliest code a rank chose itself (75, 2, 3, 1), which says what
    happened; a rank killed by a signal (negative: e.g. an abort while a library tears down after the rank had
    decided) says less, and counts as 1 only when no rank chose a code."""
    chosen = sorted(
        (failure.timestamp, rank, failure.exitcode) for rank, failure in failures.items() if failure.exitcode > 0
    )
    if chosen:
        return chosen[0][1], chosen[0][2]
    first = min(failures, key=lambda rank: failures[rank].timestamp)
    return first, 1


class _SignalForwarder:
    """SIGTERM/SIGINT to the launcher go to each rank's process group (the rank and its loader workers); ranks that
    start after a signal get it when they appear."""

    def __init__(self):
        self.received: list[signal.Signals] = []
        self.signalled: dict[int, int] = {}  # rank pid -> how many of the received signals it got
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        if tied_to_launcher():  # this agent's own launcher (`accelerate launch --cpu`) went: one SIGTERM, once
            self._previous[LAUNCHER_GONE] = signal.signal(LAUNCHER_GONE, self._on_launcher_gone)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame) -> None:
        self.received.append(signal.Signals(signum))
        log.warning("forwarding_signal_to_ranks", signal=signal.Signals(signum).name, ranks=len(rank_processes()))
        self.forward_to_new_ranks()

    def _on_launcher_gone(self, _signum: int, _frame) -> None:
        if not self.received:
            self._on_signal(signal.SIGTERM, None)

    def forward_to_new_ranks(self) -> None:
        if not self.received:
            return
        for pid in rank_processes():
            for signum in self.received[self.signalled.get(pid, 0) :]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signum)  # torch starts each rank as the leader of its own session
            self.signalled[pid] = len(self.received)


def rank_processes() -> list[int]:
    """The PIDs of this process's children that are ranks (they carry torch elastic's run id)."""
    return children(os.getpid(), with_variable="TORCHELASTIC_RUN_ID")


# -- the process group, and losing a peer -----------------------------------------------------------------
def ensure_process_group_variables() -> None:
    """A single process run with ZeRO (e.g. optimizer offload on one GPU) still needs a process group."""
    if "WORLD_SIZE" in os.environ:
        return
    os.environ.update(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    )


# What a collective raises when a peer process is gone: gloo's socket errors and NCCL's remote-error text.
# Timeouts are left out on purpose: a hang that comes back after every restart is more likely a bug, and it
# should count against the Job's backoffLimit rather than restart forever.
PEER_LOST_MARKERS = ("connection reset by peer", "connection closed by peer", "broken pipe", "remote process exited")


def lost_a_peer(error: BaseException) -> bool:
    """True when `error` is a collective failing because another rank is gone, not a fault of this process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2 or not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    from_a_collective = isinstance(error, torch.distributed.DistError) or "gloo" in text or "nccl" in text
    return from_a_collective and any(marker in text for marker in PEER_LOST_MARKERS)


def shutdown_distributed() -> None:
    """Destroy the process group, if any: at the very end of a process that trained."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
