"""Pixels: inspect a source image's header, decode it once into RGB, resize it to every resolution, encode it.

Everything here is a pure function of bytes and numbers, so pack workers and tests share it unchanged. The order
of checks is cheapest first: header facts (format, size) reject bombs and outliers before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels are composited on this colour: a fixed choice, so packing is deterministic.
BACKGROUND_RGB = (255, 255, 255)
BORDER_RGB = (0, 0, 0)  # keep_ratio pads with this
# Lanczos is the antialiased filter; PIL's reducing_gap first shrinks by an integer factor with a box filter,
# which keeps the quality and is much faster for large sources.
RESIZE_FILTER = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0
PNG_COMPRESS_LEVEL = 3  # lossless either way; 3 packs about 2x faster than the default 6 for ~5% more bytes
# JPEG draft decoding (libjpeg's DCT scaling) may shrink by 2, 4 or 8 while the side that matters stays at least
# this many times the largest target: the last, antialiased step still has margin to work with.
DRAFT_MARGIN = 2
RESIZE_MODES = ("center_crop", "keep_ratio", "none")
OUTPUT_FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}  # PIL-encoded member extension -> PIL format
# --output-format -> the image member's extension in a shard. "raw" is an uncompressed uint8 H x W x 3 .npy array:
# nothing to decode when training, about 3 bytes per pixel on disk.
RAW_EXTENSION = "npy"
OUTPUT_EXTENSIONS = {**{name: name for name in OUTPUT_FORMATS}, "raw": RAW_EXTENSION}
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(OUTPUT_EXTENSIONS.values())  # ("png", "webp", "jpg", "npy")
_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 4096  # gand writes 118 bytes; a larger header is not one of ours

# gand checks pixel counts itself, from the header and with a counted reason; PIL's own check would warn or raise
# mid-decode instead.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is a short counter name such as 'decode_error'."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# Source formats by family: what `--formats` names and what decides the decode path. Pillow names some members
# apart: MPO is a JPEG with a second picture (cameras, phones), APNG is read as PNG.
FORMAT_FAMILIES = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "TIFF": "tiff",
    "BMP": "bmp",
    "PPM": "ppm",
    "TGA": "tga",
    "ICO": "ico",
}
FAMILY_ALIASES = {"jpg": "jpeg", "tif": "tiff", "apng": "png", "mpo": "jpeg", "pgm": "ppm", "pbm": "ppm"}


def format_family(pil_format: str) -> str:
    """The family of a Pillow format name ("MPO" -> "jpeg"); unknown formats are their own family."""
    return FORMAT_FAMILIES.get(pil_format.upper(), pil_format.lower())


def family_names(names: Iterable[str]) -> frozenset[str]:
    """`--formats` names (any case, aliases like jpg/tif) as family names; ValueError naming an unknown one."""
    known = set(FORMAT_FAMILIES.values())
    families = set()
    for name in names:
        family = FAMILY_ALIASES.get(name.lower(), name.lower())
        if family not in known:
            raise ValueError(f"{name!r} is not a format family; use any of {', '.join(sorted(known))}")
        families.add(family)
    return frozenset(families)


@dataclass(frozen=True)
class ImageChecks:
    """Limits applied from the header, before decoding."""

    max_pixels: int = 178_956_970  # PIL's own decompression-bomb error threshold
    min_side: int = 0
    max_aspect: float | None = None  # long side / short side
    formats: frozenset[str] | None = None  # format families, e.g. {"jpeg", "png"}; None = any PIL can read
    needed_side: int = 0  # smallest side (center_crop) or longest side (keep_ratio) that avoids upscaling
    side_rule: str = "short"  # which side `needed_side` applies to: "short" or "long"


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, orientation applied, possibly draft-reduced
    original_width: int
    original_height: int
    source_format: str
    frames: int = 1  # frames in the file (GIF, APNG, MPO, multi-page TIFF): only the first is used


def decode_rgb(data: bytes, checks: ImageChecks = ImageChecks(), draft_side: int = 0) -> DecodedImage:
    """Check the header, decode fully (a truncated file fails here), apply EXIF orientation, convert to RGB.

    draft_side > 0 lets JPEGs decode at a reduced scale as long as their relevant side stays >= draft_side.
    """
    if not data:
        raise ImageRejected("empty_file", "0 bytes")
    try:
        opened = Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejected("decode_error", str(err) or type(err).__name__) from None
    with opened:
        source_format = opened.format or "unknown"
        width, height = opened.size
        _check_header(source_format, width, height, checks)
        if draft_side and format_family(source_format) == "jpeg":
            _draft(opened, width, height, draft_side, checks.side_rule)
        try:
            # Counting frames reads the file through: a truncated GIF or TIFF fails here, as a decode error.
            frames = getattr(opened, "n_frames", 1)  # the first frame is what is decoded (the file opens on it)
            opened.seek(0)
            opened.load()
            image = ImageOps.exif_transpose(opened)
        except (
            OSError,
            SyntaxError,
            ValueError,
            TypeError,
            IndexError,
            struct.error,
            Image.DecompressionBombError,
        ) as err:
            raise ImageRejected("decode_error", str(err) or type(err).__name__) from None
        return DecodedImage(to_rgb(image), width, height, source_format, frames)


def _check_header(source_format: str, width: int, height: int, checks: ImageChecks) -> None:
    if checks.formats is not None and format_family(source_format) not in checks.formats:
        raise ImageRejected("format_not_allowed", f"{source_format} (allowed: {', '.join(sorted(checks.formats))})")
    if width * height > checks.max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} is over {checks.max_pixels} pixels")
    short, long = min(width, height), max(width, height)
    if short < checks.min_side:
        raise ImageRejected("too_small", f"{width}x{height}: shortest side below the minimum {checks.min_side}")
    if checks.max_aspect is not None and long > checks.max_aspect * short:
        raise ImageRejected("aspect_ratio", f"{width}x{height}: aspect over {checks.max_aspect}")
    side = short if checks.side_rule == "short" else long
    if side < checks.needed_side:
        raise ImageRejected("too_small", f"{width}x{height}: would be upscaled to {checks.needed_side} px")


def _draft(image: Image.Image, width: int, height: int, draft_side: int, side_rule: str) -> None:
    side = min(width, height) if side_rule == "short" else max(width, height)
    scale = 1
    while scale < 8 and side // (scale * 2) >= draft_side * DRAFT_MARGIN:
        scale *= 2
    if scale > 1:
        # floor division: PIL picks the largest scale whose result still covers the requested size
        image.draft("RGB", (width // scale, height // scale))


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_to_rgb(image)
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255 if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    # Every way of carrying transparency composites the same: an alpha channel (RGBA, LA, PA), a palette index, or a
    # tRNS key colour on an RGB or greyscale image (Pillow's convert applies `info["transparency"]` in each case).
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit grayscale rescaled to 8 bits (65535 -> 255), never clipped at 255 as a plain convert would."""
    pixels = np.asarray(image).astype(np.int64)
    full_scale = 65535 if pixels.max(initial=0) <= 65535 else int(pixels.max())
    eight_bit = np.clip(np.round(pixels * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit, "L").convert("RGB")


def center_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)


