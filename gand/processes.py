"""Processes and their parents, on Linux: a child that ends with its parent, a process's children and command line.

Used where gand starts or is started by other processes: a trainer under `accelerate launch` stops when its
launcher goes, pack workers (in their own session, out of reach of group signals) end when the daemon does, and
`gand launch` finds its ranks to forward a stop signal. Elsewhere these do nothing (and say so by their result).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `signum` to this process when its parent ends (Linux `PR_SET_PDEATHSIG`). If the
    parent is already gone, the signal is sent now. Returns whether the tie was made."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent ended before the tie was made
        os.kill(os.getpid(), signum)
    return True


def command_line(pid: int) -> list[str]:
    """The arguments of process `pid` ([] when it is gone or unreadable)."""
    try:
        return [arg.decode(errors="replace") for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return []


def children(pid: int, with_variable: str | None = None) -> list[int]:
    """The PIDs of `pid`'s children (only those whose environment has `with_variable`, when given); [] where
    there is no /proc (macOS: `gand launch` then leaves signals to torch's agent)."""
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != pid:  # after "pid (comm) state": the parent
                continue
            if with_variable is None or f"{with_variable}=".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
