"""Loading: images/s from gand's shard loader against an ImageFolder-style loader that opens, decodes and resizes
the raw images on the fly every epoch (what the reports did), at 64 and 256 px, same workers, same batch.

The raw set is the pack bench's WikiArt-like JPEGs (1,000-2,800 px); gand reads the shards `gand pack` made of
them once (packing time is bench/pack.py's business, not counted here).

    .venv/bin/python bench/load.py [--images 120] [--workers 2] [--batches 16] [--batch 16]
"""

from __future__ import annotations

import argparse
import shutil
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


def gand_loader(packed: Path, resolution: int, batch: int, workers: int, batches: int) -> float:
    stream = ImageLoader(str(packed), resolution, batch, seed=0, workers=workers, shuffle_buffer=64).batches()
    next(stream)
    return timed(lambda: [next(stream) for _ in range(batches)])


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
    packed = work / f"packed-{args.images}"
    if not (packed / "manifest.json").exists():
        shutil.rmtree(packed, ignore_errors=True)
        pack(str(source), str(packed), PackOptions(resolutions=RESOLUTIONS, workers=args.workers, shard_size=40))
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
    write_record("load", args.out, vars(args), rows, target_met=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
