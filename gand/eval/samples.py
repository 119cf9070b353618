"""Sample grids: generator output in [-1, 1] -> one PNG."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from gand.checkpoint.contents import SavedRun

CALIBRATION_LATENTS = 512  # seeded latents whose BatchNorm statistics sampling uses
CALIBRATION_CHUNK = 64
CALIBRATION_SEED = 20261130


@contextlib.contextmanager
def sampling_mode(generator: nn.Module, recipe) -> Iterator[nn.Module]:
    """G ready to sample: eval mode, with BatchNorm's statistics recalibrated on a fixed, seeded set of latents
    ("standing statistics", as BigGAN samples). Each image is then a function of its latent (and class) and the
    weights alone, whatever the batch around it: `gand sample --seed 3 --n 1` and `--n 16` start with the same
    picture, and the fixed-noise grids written during training are comparable across steps (issue 19).

    Why recalibrate rather than use the running statistics training keeps: those trail G's weights (momentum 0.1),
    are far off early in training (samples come out grey), and belong to G, not to the EMA generator whose weights
    differ. The calibration is one forward pass over CALIBRATION_LATENTS latents (classes uniform for a conditional
    G). G's buffers and mode are restored afterwards, so training is not disturbed. `recipe` supplies latent_dim,
    num_classes and sample_classes."""
    norms = [module for module in generator.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    buffers = {name: tensor.clone() for name, tensor in generator.named_buffers()}
    momenta = [norm.momentum for norm in norms]
    was_training = generator.training
    try:
        if norms:
            _recalibrate(generator, norms, recipe)
        generator.eval()
        yield generator
    finally:
        for name, tensor in generator.named_buffers():
            tensor.copy_(buffers[name])
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        generator.train(was_training)


@torch.no_grad()
def _recalibrate(generator: nn.Module, norms: list[nn.Module], recipe) -> None:
    device = next(generator.parameters()).device
    seeded = torch.Generator().manual_seed(CALIBRATION_SEED)
    latents = torch.randn(CALIBRATION_LATENTS, recipe.latent_dim, generator=seeded).to(device)
    classes = None
    if recipe.sample_classes and recipe.num_classes:
        classes = (torch.arange(CALIBRATION_LATENTS) % recipe.num_classes).to(device)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration chunks
    generator.train()
    for start in range(0, CALIBRATION_LATENTS, CALIBRATION_CHUNK):
        chunk = slice(start, start + CALIBRATION_CHUNK)
        generator(latents[chunk], None if classes is None else classes[chunk])


@torch.no_grad()
def generate(generator: nn.Module, noise: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """G(noise, classes) -> float32 N x C x H x W on the CPU, in eval mode (G's buffers untouched, its mode
    restored): no image depends on the batch around it. Inside `sampling_mode(generator, recipe)` BatchNorm uses
    the recalibrated statistics; elsewhere the running statistics training kept."""
    was_training = generator.training
    generator.eval()
    try:
        return generator(noise, classes).float().cpu()
    finally:
        generator.train(was_training)


def grid_png(
    images: torch.Tensor,
    columns: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> bytes:
    """N x C x H x W in value_range -> PNG bytes of a grid (near-square unless `columns` is given)."""
    return png_bytes(grid_pixels(images, columns, padding, value_range))


def grid_pixels(
    images: torch.Tensor,
    columns: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """N x C x H x W in value_range -> the grid as rows x cols x C uint8 (C = 1 or 3; near-square unless `columns`
    is given, `padding` black pixels between and around the images)."""
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    low, high = value_range
    unit = ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    pixels = (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    canvas = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    for index in range(count):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top : top + height, left : left + width] = pixels[index]
    return canvas


def png_bytes(pixels: np.ndarray) -> bytes:
    """H x W x C uint8 (C = 1 or 3) -> PNG bytes."""
    channels = pixels.shape[-1]
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, "RGB" if channels == 3 else "L").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def labelled_png(
    pixels: np.ndarray,
    cell: int,
    title: str | None = None,
    column_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    padding: int = 2,
) -> bytes:
    """A `grid_pixels` grid (H x W x C uint8, square cells of `cell` px plus `padding`) with a title line above,
    a label above each column and one left of each row, on white; small cells are enlarged (nearest neighbour) to
    at least 64 px so that the labels fit."""
    from PIL import ImageDraw, ImageFont

    scale = max(1, math.ceil(64 / cell))
    image = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).convert("RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    font = ImageFont.load_default(size=12)
    top = (18 if title else 0) + (16 if column_labels else 0)
    left = (max(font.getlength(label) for label in row_labels) + 8) if row_labels else 0
    canvas = Image.new("RGB", (image.width + int(left), image.height + top + 2), "white")
    canvas.paste(image, (int(left), top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    step = (cell + padding) * scale
    for index, label in enumerate(column_labels or []):
        centre = left + padding * scale + index * step + cell * scale / 2
        draw.text((centre - font.getlength(label) / 2, top - 15), label, fill="black", font=font)
    for index, label in enumerate(row_labels or []):
        middle = top + padding * scale + index * step + cell * scale / 2
        draw.text((4, middle - 7), label, fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def load_generator(location: str, use_ema: bool = True):
    """A run's generator (its EMA when there is one), its config, class count and checkpoint name.

    `location`: a run directory (its `checkpoints/`), a checkpoint store URL (its newest commit), or one
    checkpoint (`.../ckpt-000000012800`). Built from the config snapshot stored in the checkpoint, so nothing but
    the checkpoint is needed.
    """
    loaded = load_networks(location, use_ema)
    return loaded.generator, loaded.cfg, loaded.num_classes, loaded.name


@dataclass
class LoadedNetworks:
    """A checkpoint's networks, built from its own config snapshot, in eval mode's hands (no optimizer state)."""

    generator: nn.Module  # the EMA generator when the checkpoint has one and it was asked for
    discriminator: nn.Module
    cfg: Any  # GandConfig, validated from the checkpoint's state.json
    num_classes: int
    name: str  # the checkpoint's name (ckpt-<images seen>)
    saved: SavedRun  # the rest of state.json: class names, counters


def load_networks(location: str, use_ema: bool = True) -> LoadedNetworks:
    """Generator (EMA when there is one), discriminator, config, class count and checkpoint name; see
    load_generator for `location`. Raises DataError when there is no usable checkpoint there."""
    from gand.checkpoint.contents import DISCRIMINATOR, SavedRun, sampling_weights
    from gand.checkpoint.manager import UNUSABLE, CheckpointManager, SingleProcess
    from gand.config import validate_config
    from gand.errors import DataError
    from gand.models import build_from_config

    store_url, name = checkpoint_location(location)
    manager = CheckpointManager(store_url, SingleProcess())
    try:
        found = manager.load_weights(name) if name else manager.load_latest_weights()
    except UNUSABLE as err:
        raise DataError(f"checkpoint {location} cannot be used: {err}") from None
    if found is None:
        raise DataError(f"no committed checkpoint under {location}")
    name, weights, state = found
    saved = SavedRun.from_state(state)
    cfg = validate_config(saved.config, source=f"{name}/state.json")
    num_classes = int(saved.num_classes or 0)
    generator, discriminator = build_from_config(cfg, num_classes)
    generator.load_state_dict(sampling_weights(weights, use_ema))  # consolidated fp32, whatever ZeRO stage wrote it
    discriminator.load_state_dict(weights[DISCRIMINATOR])
    return LoadedNetworks(generator, discriminator, cfg, num_classes, name, saved)


def checkpoint_location(location: str) -> tuple[str, str | None]:
    """(checkpoint store URL, a checkpoint's name or None for the newest)."""
    import os
    import posixpath

    from gand.checkpoint.manager import PREFIX

    trimmed = location.rstrip("/")
    base = posixpath.basename(trimmed)
    if base.startswith(PREFIX):
        return posixpath.dirname(trimmed), base
    if "://" not in trimmed and os.path.isdir(os.path.join(trimmed, "checkpoints")):
        return os.path.join(trimmed, "checkpoints"), None  # a run directory
    return trimmed, None


MAX_LABELLED_CLASSES = 16  # a conditional grid gets one labelled column per class up to this many classes


def _class_grid(
    count: int, class_index: int | None, class_names: list[str]
) -> tuple[torch.Tensor, int | None, dict[str, Any]]:
    """A conditional grid's classes (N, int64), columns and labels: one class when asked for, else a labelled column
    per class up to MAX_LABELLED_CLASSES, else classes 0, 1, 2, ... row by row."""
    num_classes = len(class_names)
    if class_index is not None:
        classes = torch.full((count,), class_index, dtype=torch.long)
        return classes, None, {"title": f"class {class_index}: {class_names[class_index]}"}
    if num_classes <= MAX_LABELLED_CLASSES:
        columns = min(num_classes, count)
        return torch.arange(count) % num_classes, columns, {"column_labels": [n[:12] for n in class_names[:columns]]}
    return torch.arange(count) % num_classes, None, {"title": f"classes 0, 1, 2, ... of {num_classes}, row by row"}


def write_samples(
    location: str,
    out: str,
    count: int = 64,
    class_index: int | None = None,
    seed: int = 0,
    interpolate_steps: int = 0,
    seeds: list[int] | None = None,
    arithmetic: str | None = None,
) -> list[str]:
    """`gand sample`: a grid of `count` seeded samples, and optionally latent walks and vector arithmetic, as PNGs
    under `out` (a folder or URL). Returns the written paths (relative to `out`)."""
    from gand.errors import ConfigError
    from gand.eval.latent import (
        evaluate_arithmetic,
        group_means,
        lerp,
        parse_arithmetic,
        seeded_latent,
        slerp,
    )
    from gand.models import Sampling
    from gand.storage import Store

    loaded = load_networks(location)
    generator, cfg, num_classes = loaded.generator, loaded.cfg, loaded.num_classes
    recipe = Sampling.from_config(cfg, num_classes)
    if class_index is not None and not (recipe.sample_classes and 0 <= class_index < num_classes):
        allowed = f"0..{num_classes - 1}" if recipe.sample_classes else "none: this generator is not conditional"
        raise ConfigError(f"--class {class_index}: allowed {allowed}")
    latent_dim, store, written = cfg.model.latent_dim, Store(out), []

    def render(
        name: str, z: torch.Tensor, columns: int | None = None, classes: torch.Tensor | None = None, **labels: Any
    ) -> None:
        if recipe.sample_classes and classes is None:
            classes = torch.full((len(z),), class_index or 0, dtype=torch.long)
        with sampling_mode(generator, recipe):
            images = generate(generator, z, classes)
        pixels = grid_pixels(images, columns=columns, value_range=recipe.value_range)
        store.write_bytes(name, labelled_png(pixels, images.shape[-1], **labels) if labels else png_bytes(pixels))
        written.append(name)

    grid_classes: torch.Tensor | None = None
    grid_columns: int | None = None
    grid_labels: dict[str, Any] = {}
    if recipe.sample_classes:
        class_names = list(loaded.saved.class_names or [])[:num_classes]
        class_names += [str(index) for index in range(len(class_names), num_classes)]  # unnamed: their indices
        grid_classes, grid_columns, grid_labels = _class_grid(count, class_index, class_names)
    latents = torch.stack([seeded_latent(seed + i, latent_dim) for i in range(count)])
    render("grid.png", latents, grid_columns, grid_classes, **grid_labels)
    if interpolate_steps:
        if interpolate_steps < 2:
            raise ConfigError(f"--interpolate needs at least 2 steps (got {interpolate_steps})")
        walk = seeds or [seed, seed + 1]
        if len(walk) < 2:
            raise ConfigError(
                f"--seeds {','.join(map(str, walk))}: a walk goes between seeds; give at least two, "
                "e.g. --seeds 3,17 (without --seeds: --seed and the next one)"
            )
        for a, b in itertools.pairwise(walk):
            za, zb = seeded_latent(a, latent_dim), seeded_latent(b, latent_dim)
            fractions = [f"{t:.2g}" for t in torch.linspace(0, 1, interpolate_steps).tolist()]
            for kind, walk_latents in (
                ("linear", lerp(za, zb, interpolate_steps)),
                ("spherical", slerp(za, zb, interpolate_steps)),
            ):
                render(
                    f"interpolate-{kind}-{a}-{b}.png",
                    walk_latents,
                    interpolate_steps,
                    title=f"{kind} walk from seed {a} to seed {b}",
                    column_labels=fractions,
                )
    if arithmetic:
        parsed = parse_arithmetic(arithmetic)
        means = group_means(parsed, latent_dim)
        result = evaluate_arithmetic(parsed, means)
        # Row 1: each term's averaged latent, then the result; below, the result with a little noise (as the
        # DCGAN paper shows it), so one lucky point is not mistaken for the effect.
        jitter = torch.Generator().manual_seed(seed)
        variants = [result + 0.25 * torch.randn(latent_dim, generator=jitter) for _ in range(len(parsed.terms))]
        rows = [*(means[name] for _, name in parsed.terms), result, *variants, result]
        signs = [
            ("" if index == 0 and sign > 0 else "+ " if sign > 0 else "- ") + name
            for index, (sign, name) in enumerate(parsed.terms)
        ]
        render(
            "arithmetic.png",
            torch.stack(rows),
            len(parsed.terms) + 1,
            title=arithmetic.split(":")[-1].strip(),
            column_labels=[*signs, "= result"],
            row_labels=["means", "+ noise"],
        )
    return written


def plot_run(location: str, out: str | None = None, smooth: int | None = None) -> dict:
    """`gand plot`: the run's history from its newest (or a named) checkpoint, as PNG charts under `out`; `smooth`
    is the moving average's window in logged points (None: a 25th of the points, 1: off)."""
    import posixpath

    from gand.checkpoint.contents import SavedRun
    from gand.checkpoint.manager import CheckpointManager, SingleProcess
    from gand.errors import ConfigError, DataError
    from gand.observability.curves import LossHistory, run_charts
    from gand.storage import Store

    store_url, name = checkpoint_location(location)
    manager = CheckpointManager(store_url, SingleProcess())
    found = manager.load_history(name)
    if found is None:
        raise DataError(f"no committed checkpoint under {location}")
    name, state = found
    if state is None:
        raise DataError(f"{name} was written before gand kept histories in checkpoints; nothing to plot")
    history = LossHistory.from_state(state)
    run_name = SavedRun.from_state(manager.load_state(name)).run_name
    if out is None:  # beside the checkpoints when they are local, else here
        parent = posixpath.dirname(store_url.rstrip("/"))
        out = posixpath.join(parent, "plots") if manager.store.is_local else f"{run_name}-plots"
    store = Store(out)
    if smooth is not None and smooth < 1:
        raise ConfigError(f"--smooth {smooth}: a window of at least 1 logged point (1 = no smoothing)")
    charts = run_charts(history, run_name, smooth)
    for filename, png in charts.items():
        store.write_bytes(filename, png)
    return {"checkpoint": name, "out": out, "written": sorted(charts), "points": len(history.points)}
