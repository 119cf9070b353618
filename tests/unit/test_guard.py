"""The collapse guard's rule: worse than the best by a margin for `patience` evaluations in a row."""

import pytest

from gand.config import validate_config
from gand.errors import ConfigError
from gand.train.guard import CollapseGuard


def guard(**overrides) -> CollapseGuard:
    settings = {"action": "rollback", "metric": "fid", "margin": 0.1, "patience": 2, "lr_factor": 0.5,
                "max_rollbacks": 1, **overrides}  # fmt: skip
    return CollapseGuard(**settings)


def test_worse_than_the_best_by_the_margin_for_patience_evaluations_rolls_back_then_stops():
    watch = guard()
    assert [watch.observe({"fid": fid}, f"ckpt-{i}") for i, fid in enumerate([50, 40, 43, 44])] == ["ok"] * 4
    assert (watch.best, watch.best_checkpoint, watch.streak) == (40, "ckpt-1", 0)  # 43, 44: within 10% of 40
    assert watch.observe({"fid": 45}, "ckpt-4") == "ok" and watch.streak == 1  # 45 > 44: worse by the margin
    assert watch.observe({"fid": 41}, "ckpt-5") == "ok" and watch.streak == 0  # back within: the streak breaks
    assert watch.observe({"fid": 60}, "ckpt-6") == "ok"
    assert watch.observe({"fid": 70}, "ckpt-7") == "rollback"
    assert (watch.rollbacks, watch.lr_scale, watch.best_checkpoint) == (1, 0.5, "ckpt-1")
    assert watch.observe({"fid": 39}, "ckpt-8") == "ok" and watch.best_checkpoint == "ckpt-8"  # a new best
    assert watch.observe({"fid": 90}, "ckpt-9") == "ok"
    assert watch.observe({"fid": 90}, "ckpt-10") == "stop"  # max_rollbacks spent


def test_higher_is_better_for_the_inception_score_and_stop_as_the_action():
    watch = guard(metric="is_mean", action="stop", patience=1)
    assert watch.observe({"is_mean": 5.0}, "a") == "ok" and watch.observe({"is_mean": 4.6}, "b") == "ok"
    assert watch.observe({"is_mean": 4.4}, "c") == "stop"  # below 5.0 x 0.9


def test_a_non_finite_score_is_never_the_best_and_counts_as_worse():
    watch = guard(patience=2)
    assert watch.observe({"fid": float("nan")}, "a") == "ok" and watch.best is None
    assert watch.observe({"fid": 30.0}, "b") == "ok" and watch.best_checkpoint == "b"
    assert watch.observe({"fid": float("nan")}, "c") == "ok" and watch.streak == 1
    assert watch.observe({"fid": float("inf")}, "d") == "rollback"


def test_the_state_round_trips():
    watch = guard()
    for i, fid in enumerate([30, 50, 50]):
        watch.observe({"fid": fid}, f"ckpt-{i}")
    restored = guard()
    restored.load_state_dict(watch.state_dict())
    assert restored.state_dict() == watch.state_dict() == {
        "best": 30, "best_checkpoint": "ckpt-0", "streak": 0, "rollbacks": 1, "lr_scale": 0.5}  # fmt: skip


def test_the_guard_needs_evaluations():
    with pytest.raises(ConfigError, match=r"guard\.action: rollback watches evaluations; set eval\.every_kimg"):
        validate_config({"data": {"path": "d", "resolution": 32}, "guard": {"action": "rollback"}})
    assert CollapseGuard.from_config(validate_config({"data": {"path": "d", "resolution": 32}})) is None
