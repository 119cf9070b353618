"""The loss history carried in checkpoints, and the loss-curve PNG written next to each sample grid."""

import io
import math

import numpy as np
import torch
from PIL import Image

from gand.observability.curves import (
    COLOURS,
    STAT,
    LossHistory,
    line_chart,
    loss_curve_png,
    moving_average,
    run_charts,
    smoothing_window,
)


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
    plot = image[:, :420]  # the axes; the legend sits to their right
    for colour in COLOURS[:4]:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        share = (np.abs(plot.astype(int) - rgb).sum(axis=-1) < 30).mean()
        assert share > 0.002, f"no line in {colour}"


def test_curve_png_with_too_few_points_is_still_an_image():
    for history in (LossHistory(), _history(1)):
        assert Image.open(io.BytesIO(loss_curve_png(history))).size == (720, 360)


def _is_round(value: float) -> bool:
    """1, 2, 2.5 or 5 times a power of ten (or 0): the steps people read at a glance."""
    if value == 0:
        return True
    exponent = math.floor(math.log10(abs(value)))
    mantissa = abs(value) / 10**exponent
    return any(math.isclose(mantissa, nice * k, rel_tol=1e-6) for nice in (1, 2, 2.5, 5) for k in range(1, 10))


def test_charts_have_round_ticks_a_kimg_axis_a_moving_average_and_log_scale_for_gradient_norms():
    history = LossHistory()
    for step in range(1, 101):  # the hand-drawn charts put ticks at values like -0.311 and 1.52
        history.record(step * 64, {"g": 1.37 + 0.3 * math.sin(step), "d": -0.311 + 0.01 * step,
                                   STAT + "grad_norm_g": 10 ** (step / 25)})  # fmt: skip
    figure = line_chart(history, ["g", "d"], "losses")
    axes = figure.axes[0]
    low, high = axes.get_ylim()
    y_ticks = [tick for tick in axes.get_yticks() if low <= tick <= high]
    steps = np.diff(y_ticks)
    assert len(y_ticks) >= 3 and np.allclose(steps, steps[0]) and _is_round(steps[0]), y_ticks
    assert "kimg" in axes.get_xlabel()
    x_low, x_high = axes.get_xlim()
    assert x_low < 0.064 + 0.01 and 6.4 - 0.01 < x_high < 8  # 64 to 6,400 images seen, in thousands
    # The raw line (faint) and its moving average (solid) per series: two lines each, the mean smoother.
    lines = axes.get_lines()
    assert len(lines) == 4 and lines[0].get_alpha() < 0.5 and lines[1].get_label() == "g"
    raw, mean = lines[0].get_ydata(), lines[1].get_ydata()
    assert np.abs(np.diff(mean)).mean() < 0.5 * np.abs(np.diff(raw)).mean()
    assert len(line_chart(history, ["g"], "raw", smooth=1).axes[0].get_lines()) == 1  # smoothing off
    norms = line_chart(history, [STAT + "grad_norm_g"], "gradient norms", log_y=True).axes[0]
    assert norms.get_yscale() == "log"
    charts = run_charts(history, "tiny")
    assert {"losses.png", "gradient-norms.png"} <= charts.keys()


def test_moving_average_is_a_trailing_mean():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    assert moving_average(values, 2).tolist() == [1.0, 1.5, 2.5, 3.5, 7.0]
    assert moving_average(values, 3).tolist() == [1.0, 1.5, 2.0, 3.0, 17 / 3]
    assert moving_average(values, 1) is values
    assert smoothing_window(10) == 1 and smoothing_window(100) == 4 and smoothing_window(2000) == 80
