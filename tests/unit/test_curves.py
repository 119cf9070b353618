"""The loss history carried in checkpoints, and the loss-curve PNG written next to each sample grid."""

import io
import math

import numpy as np
import torch
from PIL import Image

from gand.observability.curves import COLOURS, LossHistory, loss_curve_png


def _history(points: int) -> LossHistory:
    history = LossHistory(max_points=100)
    for step in range(1, points + 1):
        history.record(step * 64, {"g": 2.0 + math.sin(step / 5), "d": 1.0 / step, "g_adv": 2.0, "d_adv": 0.5,
                                   "d_style": 0.1 * step})  # fmt: skip
    return history


def test_history_round_trips_through_a_weights_only_checkpoint_and_stays_bounded():
    history = _history(250)
    assert len(history.points) <= 100  # halved twice: 250 -> 126 -> ... never above the bound
    assert history.points[0][0] == 64 and history.points[-1][0] <= 250 * 64
    buffer = io.BytesIO()
    torch.save({"loss_history": history.to_state()}, buffer)
    buffer.seek(0)
    restored = LossHistory.from_state(torch.load(buffer, weights_only=True)["loss_history"])
    assert restored.names == history.names and restored.points == history.points
    assert LossHistory.from_state(None).points == []


def test_a_loss_missing_at_some_steps_stays_missing_and_roll_back_forgets_later_points():
    history = LossHistory()
    history.record(8, {"g": 1.0})
    history.record(16, {"g": 1.5, "d": 0.7})  # D trained only every other step (the Rice report's schedule)
    history.record(24, {"g": float("nan"), "d": 0.6})
    restored = LossHistory.from_state(history.to_state())
    assert restored.series("d") == [(16, 0.7), (24, 0.6)]
    assert restored.series("g") == [(8, 1.0), (16, 1.5)]
    restored.truncate(16)
    assert [images for images, _ in restored.points] == [8, 16]


def test_a_term_that_equals_its_total_is_not_drawn_twice():
    assert _history(3).plotted_names() == ["g", "d", "d_adv", "d_style"]


def test_curve_png_draws_one_coloured_line_per_loss_and_survives_outliers():
    history = _history(60)
    history.record(61 * 64, {"g": 1e9, "d": -1e9})  # one wild value must not flatten the rest
    image = np.asarray(Image.open(io.BytesIO(loss_curve_png(history, width=600, height=300))).convert("RGB"))
    assert image.shape == (300, 600, 3)
    plot = image[40:250, 70:440]
    for colour in COLOURS[:4]:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        share = (np.abs(plot.astype(int) - rgb).sum(axis=-1) < 30).mean()
        assert share > 0.002, f"no line in {colour}"


def test_curve_png_with_too_few_points_is_still_an_image():
    for history in (LossHistory(), _history(1)):
        assert Image.open(io.BytesIO(loss_curve_png(history))).size == (720, 360)
