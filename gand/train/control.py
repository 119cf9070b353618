"""What the ranks agree on at every step boundary: stop (a signal came), save (a checkpoint is due), roll back
(a loss went NaN/Inf). One small host-side collective per step carries stop and timed saves, so every rank takes
the same branch even when only one of them was signalled, or only rank 0's clock says a timed checkpoint is due.

Losses are checked on the device: each step folds "all finite" into a device flag, which is read (the only
host-device sync for it) at logging steps and before saves. A NaN found a few steps late still rolls back to the
last commit, and no checkpoint is ever written with it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
import torch

from gand.checkpoint.lease import RunLease
from gand.checkpoint.uploader import waiting_on_storage
from gand.config import CheckpointConfig
from gand.notices import NoticeWatcher
from gand.train.launch import LAUNCHER_GONE, tied_to_launcher

log = structlog.get_logger("gand.train")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopWhileWaiting(BaseException):
    """A stop signal found the main thread still blocked waiting for data or storage: the wait is abandoned. A
    BaseException, like KeyboardInterrupt, so that code which turns errors into others (storage retries, loader
    shutdown) lets it through."""


class StopNow(BaseException):
    """A second SIGTERM/SIGINT: stop at once, without waiting for a save or an upload; the last commit stays the
    resume point (commits are atomic, so nothing half-written is ever loaded)."""


class Agreeing(Protocol):
    rank: int

    def any_across_ranks(self, flags: list[bool]) -> list[bool]: ...


@dataclass(frozen=True)
class Decision:
    stop: bool  # a signal reached some rank: save, upload, exit 75
    save: bool  # a checkpoint is due (steps, images, seconds, a preemption notice, or the end)
    roll_back: bool  # some rank saw a NaN/Inf loss: back to the last commit, skip the batch
    notice: bool = False  # the cloud announced this machine's preemption: save now, train on
    lease_lost: bool = False  # another trainer took the run's lease over: publish nothing more, exit 75


class RunControl:
    def __init__(self, engine: Agreeing, checkpoint: CheckpointConfig, max_steps: int, wait_grace_seconds: float = 2.0):
        self.engine = engine
        self.checkpoint = checkpoint
        self.max_steps = max_steps
        self.stop_signal: str | None = None
        self.stop_requested_at: float | None = None  # monotonic: the grace period counts from the signal
        self._last_save = time.monotonic()
        self._previous_handlers: dict[int, object] = {}
        self._is_waiting: Callable[[], bool] = lambda: False
        self.wait_grace_seconds = wait_grace_seconds
        self._watching = False  # our SIGALRM timer is armed: a stop is pending and not yet acted on
        self._signalled = False  # this process got a SIGTERM/SIGINT: the next one stops at once
        self._stopping_now = False
        self.notices: NoticeWatcher | None = None  # rank 0's poller of the cloud's preemption notices
        self.lease: RunLease | None = None  # rank 0's lease on the run's checkpoints
        self._notice_acted = False

    def interrupt_waits(self, is_waiting: Callable[[], bool]) -> None:
        """After a stop signal, a wait that `is_waiting()` (or a storage retry loop in the main thread) still
        reports `wait_grace_seconds` later is abandoned: StopWhileWaiting is raised in the main thread, instead of
        waiting for a step boundary that may never come (storage or a loader worker stuck). Ordinary waits for the
        next batch end long before that, and the stop is then handled at the step boundary as usual, with a save."""
        self._is_waiting = is_waiting

    # -- signals -------------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set a flag that the next step boundary acts on; a second one (either) stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. training from a notebook thread: signals stay with the host
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        if tied_to_launcher():  # the launcher ended: a stop like SIGTERM, never a second one
            self._previous_handlers[LAUNCHER_GONE] = signal.signal(LAUNCHER_GONE, self._on_launcher_gone)
        self._previous_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)

    def restore_signal_handlers(self) -> None:
        self.stop_watching()
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, _frame) -> None:
        if self._stopping_now:
            return  # a third one: the stop at once is already under way, let its clean-up finish
        if self._signalled:  # asked twice (a peer's stop or the launcher's going do not count)
            self.stop_watching()
            self._stopping_now = True
            raise StopNow(signal.Signals(signum).name)  # the last commit stays the resume point
        self._signalled = True
        if self.stop_signal is None:
            self._request_stop(signal.Signals(signum).name)

    def _on_launcher_gone(self, _signum: int, _frame) -> None:
        if self.stop_signal is None:
            self._request_stop("launcher gone")

    def _request_stop(self, reason: str) -> None:
        self.stop_signal = reason
        self.stop_requested_at = time.monotonic()
        self._watching = True
        signal.setitimer(signal.ITIMER_REAL, self.wait_grace_seconds)  # then see whether a wait is stuck

    def _on_alarm(self, _signum: int, _frame) -> None:
        """Checks, until the stop is acted on, whether the main thread is stuck waiting."""
        if not self._watching:
            return
        if self._is_waiting() or waiting_on_storage():
            self.stop_watching()
            raise StopWhileWaiting(self.stop_signal)
        signal.setitimer(signal.ITIMER_REAL, 1.0)

    def stop_watching(self) -> None:
        """The stop is being acted on (or training ends): no more checks for stuck waits."""
        if self._watching:
            self._watching = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def grace_left_seconds(self) -> float:
        started = self.stop_requested_at or time.monotonic()
        return max(0.0, self.checkpoint.grace_seconds - (time.monotonic() - started))

    # -- the step boundary ---------------------------------------------------------------------------------------
    def decide(
        self, step: int, images_before: int, images_after: int, finite: FiniteWatch, check: bool = False
    ) -> Decision:
        """Collective: what every rank does after the step that took images_seen from before to after.

        The losses' device flag is read when a save is due, on a stop, and when `check` (logging steps)."""
        local_stop = self.stop_signal is not None
        notice = not self._notice_acted and self.notices is not None and self.notices.notice is not None
        lost = self.lease is not None and self.lease.lost
        stop, timed, noticed, lost = self.engine.any_across_ranks([local_stop, self._seconds_due(), notice, lost])
        if lost:
            self.stop_watching()
            return Decision(stop=False, save=False, roll_back=False, lease_lost=True)
        if stop and self.stop_requested_at is None:  # the signal reached another rank: same grace from here
            self.stop_requested_at = time.monotonic()
            self.stop_signal = "peer rank"
        if stop:
            self.stop_watching()  # acted on here, at a step boundary
        save = stop or timed or noticed or self._count_due(step, images_before, images_after)
        bad = False
        if save or check:
            (bad,) = self.engine.any_across_ranks([not finite.read()])
        self._notice_acted = self._notice_acted or (noticed and not bad)  # a roll-back step saves the next one
        return Decision(stop=stop, save=save and not bad, roll_back=bad, notice=noticed and not bad)

    def _seconds_due(self) -> bool:
        every = self.checkpoint.every_seconds
        return bool(every) and self.engine.rank == 0 and time.monotonic() - self._last_save >= every

    def _count_due(self, step: int, images_before: int, images_after: int) -> bool:
        section = self.checkpoint
        return count_due(step, images_before, images_after, section.every_steps, section.every_images, self.max_steps)

    def saved(self) -> None:
        self._last_save = time.monotonic()


def count_due(
    step: int, images_before: int, images_after: int, every_steps: int | None, every_images: int | None, max_steps: int
) -> bool:
    """Periodic work is due every N steps, when images seen crosses a multiple of M, and at the very end."""
    if step >= max_steps:
        return True
    if every_steps and step % every_steps == 0:
        return True
    return bool(every_images) and images_after // every_images > images_before // every_images


class FiniteWatch:
    """Whether every loss since the last read was finite, kept on the device until read."""

    def __init__(self):
        self._flag: torch.Tensor | None = None

    def observe(self, finite: torch.Tensor) -> None:
        """`finite`: a 0-d bool tensor for one step (no sync)."""
        self._flag = finite if self._flag is None else self._flag & finite

    def read(self) -> bool:
        """True when everything observed was finite (one device sync); starts over."""
        flag, self._flag = self._flag, None
        return flag is None or bool(flag)
