import os
import signal
import time

import pytest
import torch

from gand.checkpoint.uploader import RetryPolicy, with_retries
from gand.config import CheckpointConfig
from gand.train.control import FiniteWatch, RunControl, StopNow, StopWhileWaiting
from gand.train.launch import ranks_exit_code, started_by_launcher


def watch(*values: float) -> FiniteWatch:
    finite = FiniteWatch()
    for value in values:
        finite.observe(torch.isfinite(torch.tensor(value)))
    return finite


class OneRank:
    rank = 0

    def any_across_ranks(self, flags):
        return list(flags)


def test_saves_are_due_by_steps_images_and_at_the_end():
    control = RunControl(OneRank(), CheckpointConfig(every_steps=None, every_images=100), max_steps=50)
    assert not control.decide(1, 0, 64, watch(1.0)).save
    assert control.decide(2, 64, 128, watch(1.0)).save  # crossed 100 images
    assert not control.decide(3, 128, 192, watch(1.0)).save
    assert control.decide(50, 3136, 3200, watch(1.0)).save  # the last step always saves
    by_steps = RunControl(OneRank(), CheckpointConfig(every_steps=5), max_steps=50)
    assert [s for s in range(1, 12) if by_steps.decide(s, 0, 0, watch(1.0)).save] == [5, 10]


def test_seconds_trigger_and_roll_back_never_saves():
    control = RunControl(OneRank(), CheckpointConfig(every_steps=None, every_seconds=1e-9), max_steps=50)
    assert control.decide(1, 0, 8, watch(1.0)).save
    decision = control.decide(2, 8, 16, watch(1.0, float("nan"), 2.0))
    assert decision.roll_back and not decision.save


def test_sigterm_becomes_a_stop_and_a_save_at_the_next_boundary():
    control = RunControl(OneRank(), CheckpointConfig(every_steps=1000, grace_seconds=20), max_steps=50)
    control.install_signal_handlers()
    try:
        assert not control.decide(1, 0, 8, watch(1.0)).stop
        os.kill(os.getpid(), signal.SIGTERM)
        decision = control.decide(2, 8, 16, watch(1.0))
        assert decision.stop and decision.save and control.stop_signal == "SIGTERM"
        assert 0 < control.grace_left_seconds() <= 20
    finally:
        control.restore_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_nan_is_kept_on_the_device_until_a_check_and_then_rolls_back():
    control = RunControl(OneRank(), CheckpointConfig(every_steps=10), max_steps=50)
    finite = watch(1.0, float("nan"))
    assert not control.decide(1, 0, 8, finite).roll_back  # an ordinary step: nothing is read back
    assert control.decide(2, 8, 16, finite, check=True).roll_back  # a logging step reads the flag
    assert not control.decide(3, 16, 24, finite, check=True).roll_back  # read once, then it starts over
    late = watch(float("inf"))
    decision = control.decide(10, 72, 80, late)  # a save is due: the flag is read first, and the save is refused
    assert decision.roll_back and not decision.save


def test_finite_watch():
    assert watch(1.0, 0.5).read()
    assert not watch(float("nan")).read()
    assert not watch(1.0, float("inf"), 2.0).read()
    assert FiniteWatch().read()  # nothing observed


def watching(waiting: list[bool]) -> RunControl:
    """A run control with a 0.3 s grace for stuck waits, its handlers installed, watching `waiting[0]`."""
    control = RunControl(OneRank(), CheckpointConfig(), max_steps=50, wait_grace_seconds=0.3)
    control.interrupt_waits(lambda: waiting[0])
    control.install_signal_handlers()
    return control


def test_a_wait_still_blocked_after_the_grace_is_interrupted_and_a_short_one_is_not():
    control = watching([True])
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(StopWhileWaiting):
            time.sleep(30)  # a blocked wait: the alarm raises out of it after 0.3 s
        assert control.stop_signal == "SIGTERM"
    finally:
        control.restore_signal_handlers()

    waiting = [True]
    short = watching(waiting)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        waiting[0] = False  # the batch arrived: the stop waits for the step boundary
        time.sleep(1.0)
        assert short.decide(1, 0, 8, watch(1.0)).stop
    finally:
        short.restore_signal_handlers()
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_of_either_kind_stops_at_once(second):
    control = watching([False])
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert control.stop_signal == "SIGTERM"
        with pytest.raises(StopNow):
            os.kill(os.getpid(), second)
            time.sleep(5)  # the handler raises out of whatever the main thread was doing
    finally:
        control.restore_signal_handlers()


def test_a_stop_abandons_a_main_thread_storage_retry_loop():
    control = watching([False])  # not waiting for data; the storage retries are what block

    def refused() -> None:
        raise ConnectionRefusedError("nothing listens")

    policy = RetryPolicy(first_delay_seconds=0.2, max_delay_seconds=0.5)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        started = time.monotonic()
        with pytest.raises(StopWhileWaiting):
            with_retries(refused, "listing checkpoints", policy, deadline=time.monotonic() + 60)
        assert time.monotonic() - started < 3
    finally:
        control.restore_signal_handlers()


def test_a_healthy_storage_call_in_progress_is_left_to_finish():
    """A synchronous save that is merely slow is not a stuck wait: only failing requests in back-off are abandoned."""
    control = watching([False])

    def slow_but_fine() -> str:
        time.sleep(1.0)  # longer than the 0.3 s grace
        return "saved"

    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert with_retries(slow_but_fine, "a save", RetryPolicy(), deadline=time.monotonic() + 60) == "saved"
    finally:
        control.restore_signal_handlers()


@pytest.mark.parametrize(
    ("parent", "environ", "tied"),
    [
        (["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "-m", "gand.train", "c.yaml"], {}, True),
        (["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc-per-node", "2"], {}, True),
        (["torchrun", "--nproc-per-node", "2", "-m", "gand.train"], {}, True),
        (["/venv/bin/python", "-m", "gand.cli", "launch", "c.yaml"], {}, True),
        (["bash"], {"TORCHELASTIC_RUN_ID": "gand"}, True),  # a rank of torch's elastic agent
        (["bash"], {}, False),
        (["/venv/bin/python", "-m", "pytest", "tests/integration/test_launchers.py"], {}, False),
        (["/venv/bin/python", "-m", "gand.cli", "train", "launch.yaml"], {}, False),
    ],
)
def test_what_counts_as_a_launcher_to_follow(parent, environ, tied):
    assert started_by_launcher(parent, environ) is tied


def test_the_launcher_reports_the_code_a_rank_chose_over_a_death_by_signal():
    from types import SimpleNamespace

    def failure(code: int, at: float):
        return SimpleNamespace(exitcode=code, timestamp=at)

    # rank 1 aborted (SIGABRT while tearing down) just before rank 0 exited 3 (diverged): 3 says what happened
    assert ranks_exit_code({0: failure(3, 2.0), 1: failure(-6, 1.0)}) == (0, 3)
    assert ranks_exit_code({0: failure(75, 2.0), 1: failure(1, 1.0)}) == (1, 1)  # the earliest chosen code
    assert ranks_exit_code({0: failure(-9, 2.0), 1: failure(-6, 1.0)}) == (1, 1)  # only signals: a failure
