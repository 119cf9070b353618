import os
import signal

import torch

from gand.config import CheckpointConfig
from gand.train.control import RunControl, all_finite


class OneRank:
    rank = 0

    def any_across_ranks(self, flags):
        return list(flags)


def test_saves_are_due_by_steps_images_and_at_the_end():
    control = RunControl(OneRank(), CheckpointConfig(every_steps=None, every_images=100), max_steps=50)
    assert not control.decide(1, 0, 64, True).save
    assert control.decide(2, 64, 128, True).save  # crossed 100 images
    assert not control.decide(3, 128, 192, True).save
    assert control.decide(50, 3136, 3200, True).save  # the last step always saves
    by_steps = RunControl(OneRank(), CheckpointConfig(every_steps=5), max_steps=50)
    assert [s for s in range(1, 12) if by_steps.decide(s, 0, 0, True).save] == [5, 10]


def test_seconds_trigger_and_roll_back_never_saves():
    control = RunControl(OneRank(), CheckpointConfig(every_steps=None, every_seconds=1e-9), max_steps=50)
    assert control.decide(1, 0, 8, True).save
    decision = control.decide(2, 8, 16, losses_finite=False)
    assert decision.roll_back and not decision.save


def test_sigterm_becomes_a_stop_and_a_save_at_the_next_boundary():
    control = RunControl(OneRank(), CheckpointConfig(every_steps=1000, grace_seconds=20), max_steps=50)
    control.install_signal_handlers()
    try:
        assert not control.decide(1, 0, 8, True).stop
        os.kill(os.getpid(), signal.SIGTERM)
        decision = control.decide(2, 8, 16, True)
        assert decision.stop and decision.save and control.stop_signal == "SIGTERM"
        assert 0 < control.grace_left_seconds() <= 20
    finally:
        control.restore_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_all_finite():
    assert all_finite({"adv": torch.tensor(1.0)}, {"gp": torch.tensor(0.5)})
    assert not all_finite({"adv": torch.tensor(float("nan"))})
    assert not all_finite({"adv": torch.tensor(1.0)}, {"adv": torch.tensor(float("inf"))})
