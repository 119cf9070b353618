"""On a GPU: an ordinary training step makes no host-device synchronisation (CUDA's own sync debug mode counts).

As in tests/integration/test_syncs.py, two runs that differ only in length: start-up, the one logging step and the
final save are the same in both, so the difference is what the extra ordinary steps cost. Loader workers and
pinned memory as users run them."""

import logging
import warnings

import pytest
import torch

from gand.config import load_config
from gand.train.loop import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.gpu


def synchronising_calls(tmp_path, packed, steps: int, precision: str) -> int:
    config = tiny_config(tmp_path / f"{precision}-{steps}", packed, data={"workers": 2}, precision=precision,
                         train={"max_steps": steps, "log_every_steps": 1000}, samples={"every_steps": 1000},
                         checkpoint={"every_steps": 1000}, ema={"half_life_kimg": 0.05})  # fmt: skip
    # gand's logging routes warnings to log lines (logging.captureWarnings) the first time it is set up: done here
    # first, so that the record below keeps them. Otherwise the first run in a process counts 0 (H200, 2026-11-30).
    logging.captureWarnings(True)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(load_config(config))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_ordinary_step_makes_no_synchronising_cuda_call(tmp_path, packed, precision):
    short = synchronising_calls(tmp_path, packed, 4, precision)
    long = synchronising_calls(tmp_path, packed, 24, precision)
    assert (long - short) / 20 == 0, (short, long)
    assert short > 0  # the logging step and the save do synchronise: the mode is on