def resize_to(image: Image.Image, resolution: int, mode: str = "center_crop") -> Image.Image:
    """One resolution x resolution image: centre square cut, whole image fitted with a border, or as it is."""
    if mode == "center_crop":
        box = center_square_box(image.width, image.height)
        return image.resize((resolution, resolution), RESIZE_FILTER, box=box, reducing_gap=REDUCING_GAP)
    if mode == "keep_ratio":
        scale = resolution / max(image.width, image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        fitted = image.resize(size, RESIZE_FILTER, reducing_gap=REDUCING_GAP)
        canvas = Image.new("RGB", (resolution, resolution), BORDER_RGB)
        canvas.paste(fitted, ((resolution - size[0]) // 2, (resolution - size[1]) // 2))
        return canvas
    if mode == "none":
        if image.size != (resolution, resolution):
            raise ImageRejected("wrong_size", f"{image.width}x{image.height} is not {resolution}x{resolution}")
        return image
    raise ValueError(f"unknown resize mode {mode!r}")


def resize_square(image: Image.Image, resolution: int) -> Image.Image:
    return resize_to(image, resolution, "center_crop")


def resize_all(image: Image.Image, resolutions: tuple[int, ...], mode: str = "center_crop") -> dict[int, Image.Image]:
    """Every resolution from one decoded image, largest first; each smaller one comes from an output at least
    twice its size (a mip-map chain: the same antialiased result, without resizing the large source again)."""
    outputs: dict[int, Image.Image] = {}
    for resolution in sorted(resolutions, reverse=True):
        larger = [r for r in outputs if r >= 2 * resolution]
        if mode != "none" and larger:
            outputs[resolution] = resize_to(outputs[min(larger)], resolution, "center_crop")
        else:
            outputs[resolution] = resize_to(image, resolution, mode)
    return outputs


def encode(image: Image.Image, extension: str = "png", quality: int = 95) -> bytes:
    """Lossless PNG or WebP, JPEG at `quality` (>= 95 only on request), or "raw" (also spelled "npy"): the RGB
    pixels as an uncompressed uint8 H x W x 3 .npy array (format 1.0, C order, header padded to 64 bytes)."""
    buffer = io.BytesIO()
    if extension == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif extension == "webp":
        image.save(buffer, format="WEBP", lossless=True, quality=100, method=4)
    elif extension == "jpg":
        image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    elif extension in ("raw", RAW_EXTENSION):
        pixels = np.ascontiguousarray(np.asarray(to_rgb(image), dtype=np.uint8))
        np.lib.format.write_array(buffer, pixels, version=(1, 0), allow_pickle=False)
    else:
        raise ValueError(f"unknown output format {extension!r}")
    return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
    return encode(image, "png")


def decode_member(extension: str, data: bytes | memoryview, channels: int = 3) -> np.ndarray:
    """A shard's image member -> uint8 array H x W x channels (1: ITU-R 601 luma, PIL's "L", whatever the format).

    `extension` is the member's (one of IMAGE_EXTENSIONS). A .npy member is parsed without unpickling and returned
    as a read-only view of `data` (no copy) when channels is 3. Malformed data raises ValueError (PIL may also
    raise OSError or SyntaxError for a damaged PNG/WebP/JPEG).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 (got {channels})")
    if extension == RAW_EXTENSION:
        pixels = _npy_pixels(data)
        if channels == 3:
            return pixels
        return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))[..., None]
    if extension not in OUTPUT_FORMATS:
        raise ValueError(f"unknown image member extension {extension!r} (known: {', '.join(IMAGE_EXTENSIONS)})")
    with Image.open(io.BytesIO(data)) as opened:
        pixels = np.asarray(opened.convert("RGB" if channels == 3 else "L"))
    return pixels if channels == 3 else pixels[..., None]


def _npy_pixels(data: bytes | memoryview) -> np.ndarray:
    """Check a .npy member is uint8 H x W x 3 in C order with exactly its payload, and view it without copying."""
    view = memoryview(data).cast("B")
    header_end, (shape, fortran_order, dtype) = _npy_header(view)
    _check_npy_array(shape, fortran_order, dtype)
    expected = shape[0] * shape[1] * shape[2]
    if len(view) - header_end != expected:
        raise ValueError(f".npy payload is {len(view) - header_end} bytes; shape {shape} needs {expected}")
    return np.frombuffer(view, dtype=np.uint8, count=expected, offset=header_end).reshape(shape)


def _npy_header(view: memoryview) -> tuple[int, tuple]:
    """(where the payload starts, (shape, fortran_order, dtype)) of a .npy member, its header checked by length
    before it is parsed."""
    if bytes(view[: len(_NPY_MAGIC)]) != _NPY_MAGIC:
        raise ValueError("not a .npy array: the magic string \\x93NUMPY is missing")
    if len(view) < len(_NPY_MAGIC) + 2:
        raise ValueError(f".npy header truncated: {len(view)} bytes")
    major, minor = view[6], view[7]
    if (major, minor) not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {major}.{minor} (gand reads 1.0 and 2.0)")
    length_size = 2 if major == 1 else 4
    prefix = len(_NPY_MAGIC) + 2 + length_size
    if len(view) < prefix:
        raise ValueError(f".npy header truncated: {len(view)} bytes")
    (header_length,) = struct.unpack("<H" if major == 1 else "<I", view[len(_NPY_MAGIC) + 2 : prefix])
    if header_length > _NPY_MAX_HEADER:
        raise ValueError(f".npy header too long: {header_length} bytes (at most {_NPY_MAX_HEADER})")
    header_end = prefix + header_length
    if len(view) < header_end:
        raise ValueError(f".npy header truncated: {len(view)} bytes, the header needs {header_end}")
    stream = io.BytesIO(bytes(view[:header_end]))
    np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    try:
        # ast.literal_eval of the header dictionary: never unpickles, whatever dtype it names
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, SyntaxError, TypeError) as err:
        raise ValueError(f".npy header unreadable: {err}") from None
    return header_end, (shape, fortran_order, dtype)


def _check_npy_array(shape: tuple[int, ...], fortran_order: bool, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise ValueError(f".npy dtype {dtype} holds Python objects; refused (only uint8 pixels, never unpickled)")
    if dtype != np.uint8:
        raise ValueError(f".npy dtype {dtype} is not uint8")
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f".npy shape {shape} is not H x W x 3")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f".npy shape {shape} is empty")
    if fortran_order:
        raise ValueError(".npy array is in Fortran order, not C order")


# -- perceptual hash ---------------------------------------------------------------------------------------------
_HASH_SIDE = 32
_HASH_KEEP = 8


def _dct_matrix(size: int) -> np.ndarray:
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(_HASH_SIDE)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash: the signs of the lowest 8x8 DCT frequencies of a 32x32 grayscale copy, against their median.

    Re-encoding, mild resizing and small edits change few bits; different pictures differ in about half.
    """
    # shrink first (reducing_gap: box-reduce, then Lanczos), then go grey: cheap on a multi-megapixel source
    small = image.resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0).convert("L")
    pixels = np.asarray(small, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:_HASH_KEEP, :_HASH_KEEP].flatten()
    bits = low > np.median(low[1:])  # the DC term says only how bright the image is
    return int("".join("1" if bit else "0" for bit in bits), 2)
