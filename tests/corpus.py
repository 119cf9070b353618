"""Small image collections that tests build on the fly: the bad-input corpus, distinct good images."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def save(image: Image.Image, path: Path, fmt: str | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **options)
    return path


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pattern(kind: str, size: tuple[int, int] = (300, 300), seed: int = 0) -> Image.Image:
    """Structurally different pictures, so perceptual hashes are far apart (no accidental near duplicates)."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    if kind == "rings":
        value = np.sin(np.hypot(xx - width / 3, yy - height / 2) / 9.0) * 127 + 128
        pixels = np.stack([value, value[::-1], 255 - value], axis=-1)
    elif kind == "stripes":
        value = ((xx // 25) % 2) * 200 + 30
        pixels = np.stack([value, 255 - value, value * 0.5], axis=-1)
    elif kind == "blobs":
        noise = rng.random((height // 30 + 1, width // 30 + 1))
        big = np.kron(noise, np.ones((30, 30)))[:height, :width] * 255
        pixels = np.stack([big, big * 0.3, 255 - big], axis=-1)
    elif kind == "diagonal":
        value = (xx + 2 * yy) / (width + 2 * height) * 255
        pixels = np.stack([value, 128 + 0 * value, 255 - value], axis=-1)
    elif kind == "checker":
        value = (((xx // 40) + (yy // 40)) % 2) * 255
        pixels = np.stack([value, value, 0 * value + 60], axis=-1)
    else:
        raise ValueError(kind)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds (almost) no pixel data: a decompression-bomb probe."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


SIXTEEN_BIT_VALUE = 40000  # rescaled: round(40000 * 255 / 65535) = 156; clipped it would be 255


def build_bad_corpus(root: Path) -> dict:
    """The issue's corpus. Returns what packing it must give with --near-duplicates 4 --max-aspect 10 and
    resolutions 32,64 (so images need a shortest side of 64)."""
    good = pattern("rings")
    save(good, root / "a_good.png")
    (root / "b_good_copy.png").write_bytes((root / "a_good.png").read_bytes())  # exact duplicate
    save(good, root / "c_good_requality.jpg", quality=90)  # same picture, other bytes: near duplicate
    save(pattern("blobs", seed=3), root / "nested" / "deeper" / "good_nested.png")  # a good image, nested
    save(pattern("stripes").convert("CMYK"), root / "cmyk.jpg", quality=95)
    sixteen = Image.fromarray(np.full((300, 300), SIXTEEN_BIT_VALUE, np.uint16))
    save(sixteen, root / "sixteen_bit.png")
    palette = pattern("checker").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    transparent_index = palette.getpixel((0, 0))
    save(palette, root / "palette_transparent.png", transparency=transparent_index)
    rotated = Image.new("RGB", (400, 300), (220, 20, 20))
    rotated.paste((20, 20, 220), (200, 0, 400, 300))  # left half red, right half blue as stored
    exif = rotated.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: red on top, blue below
    save(rotated, root / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
    (root / "zero_bytes.jpg").write_bytes(b"")
    (root / "text_named.jpg").write_text("this is not a picture\n")
    whole_jpeg = encoded(pattern("diagonal"), "JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(whole_jpeg[: len(whole_jpeg) // 2])
    whole_png = encoded(pattern("diagonal", seed=1), "PNG")
    (root / "truncated.png").write_bytes(whole_png[: len(whole_png) // 2])
    (root / "bomb_header.png").write_bytes(png_header_only(50000, 50000))
    save(Image.new("RGB", (1, 4000), (90, 90, 90)), root / "strip_1x4000.png")
    save(Image.new("RGB", (20, 20), (5, 5, 5)), root / "tiny.png")
    (root / "notes.txt").write_text("a stray file")
    return {
        "kept": {
            "a_good.png",
            "nested/deeper/good_nested.png",
            "cmyk.jpg",
            "sixteen_bit.png",
            "palette_transparent.png",
            "exif_rotated.jpg",
        },
        "skipped": {
            "duplicate": 1,
            "near_duplicate": 1,
            "empty_file": 1,
            "decode_error": 3,
            "too_many_pixels": 1,
            "aspect_ratio": 1,
            "too_small": 1,
            "not_an_image": 1,
        },
    }


def vouch_for(dest: Path, shard_path: str) -> None:
    """Make the manifest promise the shard as it now is (a packer that wrote undecodable images, not damage)."""
    data = (dest / shard_path).read_bytes()
    for manifest_file in [dest / "manifest.json", *sorted((dest / "manifests").glob("*.json"))]:
        manifest = json.loads(manifest_file.read_text())
        for shards in manifest["shards"].values():
            for shard in shards:
                if shard["path"] == shard_path:
                    shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        manifest_file.write_text(json.dumps(manifest))
