"""Loading, three tables from the pack bench's WikiArt-like JPEGs (1,000-2,800 px), packed once per format
(packing time is bench/pack.py's business, not counted here):

1. gand's shard loader against an ImageFolder-style loader that opens, decodes and resizes the raw images on the
   fly every epoch (what the reports did), at 64 and 256 px, same workers, same batch (PNG shards).
2. Per worker core: images/s of one loader worker process for PNG, JPEG (q95) and raw shards at 32, 64 and
   256 px: what one core feeds a GPU with (targets for raw: >= 2,000 at 256 px, >= 8,000 at 32 px).
3. The cost of an epoch boundary: 8-batch epochs against epochs of thousands of batches, same data and workers
   (target: within 5%).

    .venv/bin/python bench/load.py [--images 120] [--workers 2] [--batches 16] [--batch 16]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from bench.common import REPO, print_table, timed, write_record
from bench.pack import make_inputs
from gand.data.images import center_square_box
from gand.data.loader import ImageLoader
from gand.data.pack import PackOptions, pack

RESOLUTIONS = (64, 256)
CORE_RESOLUTIONS = (32, 64, 256)
FORMATS = ("png", "jpg", "raw")
DEFAULT_WORK = "bench/work/load"


class OnTheFly(Dataset):
    """torchvision's ImageFolder + CenterCrop + Resize, by hand (no torchvision here): every epoch decodes the
    full-size JPEG again and resizes it."""

    def __init__(self, paths: list[Path], resolution: int):
        self.paths, self.resolution = paths, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        box = center_square_box(image.width, image.height)
        small = image.resize((self.resolution, self.resolution), Image.Resampling.BILINEAR, box=box)
        return torch.from_numpy(np.array(small)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def on_the_fly(paths: list[Path], resolution: int, batch: int, workers: int, batches: int) -> float:
    loader = DataLoader(OnTheFly(paths, resolution), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0)  # fmt: skip
    iterator, drawn = iter(loader), 0

    def draw() -> None:
        nonlocal iterator, drawn
        while drawn < batches:
            try:
                next(iterator)
            except StopIteration:
                iterator = iter(loader)  # a new epoch: everything is decoded again
                continue
            drawn += 1

    next(iterator)  # start-up (worker processes) is not counted, as for gand
    return timed(draw)


def gand_loader(packed: Path, resolution: int, batch: int, workers: int, batches: int,
                epoch_images: int | None = None) -> float:  # fmt: skip
    stream = ImageLoader(str(packed), resolution, batch, seed=0, workers=workers, epoch_images=epoch_images).batches()
    for _ in range(max(1, workers)):  # start-up: worker processes and their first batches are not counted
        next(stream)
    return timed(lambda: [next(stream) for _ in range(batches)])


def packed_as(source: Path, work: Path, images: int, fmt: str, workers: int) -> Path:
    packed = work / (f"packed-{images}" if fmt == "png" else f"packed-{images}-{fmt}")
    if not (packed / "manifest.json").exists():
        shutil.rmtree(packed, ignore_errors=True)
        options = PackOptions(resolutions=CORE_RESOLUTIONS, workers=workers, shard_size=40, output=fmt)
        pack(str(source), str(packed), options)
    return packed


def per_core_rows(source: Path, work: Path, args) -> list[dict]:
    """One loader worker process per format and resolution: images/s per worker core."""
    rows = []
    batches = args.batches * 4
    for fmt in FORMATS:
        packed = packed_as(source, work, args.images, fmt, args.workers)
        for resolution in CORE_RESOLUTIONS:
            seconds = gand_loader(packed, resolution, args.batch * 2, 1, batches)
            rows.append({"format": fmt, "resolution": resolution,
                         "images_per_second_per_core": round(args.batch * 2 * batches / seconds, 1)})  # fmt: skip
    return rows


def epoch_boundary_row(packed: Path, args) -> dict:
    """8-batch epochs against long ones, alternating, median of 3 pairs."""
    batches, batch = args.batches * 4, args.batch
    short, long = [], []
    for _ in range(3):
        short.append(gand_loader(packed, 64, batch, args.workers, batches, epoch_images=8 * batch))
        long.append(gand_loader(packed, 64, batch, args.workers, batches, epoch_images=10_000 * batch))
    ratio = statistics.median(long_s / short_s for short_s, long_s in zip(short, long, strict=True))
    return {"epochs": "8 batches vs 10,000 batches (64 px, PNG)", "ratio": round(ratio, 3),
            "short_images_per_second": round(batches * batch / statistics.median(short), 1),
            "long_images_per_second": round(batches * batch / statistics.median(long), 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=16, help="batches timed per loader and resolution")
    parser.add_argument("--work", default=DEFAULT_WORK)
    parser.add_argument("--out", default="bench/results/load.json")
    args = parser.parse_args()

    work = REPO / args.work
    # The pack bench's inputs, when they exist under the default work folders: no need to paint them twice.
    inputs = REPO / "bench" / "work" / "pack" if args.work == DEFAULT_WORK else work
    source = make_inputs(inputs / f"wikiart-like-{args.images}", args.images)
    packed = packed_as(source, work, args.images, "png", args.workers)
    paths = sorted(source.glob("*.jpg"))
    images = args.batch * args.batches
    rows = []
    for resolution in RESOLUTIONS:
        baseline = on_the_fly(paths, resolution, args.batch, args.workers, args.batches)
        ours = gand_loader(packed, resolution, args.batch, args.workers, args.batches)
        for label, seconds in (("on the fly: decode + resize every epoch", baseline), ("gand shard loader", ours)):
            rows.append({"resolution": resolution, "loader": label, "images_per_second": round(images / seconds, 1),
                         "ratio": round(baseline / seconds, 2)})  # fmt: skip
    print_table(rows, [("resolution", "px"), ("loader", "loader"), ("images_per_second", "images/s"),
                       ("ratio", "vs on the fly")])  # fmt: skip
    at_256 = next(r["ratio"] for r in rows if r["resolution"] == 256 and r["loader"] == "gand shard loader")
    target = at_256 >= 5.0
    print(f"target: gand >= 5x the on-the-fly loader at 256 px -> {'met' if target else 'MISSED'} ({at_256:.1f}x)")

    cores = per_core_rows(source, work, args)
    print()
    print_table(
        cores, [("format", "shards"), ("resolution", "px"), ("images_per_second_per_core", "images/s per core")]
    )
    raw = {row["resolution"]: row["images_per_second_per_core"] for row in cores if row["format"] == "raw"}
    raw_met = raw[256] >= 2000 and raw[32] >= 8000
    print(f"target: raw >= 2,000 images/s per core at 256 px and >= 8,000 at 32 px -> "
          f"{'met' if raw_met else 'MISSED'} ({raw[256]:.0f}, {raw[32]:.0f})")  # fmt: skip
    boundary = epoch_boundary_row(packed, args)
    print()
    print_table([boundary], [("epochs", "epochs"), ("short_images_per_second", "short: images/s"),
                             ("long_images_per_second", "long: images/s"), ("ratio", "short vs long")])  # fmt: skip
    boundary_met = boundary["ratio"] >= 0.95
    print(f"target: an epoch boundary costs nothing measurable (within 5%) -> {'met' if boundary_met else 'MISSED'}")
    write_record("load", args.out, vars(args), rows, target_met=target, per_core=cores, epoch_boundary=boundary,
                 raw_target_met=raw_met, epoch_boundary_target_met=boundary_met)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
