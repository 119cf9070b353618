"""Packing speed: gand (decode once, every resolution, JPEG draft) against a naive per-resolution pipeline.

Inputs are WikiArt-like: large JPEGs (1,000 to 2,800 px on the long side, quality 90) painted by gand's demo
generator. Both pipelines use the same worker count, the same Lanczos filter and the same PNG settings, and
write tar shards per resolution for 32, 64, 128 and 256 px; only the structure differs:
  - naive: for every resolution, open the file, decode it fully, crop, resize, encode (what a hand-written
    script that loops over resolutions does)
  - gand --no-draft: decode each image once, resize to every resolution
  - gand: the same, with libjpeg decoding at reduced scale where the 256 px output keeps its quality
  - img2dataset (the usual tool for this): one run per resolution on file:// URLs of the same files, same
    process count, Lanczos and PNG level (bench/pack_img2dataset.py). It lives in its own virtualenv under
    bench/work/, installed from the package registry on first use; without the registry its row says skipped.

    .venv/bin/python bench/pack.py [--images 120] [--workers 2] [--img2dataset auto|skip|PYTHON]
                                   [--out bench/results/pack.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, print_table, timed, write_record
from gand.data.demo import PALETTES, paint_landscape
from gand.data.images import PNG_COMPRESS_LEVEL, center_square_box
from gand.data.pack import PackOptions, pack

# Keep this module's imports light: spawned workers (both pipelines') import it again as their __main__.
RESOLUTIONS = (32, 64, 128, 256)
IMG2DATASET = "img2dataset==1.47.0"  # pinned: the row should compare against the same code every run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", default="bench/work/pack")
    parser.add_argument("--img2dataset", default="auto", help="auto (own venv, made once), skip, or a Python with it")
    parser.add_argument("--out", default="bench/results/pack.json")
    args = parser.parse_args()

    work = REPO / args.work
    source = make_inputs(work / f"wikiart-like-{args.images}", args.images)
    megapixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in sorted(source.glob("*.jpg"))) / 1e6
    print(f"{args.images} JPEGs, {megapixels / args.images:.1f} megapixels on average, {args.workers} workers")

    rows = []
    naive_seconds = timed(lambda: naive_pack(source, work / "naive", args.workers))
    rows.append(row("naive: re-open and resize per resolution", args.images, naive_seconds, naive_seconds))
    for label, draft in (("gand pack --no-draft (decode once)", False), ("gand pack (decode once + JPEG draft)", True)):
        dest = work / ("gand-draft" if draft else "gand-full")
        shutil.rmtree(dest, ignore_errors=True)
        options = PackOptions(resolutions=RESOLUTIONS, workers=args.workers, draft=draft, shard_size=1000)
        seconds = timed(lambda options=options, dest=dest: pack(str(source), str(dest), options))
        rows.append(row(label, args.images, seconds, naive_seconds))
    gand_row = rows[-1]
    rows.append(img2dataset_row(args, source, work, naive_seconds))

    columns = [("pipeline", "pipeline"), ("images_per_second", "images/s"), ("ratio", "vs naive"), ("note", "")]
    print_table(rows, columns)
    if "seconds" in rows[-1]:
        print(f"gand pack vs img2dataset: {rows[-1]['seconds'] / gand_row['seconds']:.2f}x")
    target = gand_row["ratio"] >= 3.0
    print(f"target: gand >= 3x naive at equal workers -> {'met' if target else 'MISSED'}")
    settings = {"images": args.images, "workers": args.workers, "resolutions": list(RESOLUTIONS),
                "mean_megapixels": round(megapixels / args.images, 2)}  # fmt: skip
    write_record("pack", args.out, settings, rows, target_met=target)
    return 0


def row(label: str, images: int, seconds: float, naive_seconds: float) -> dict:
    return {"pipeline": label, "seconds": round(seconds, 2), "images_per_second": round(images / seconds, 2),
            "ratio": round(naive_seconds / seconds, 2)}  # fmt: skip


def make_inputs(folder: Path, count: int) -> Path:
    if folder.exists() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    styles = list(PALETTES)
    for index in range(count):
        rng = np.random.default_rng([7, index])
        long = int(rng.integers(1000, 2801))
        short = int(long / rng.uniform(1.2, 1.8))
        width, height = (long, short) if index % 3 else (short, long)
        pixels = paint_landscape(rng, PALETTES[styles[index % len(styles)]], width, height)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return folder


# -- img2dataset, in its own virtualenv -------------------------------------------------------------------------
def img2dataset_row(args: argparse.Namespace, source: Path, work: Path, naive_seconds: float) -> dict:
    label = f"img2dataset {IMG2DATASET.split('==')[1]}: one run per resolution"
    if args.img2dataset == "skip":
        return {"pipeline": label, "note": "skipped (--img2dataset skip)"}
    try:
        python = img2dataset_python(args.img2dataset, work)
    except RuntimeError as error:
        print(f"img2dataset row skipped: {error}", file=sys.stderr)
        return {"pipeline": label, "note": f"skipped: {error}"}
    command = [str(python), str(REPO / "bench" / "pack_img2dataset.py"), str(source), str(work / "img2dataset"),
               "--resolutions", ",".join(map(str, RESOLUTIONS)), "--workers", str(args.workers),
               "--png-compress-level", str(PNG_COMPRESS_LEVEL)]  # fmt: skip
    # Albumentations (an img2dataset dependency) asks the network for updates on import unless told not to.
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"img2dataset run failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    short = {res: n for res, n in result["written_by_resolution"].items() if n != args.images}
    if short:
        raise SystemExit(f"img2dataset wrote fewer than {args.images} images at {short} px; see {work / 'img2dataset'}")
    return {**row(label, args.images, result["seconds"], naive_seconds), "note": "file:// URLs, own venv"}


def img2dataset_python(choice: str, work: Path) -> Path:
    """The interpreter that has img2dataset: given, or a virtualenv under bench/work made once from the registry."""
    if choice != "auto":
        return Path(choice)
    venv = work.parent / "img2dataset-venv"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{IMG2DATASET}"
    if stamp.exists():
        return python
    print(f"installing {IMG2DATASET} into {venv} (once; its own numpy, OpenCV and pandas stay out of .venv)")
    shutil.rmtree(venv, ignore_errors=True)
    steps = ([sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", IMG2DATASET])  # fmt: skip
    for step in steps:
        finished = subprocess.run(step, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            last_line = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"could not install {IMG2DATASET} from the registry ({last_line})")
    stamp.touch()
    return python


# -- the naive pipeline ------------------------------------------------------------------------------------------
def naive_one(task: tuple[str, int]) -> bytes:
    path, resolution = task
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    box = center_square_box(image.width, image.height)
    small = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def naive_pack(source: Path, dest: Path, workers: int) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    paths = sorted(str(p) for p in source.glob("*.jpg"))
    with get_context("spawn").Pool(workers) as pool:
        for resolution in RESOLUTIONS:
            with tarfile.open(dest / f"{resolution}.tar", "w") as tar:
                for path, data in zip(paths, pool.imap(naive_one, [(p, resolution) for p in paths]), strict=True):
                    info = tarfile.TarInfo(f"{Path(path).stem}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    sys.exit(main())
