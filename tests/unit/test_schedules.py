"""Cosine burn-in schedules: the curve, what each value sets, and the config's checks."""

import math

import pytest
import torch
from torch import nn

from gand.config import validate_config
from gand.errors import ConfigError
from gand.train.optim import GeneratorEMA
from gand.train.schedules import BurnIn, cosine
from gand.train.steps import Recipe


def test_cosine_runs_from_start_to_end_flat_at_both_ends():
    assert cosine(1.0, 0.0, 0.0) == 1.0 and cosine(1.0, 0.0, 1.0) == 0.0 and cosine(1.0, 0.0, 7.0) == 0.0
    assert cosine(0.9, 0.99, 0.5) == pytest.approx(0.945)
    assert cosine(2e-4, 5e-5, 0.25) == pytest.approx(5e-5 + 1.5e-4 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine(1.0, 0.0, 0.01) > 0.999  # flat start: the first images barely move it


def config(**burn_in):
    return validate_config({"data": {"path": "d", "resolution": 32}, "loss": {"r1_gamma": 1.0},
                            "ema": {"half_life_kimg": 10}, "burn_in": burn_in})  # fmt: skip


def test_apply_sets_learning_rates_beta2_ema_and_the_penalty_weights():
    cfg = config(kimg=2, lr=[2e-4, 5e-5], gamma=[0.05, 0.005], beta2=[0.9, 0.99], ema_half_life_kimg=[0, 0.5])
    burn_in = BurnIn.from_config(cfg)
    net = nn.Linear(2, 2)
    optimizers = [torch.optim.Adam(net.parameters(), lr=1.0, betas=(0.0, 0.999)) for _ in range(2)]
    ema = GeneratorEMA(net, 10)
    recipe = Recipe.from_config(cfg, 0)
    halfway, fields = burn_in.apply(1000, recipe, optimizers, ema)
    for optimizer in optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1.25e-4)
        assert optimizer.param_groups[0]["betas"] == (0.0, pytest.approx(0.945))  # beta1 kept
    assert ema.half_life_images == pytest.approx(250)
    assert halfway.r1_gamma == pytest.approx(0.0275) and halfway.r2_gamma == 0.0  # R2 stays off
    assert recipe.r1_gamma == 1.0  # the run's recipe is not changed, each step gets its own
    assert fields["burn_in_lr"] == pytest.approx(1.25e-4)
    after, _ = burn_in.apply(50_000, recipe, optimizers, ema)
    assert after.r1_gamma == pytest.approx(0.005) and optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-5)


def test_no_burn_in_without_a_length_or_a_schedule():
    assert BurnIn.from_config(config()) is None
    assert BurnIn.from_config(config(kimg=5)) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"burn_in": {"lr": [1e-3, 1e-4]}}, "burn_in.kimg: lr scheduled but no burn-in length"),
        ({"burn_in": {"kimg": 1, "gamma": [1, 0.1]}}, "burn_in.gamma: schedules the R1/R2 weight, but both are off"),
        (
            {"burn_in": {"kimg": 1, "beta2": [0.9, 0.99]}, "optim": {"g": {"name": "sgd"}, "d": {"name": "sgd"}}},
            "burn_in.beta2: only Adam has a beta2",
        ),
        ({"burn_in": {"kimg": 1, "ema_half_life_kimg": [0, 1]}}, "burn_in.ema_half_life_kimg: the EMA is off"),
        ({"burn_in": {"kimg": 1, "beta2": [0.9, 1.0]}}, "burn_in.beta2: values must be below 1"),
        ({"burn_in": {"kimg": 1, "lr": [0, 1e-4]}}, "burn_in.lr: give positive [start, end] values"),
        (
            {"augment": {"policy": ["color"], "target": 0.6}, "loss": {"adversarial": "rpgan"}},
            "augment.target: adaptive augmentation reads r_t = E[sign D(real)], which needs logits with a zero point",
        ),
        ({"augment": {"target": 0.6}}, "augment.target: adaptive augmentation needs transforms to apply"),
    ],
)
def test_burn_in_settings_that_cannot_work_are_named(raw, expected):
    with pytest.raises(ConfigError) as caught:
        validate_config({"data": {"path": "d", "resolution": 32}, **raw})
    assert expected in str(caught.value)
