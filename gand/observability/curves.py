"""Loss curves: the history of logged losses (carried in checkpoints) and its charts, drawn with matplotlib.

The sample grid shows what G makes now; the curve next to it shows how it got there. The reports kept both
with every checkpoint and judged runs from the pair. `gand plot` and the curve written beside each sample grid
use the same chart code (`line_chart_png`): matplotlib's Agg renderer through a bare `Figure` (no pyplot, no
display, no global state), x in kimg, readable ticks, a moving average beside the raw line, log scale for
gradient norms.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from gand.observability.report import LoggedStep

# Distinct on white and for the common kinds of colour blindness (Okabe-Ito).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")

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


def loss_curve_png(
    history: LossHistory, title: str = "losses", width: int = 720, height: int = 360, smooth: int | None = None
) -> bytes:
    """The losses as a line chart: x in kimg (thousands of images seen), one coloured line per loss, a legend."""
    return line_chart_png(history, history.plotted_names(), title, width, height, smooth=smooth)


def smoothing_window(points: int) -> int:
    """The default moving-average window: about a 25th of the points logged (1, i.e. none, below 20 points)."""
    return max(1, round(points / 25)) if points >= 20 else 1


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points (fewer at the start), the same length as `values`."""
    if window <= 1 or len(values) < 2:
        return values
    sums = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def line_chart_png(
    history: LossHistory,
    names: list[str],
    title: str,
    width: int = 720,
    height: int = 360,
    *,
    smooth: int | None = None,
    log_y: bool = False,
) -> bytes:
    """`line_chart` as PNG bytes."""
    return _png(line_chart(history, names, title, width, height, smooth=smooth, log_y=log_y))


def line_chart(
    history: LossHistory,
    names: list[str],
    title: str,
    width: int = 720,
    height: int = 360,
    *,
    smooth: int | None = None,
    log_y: bool = False,
):
    """The named series as a matplotlib `Figure`, a line chart of `width` x `height` pixels: x in kimg, one colour
    per series, the raw values faint and their moving average (`smooth` points; None = `smoothing_window`, 1 = off)
    solid, the legend outside the axes. Linear y spans the 1st-99th percentile, so one early spike does not flatten
    the run; `log_y` for positive quantities spanning decades (gradient norms; non-positive values are left out)."""
    from matplotlib.figure import Figure  # imported here: a second of start-up that only charts pay
    from matplotlib.ticker import MaxNLocator

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10, loc="left")
    axes.set_xlabel("kimg (thousands of images seen)", fontsize=9)
    axes.tick_params(labelsize=8)
    axes.grid(True, color="#eeeeee", linewidth=0.8)
    lines = {name: history.series(name) for name in names}
    if log_y:
        lines = {name: [(x, y) for x, y in series if y > 0] for name, series in lines.items()}
    xs = {x for series in lines.values() for x, _ in series}
    if len(xs) < 2:
        axes.text(0.5, 0.5, "not enough logged steps yet", transform=axes.transAxes, ha="center", color="#888888")
        axes.set_xticks([])
        axes.set_yticks([])
        return figure

    all_y = [y for series in lines.values() for _, y in series]
    for index, (name, series) in enumerate(lines.items()):
        if not series:
            continue
        colour = COLOURS[index % len(COLOURS)]
        kimg = np.array([x for x, _ in series], dtype=np.float64) / 1000
        values = np.array([y for _, y in series], dtype=np.float64)
        label = name.split(":", 1)[-1].rsplit("/", 1)[-1]  # vanishing_d/blocks.0 -> blocks.0 (the title says D)
        window = smooth if smooth is not None else smoothing_window(len(values))
        if len(values) == 1:
            axes.plot(kimg, values, "o", color=colour, markersize=3, label=label)
        elif window > 1:
            axes.plot(kimg, values, color=colour, alpha=0.25, linewidth=0.8)
            axes.plot(kimg, moving_average(values, window), color=colour, linewidth=1.6, label=label)
        else:
            axes.plot(kimg, values, color=colour, linewidth=1.4, label=label)
    if log_y:
        axes.set_yscale("log")
    else:
        axes.set_ylim(*_robust_range(all_y))
        axes.yaxis.set_major_locator(MaxNLocator(nbins=6))
    axes.xaxis.set_major_locator(MaxNLocator(nbins=8))
    smoothed = smooth if smooth is not None else smoothing_window(max(len(series) for series in lines.values()))
    legend_title = f"mean of {smoothed} points" if smoothed > 1 else None
    axes.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title=legend_title, title_fontsize=7
    )
    return figure


def _robust_range(values: list[float]) -> tuple[float, float]:
    """The 1st to 99th percentile with a margin, so one early spike does not flatten the rest of the run."""
    ordered = sorted(values)
    low = ordered[int(0.01 * (len(ordered) - 1))]
    high = ordered[math.ceil(0.99 * (len(ordered) - 1))]
    margin = (high - low) * 0.05 or max(abs(high), 1.0) * 0.05
    return low - margin, high + margin


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def run_charts(history: LossHistory, run_name: str, smooth: int | None = None) -> dict[str, bytes]:
    """`gand plot`: one PNG per view of the run that has data (file name -> PNG bytes). `smooth`: the moving
    average's window in logged points (None: a 25th of the points; 1: off)."""

    def named(prefix: str) -> list[str]:
        return [name for name in history.names if name.startswith(prefix)]

    views = {  # file -> (series, title, log scale)
        "losses.png": (history.plotted_names(), "losses", False),
        "discriminator.png": (named(STAT + "d_") + named(STAT + "acc_"), "D(x), D(G(z)) and D's accuracy", False),
        "gradient-norms.png": (named(STAT + "grad_norm_"), "gradient L2 norm per network", True),
        "vanishing-gradients-d.png": (named(STAT + "vanishing_d/"), "D: share of |grad| < 0.01 per layer group", False),
        "vanishing-gradients-g.png": (named(STAT + "vanishing_g/"), "G: share of |grad| < 0.01 per layer group", False),
    }
    for name in named("eval:"):  # one chart per score: FID (tens), KID (hundredths) and IS (units) share no axis
        score = name.removeprefix("eval:")
        views[f"{score.replace('_', '-')}.png"] = ([name], f"{score} over training", False)
    charts = {}
    for filename, (names, title, log_y) in views.items():
        if any(history.series(name) for name in names):
            charts[filename] = line_chart_png(history, names, f"{run_name}: {title}", smooth=smooth, log_y=log_y)
    return charts
