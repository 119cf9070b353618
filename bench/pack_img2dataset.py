"""img2dataset on the pack bench's files: one `img2dataset.download` per resolution, as one would build them.

Runs inside its own virtualenv (bench/pack.py makes it: img2dataset pins its own numpy, OpenCV and pandas), so it
imports nothing from gand. Settings match gand's where img2dataset has them: file:// URLs (no HTTP cost), the same
process count, center crop, Lanczos, PNG at gand's compression level, WebDataset shards, no EXIF or hash work.
Prints one JSON line: total seconds, seconds per resolution and the images each resolution wrote.

    <venv>/bin/python bench/pack_img2dataset.py SOURCE_DIR OUT_DIR --resolutions 32,64,128,256 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--resolutions", default="32,64,128,256")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--png-compress-level", type=int, default=3)
    args = parser.parse_args()

    import img2dataset  # after argparse: --help works without it

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    paths = sorted(args.source.resolve().glob("*.jpg"))
    url_list = args.out / "urls.txt"
    url_list.write_text("".join(f"{path.as_uri()}\n" for path in paths))
    # img2dataset gives each input shard to one process: as many shards as processes keeps all of them busy.
    samples_per_shard = max(1, math.ceil(len(paths) / args.workers))

    seconds_by_resolution: dict[int, float] = {}
    written_by_resolution: dict[int, int] = {}
    for resolution in (int(text) for text in args.resolutions.split(",")):
        folder = args.out / f"{resolution}px"
        started = time.perf_counter()
        img2dataset.download(
            url_list=str(url_list), output_folder=str(folder), image_size=resolution, output_format="webdataset",
            processes_count=args.workers, thread_count=4, number_sample_per_shard=samples_per_shard,
            resize_mode="center_crop", downscale_interpolation="lanczos", upscale_interpolation="lanczos",
            encode_format="png", encode_quality=args.png_compress_level, extract_exif=False, compute_hash=None,
            timeout=30,
        )  # fmt: skip
        seconds_by_resolution[resolution] = time.perf_counter() - started
        written_by_resolution[resolution] = sum(
            json.loads(stats.read_text())["successes"] for stats in folder.glob("*_stats.json")
        )
    result = {"seconds": sum(seconds_by_resolution.values()), "images": len(paths)}
    result |= {"seconds_by_resolution": seconds_by_resolution, "written_by_resolution": written_by_resolution}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
