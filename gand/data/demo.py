"""Built-in demo data, made locally (no downloads, ever): painted landscapes, and scikit-learn's bundled digits.

landscapes:

Each image has a sky gradient, a sun or moon, and layered hills, painted in one of a few palettes; the palette is
its style label (sub-folder name), as WikiArt styles are for CAN. Sizes and aspect ratios vary the way scraped
collections do: most are at least 256 px on the short side, and a few are 100x100 thumbnails that a size filter
should drop (the Rice report's WikiArt outliers). A mix of JPEG and PNG files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_SIDE = 32  # the digits are written at this size


@dataclass(frozen=True)
class Palette:
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]
    hills: tuple[tuple[int, int, int], ...]  # far to near
    disc: tuple[int, int, int]  # sun or moon


PALETTES: dict[str, Palette] = {
    "dawn": Palette((64, 82, 150), (250, 170, 120), ((150, 110, 140), (105, 80, 110), (60, 50, 70)), (255, 230, 170)),
    "noon": Palette((40, 110, 210), (170, 215, 245), ((110, 160, 110), (70, 130, 70), (40, 90, 40)), (255, 250, 220)),
    "dusk": Palette((45, 30, 80), (240, 110, 60), ((120, 60, 70), (80, 40, 55), (40, 20, 35)), (255, 190, 90)),
    "night": Palette((5, 8, 30), (30, 40, 90), ((30, 35, 60), (20, 25, 45), (8, 10, 20)), (235, 235, 245)),
}
THUMBNAIL_SHARE = 0.05  # share of 100x100 outliers
THUMBNAIL_SIDE = 100


@dataclass(frozen=True)
class DemoImage:
    relpath: str
    data: bytes


def generate_landscapes(dest: str | Path, count: int = 2000, seed: int = 0, workers: int | None = None) -> dict:
    """Write `count` images under dest/<style>/; the same (count, seed) always gives the same files."""
    dest = Path(dest)
    for style in PALETTES:
        (dest / style).mkdir(parents=True, exist_ok=True)
    per_style = dict.fromkeys(PALETTES, 0)
    thumbnails = 0
    for item in _render_all(count, seed, workers or min(4, os.cpu_count() or 1)):
        (dest / item.relpath).write_bytes(item.data)
        per_style[item.relpath.split("/")[0]] += 1
        thumbnails += item.relpath.endswith("-thumb.jpg")
    return {"images": count, "per_style": per_style, "thumbnails": thumbnails, "dest": str(dest)}


def _render_all(count: int, seed: int, workers: int) -> Iterator[DemoImage]:
    jobs = [(seed, index) for index in range(count)]
    if workers <= 1:
        yield from (render_one(job) for job in jobs)
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(render_one, jobs, chunksize=16)


def render_one(job: tuple[int, int]) -> DemoImage:
    seed, index = job
    rng = np.random.default_rng([seed, index])
    style = list(PALETTES)[index % len(PALETTES)]
    thumbnail = rng.random() < THUMBNAIL_SHARE
    width, height = _pick_size(rng, thumbnail)
    pixels = paint_landscape(rng, PALETTES[style], width, height)
    image = Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    if thumbnail:
        name, fmt, options = f"{index:05d}-thumb.jpg", "JPEG", {"quality": 90}
    elif index % 4 == 3:
        name, fmt, options = f"{index:05d}.png", "PNG", {"compress_level": 1}
    else:
        name, fmt, options = f"{index:05d}.jpg", "JPEG", {"quality": 92}
    image.save(buffer, format=fmt, **options)
    return DemoImage(f"{style}/{name}", buffer.getvalue())


def _pick_size(rng: np.random.Generator, thumbnail: bool) -> tuple[int, int]:
    if thumbnail:
        return THUMBNAIL_SIDE, THUMBNAIL_SIDE
    short = int(rng.integers(256, 385))
    long = int(short * rng.uniform(1.0, 1.8))
    return (long, short) if rng.random() < 0.8 else (short, long)


def paint_landscape(rng: np.random.Generator, palette: Palette, width: int, height: int) -> np.ndarray:
    """HxWx3 uint8: sky gradient, glowing disc, three hill layers, a little grain."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top = np.array(palette.sky_top, np.float32) + rng.normal(0, 8, 3)
    horizon = np.array(palette.sky_horizon, np.float32) + rng.normal(0, 8, 3)
    canvas = np.broadcast_to(top + (horizon - top) * ys**0.8, (height, width, 3)).copy()

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(width, height)
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.12, 0.45) * height
    radius = rng.uniform(0.06, 0.12) * short
    distance = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    glow = np.clip(1.0 - (distance - radius) / (2.5 * radius), 0.0, 1.0) ** 2 * 0.35
    disc = np.clip(radius + 1.0 - distance, 0.0, 1.0)
    alpha = np.maximum(glow, disc)[..., None]
    canvas = canvas * (1 - alpha) + np.array(palette.disc, np.float32) * alpha

    horizon_y = rng.uniform(0.45, 0.65) * height
    xs = np.arange(width, dtype=np.float32) / short
    for depth, colour in enumerate(palette.hills):
        ridge = horizon_y + depth * 0.1 * height
        for _ in range(3):
            freq, phase = rng.uniform(1.0, 6.0) * (1 + depth), rng.uniform(0, 2 * np.pi)
            ridge = ridge + rng.uniform(0.02, 0.08) * height * np.sin(freq * xs + phase)
        shade = np.array(colour, np.float32) + rng.normal(0, 6, 3)
        below = yy > ridge[None, :]
        canvas[below] = shade + (yy[below] - ridge[np.nonzero(below)[1]])[:, None] * -0.05
    canvas += rng.normal(0, 3.0, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def upscaled_digits() -> tuple[list[Image.Image], np.ndarray]:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes) as 32x32 grayscale images
    (upscaled once with a bicubic filter; ink white on black, as in MNIST) and their labels (int64)."""
    from sklearn.datasets import load_digits  # ships its data inside the package: nothing is fetched

    digits = load_digits()
    images = []
    for scan in digits.images:
        pixels = np.clip(scan * (255.0 / 16.0), 0, 255).astype(np.uint8)  # values are 0..16
        images.append(Image.fromarray(pixels, "L").resize((DIGITS_SIDE, DIGITS_SIDE), Image.Resampling.BICUBIC))
    return images, digits.target.astype(np.int64)


def write_digits(dest: str | Path) -> dict:
    """`upscaled_digits` as 32x32 grayscale PNGs, so that the 32 px models and `gand pack` (which never upscales
    unless asked) can use them directly; labels are sub-folders."""
    images, labels = upscaled_digits()
    dest = Path(dest)
    per_class: dict[str, int] = {}
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = dest / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
        per_class[str(int(label))] = per_class.get(str(int(label)), 0) + 1
    return {"images": len(images), "per_class": dict(sorted(per_class.items())), "dest": str(dest)}
