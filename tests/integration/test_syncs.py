"""No host-device synchronisation on ordinary training steps: the count per step is stated and asserted.

Two in-process runs that differ only in length: everything outside ordinary steps (start-up, the one logging step,
the final save) is the same in both, so the difference in counted reads divided by the difference in steps is what
an ordinary step costs. It crosses epoch boundaries (45 images, 5 batches per epoch)."""

import pytest

from gand.config import load_config
from gand.train.loop import train
from tests.conftest import tiny_config
from tests.syncs import SyncCounter

pytestmark = pytest.mark.integration

SYNCS_PER_ORDINARY_STEP = 0


def counted_run(tmp_path, packed, steps: int, **sections) -> SyncCounter:
    config = tiny_config(tmp_path / f"run-{steps}", packed, train={"max_steps": steps, "log_every_steps": 1000},
                         samples={"every_steps": 1000}, checkpoint={"every_steps": 1000}, **sections)  # fmt: skip
    counter = SyncCounter()
    with counter:
        train(load_config(config))
    return counter


@pytest.mark.parametrize("sections", [{}, {"ema": {"half_life_kimg": 0.05}, "augment": {"policy": ["color",
                                      "translation", "cutout"]}, "loss": {"real_labels": [0.7, 1.0]}}],
                         ids=["dcgan", "ema-augment-soft-labels"])  # fmt: skip
def test_an_ordinary_step_reads_nothing_back_from_the_device(tmp_path, packed, sections):
    short, long = counted_run(tmp_path, packed, 4, **sections), counted_run(tmp_path, packed, 14, **sections)
    per_step = (long.total - short.total) / 10
    assert per_step == SYNCS_PER_ORDINARY_STEP, f"short run {dict(short.calls)}, long run {dict(long.calls)}"
    assert short.total > 0  # the counter sees the logging step's and the save's reads: it is not blind
