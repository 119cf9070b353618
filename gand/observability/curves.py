"""Loss curves: the history of logged losses (carried in checkpoints) and its PNG plot, drawn with Pillow.

The sample grid shows what G makes now; the curve next to it shows how it got there. The reports kept both
with every checkpoint and judged runs from the pair.
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image, ImageDraw, ImageFont

from gand.observability.report import LoggedStep

# Distinct on white and for the common kinds of colour blindness (Okabe-Ito).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 150, 28, 44


STAT = "stat:"  # prefix of a statistic's series in the saved history; losses have none; evaluations use "eval:"


class LossHistory:
    """Logged losses (and health statistics, evaluation scores) against images seen. Bounded: past `max_points`
    every other point is dropped, so a long run keeps its whole shape at a coarser grain and checkpoints stay
    small."""

    def __init__(self, max_points: int = 2000):
        self.max_points = max_points
        self.names: list[str] = []
        self.points: list[tuple[int, dict[str, float]]] = []

    def record_step(self, logged: LoggedStep) -> None:
        """A logging step's losses and health statistics (the Duke report plotted its vanishing-gradient counts)."""
        values = logged.losses()
        values.update({STAT + name: value for name, value in logged.statistics().items()})
        self.record(logged.images_seen, values)

    def record(self, images_seen: int, values: dict[str, float]) -> None:
        self.names += [name for name in values if name not in self.names]
        self.points.append((images_seen, values))
        if len(self.points) > self.max_points:
            self.points = self.points[::2]

    def truncate(self, images_seen: int) -> None:
        """Forget points after a roll-back to `images_seen`: those steps are trained again."""
        self.points = [point for point in self.points if point[0] <= images_seen]

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(images, values[name]) for images, values in self.points if math.isfinite(values.get(name, math.nan))]

    def to_state(self) -> dict:
        """Types that torch.load(weights_only=True) accepts."""
        rows = [[float(images), *(values.get(name, math.nan) for name in self.names)] for images, values in self.points]
        table = torch.tensor(rows, dtype=torch.float64).reshape(-1, 1 + len(self.names))
        return {"names": list(self.names), "values": table}

    @classmethod
    def from_state(cls, state: dict | None, max_points: int = 2000) -> LossHistory:
        history = cls(max_points)
        if state:
            history.names = list(state["names"])
            for images, *values in state["values"].tolist():
                named = zip(history.names, values, strict=True)
                history.points.append((int(images), {name: v for name, v in named if not math.isnan(v)}))
        return history

    def plotted_names(self) -> list[str]:
        """Totals (g, d) and their terms; a network with one term only gets its total, which is the same line."""
        names = []
        losses = [name for name in self.names if ":" not in name]
        for name in losses:
            network, _, term = name.partition("_")
            if term and sum(other.startswith(f"{network}_") for other in losses) == 1 and network in losses:
                continue
            names.append(name)
        return names


def loss_curve_png(history: LossHistory, title: str = "losses", width: int = 720, height: int = 360) -> bytes:
    """The losses as a line chart: x in thousands of images seen, one coloured line per loss, a legend."""
    return line_chart_png(history, history.plotted_names(), title, width, height)


def line_chart_png(history: LossHistory, names: list[str], title: str, width: int = 720,
                   height: int = 360) -> bytes:  # fmt: skip
    """The named series as a line chart: x in thousands of images seen, one coloured line each, a legend."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)  # Pillow's bundled scalable font where FreeType is there
    left, top, right, bottom = MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM
    draw.text((left, 8), title, fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="#888888")
    lines = {name: history.series(name) for name in names}
    xs = [x for series in lines.values() for x, _ in series]
    ys = [y for series in lines.values() for _, y in series]
    if len(set(xs)) < 2:
        draw.text((left + 10, (top + bottom) // 2), "not enough logged steps yet", fill="#888888", font=font)
        return _png(image)

    x_low, x_high = min(xs), max(xs)
    y_low, y_high = _robust_range(ys)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        y = min(max(y, y_low), y_high)  # outliers (a spike at step 1) are drawn at the edge, not off the chart
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))  # fmt: skip

    for tick in range(5):
        x = x_low + (x_high - x_low) * tick / 4
        px = to_pixel(x, y_low)[0]
        draw.line((px, bottom, px, bottom + 4), fill="#888888")
        draw.text((px - 12, bottom + 8), f"{x / 1000:.4g}", fill="black", font=font)
        y = y_low + (y_high - y_low) * tick / 4
        py = to_pixel(x_low, y)[1]
        draw.line((left - 4, py, right, py), fill="#eeeeee" if tick not in (0, 4) else "#888888")
        draw.text((8, py - 6), f"{y:.3g}", fill="black", font=font)
    draw.text(((left + right) // 2 - 40, height - 18), "thousand images seen", fill="black", font=font)

    for index, (name, series) in enumerate(lines.items()):
        colour = COLOURS[index % len(COLOURS)]
        if len(series) > 1:
            draw.line([to_pixel(x, y) for x, y in series], fill=colour, width=2)
        elif series:
            px, py = to_pixel(*series[0])
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        key_y = top + 6 + 16 * index
        draw.line((right + 12, key_y + 6, right + 36, key_y + 6), fill=colour, width=3)
        draw.text((right + 42, key_y), name.split(":", 1)[-1], fill="black", font=font)
    return _png(image)


def _robust_range(values: list[float]) -> tuple[float, float]:
    """The 1st to 99th percentile with a margin, so one early spike does not flatten the rest of the run."""
    ordered = sorted(values)
    low = ordered[int(0.01 * (len(ordered) - 1))]
    high = ordered[math.ceil(0.99 * (len(ordered) - 1))]
    margin = (high - low) * 0.05 or max(abs(high), 1.0) * 0.05
    return low - margin, high + margin


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_charts(history: LossHistory, run_name: str) -> dict[str, bytes]:
    """`gand plot`: one PNG per view of the run that has data (file name -> PNG bytes)."""

    def named(prefix: str) -> list[str]:
        return [name for name in history.names if name.startswith(prefix)]

    views = {
        "losses.png": (history.plotted_names(), "losses"),
        "discriminator.png": (named(STAT + "d_") + named(STAT + "acc_"), "D(x), D(G(z)) and D's accuracy"),
        "gradient-norms.png": (named(STAT + "grad_norm_"), "gradient L2 norm per network"),
        "vanishing-gradients-d.png": (named(STAT + "vanishing_d/"), "D: share of |grad| < 0.01 per layer group"),
        "vanishing-gradients-g.png": (named(STAT + "vanishing_g/"), "G: share of |grad| < 0.01 per layer group"),
        "fid.png": (named("eval:fid"), "FID over training"),
    }
    return {filename: line_chart_png(history, names, f"{run_name}: {title}")
            for filename, (names, title) in views.items() if any(history.series(name) for name in names)}  # fmt: skip
