import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gand.data.images import (
    BACKGROUND_RGB,
    ImageChecks,
    ImageRejected,
    center_square_box,
    decode_rgb,
    family_names,
    resize_square,
    to_rgb,
)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA", "RGBA"])
def test_every_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_rgb(encode(Image.new(mode, (30, 20)), fmt))
    assert decoded.image.mode == "RGB"
    assert (decoded.original_width, decoded.original_height) == (30, 20)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    decoded = decode_rgb(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.image.size == (20, 40)


def test_truncated_and_garbage_are_rejected_with_reason():
    whole = encode(Image.new("RGB", (200, 200), (9, 9, 9)))
    for data in (whole[: len(whole) // 2], b"garbage"):
        with pytest.raises(ImageRejected) as caught:
            decode_rgb(data)
        assert caught.value.reason == "decode_error"


def test_center_crop_then_antialiased_resize():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (100, 0, 200, 100))  # the white centre square survives the crop
    assert center_square_box(300, 100) == (100, 0, 200, 100)
    small = resize_square(image, 32)
    assert small.size == (32, 32)
    assert small.getpixel((16, 16)) == (255, 255, 255)


CASES = Path(__file__).resolve().parents[1] / "data" / "cases"  # copied from ../shared/cases/ingest (2026-11-30)


def test_every_way_of_carrying_transparency_composites_the_same():
    """The cases' red disc on a transparent background, stored as RGBA, as a palette index, and as a tRNS key
    colour on RGB and on greyscale: all on the same white background. Plus the forms made here: LA, PA, GIF and
    WebP with alpha."""
    reference = np.asarray(decode_rgb((CASES / "logo_rgba.png").read_bytes()).image).astype(int)
    assert tuple(reference[0, 0]) == BACKGROUND_RGB and tuple(reference[128, 128]) == (200, 30, 30)
    for name in ("logo_palette_trns.png", "logo_rgb_trns.png"):
        decoded = np.asarray(decode_rgb((CASES / name).read_bytes()).image).astype(int)
        assert np.abs(decoded - reference).max() == 0, name
    grey = np.asarray(decode_rgb((CASES / "logo_gray_trns.png").read_bytes()).image).astype(int)
    assert tuple(grey[0, 0]) == BACKGROUND_RGB  # its disc is grey: the background is what must agree
    rgba = Image.open(CASES / "logo_rgba.png")
    assert tuple(np.asarray(to_rgb(rgba.convert("PA")))[0, 0]) == BACKGROUND_RGB  # no file format stores PA
    for form, save_as in (("LA", "PNG"), ("RGBA", "GIF")):
        buffer = io.BytesIO()
        rgba.convert(form).save(buffer, format=save_as)  # GIF: Pillow keeps the transparent pixels transparent
        decoded = np.asarray(decode_rgb(buffer.getvalue()).image).astype(int)
        assert tuple(decoded[0, 0]) == BACKGROUND_RGB, form
    webp = io.BytesIO()
    rgba.save(webp, format="WEBP", lossless=True)
    assert np.abs(np.asarray(decode_rgb(webp.getvalue()).image).astype(int) - reference).max() <= 1


def test_a_camera_jpeg_is_a_jpeg_decoded_at_reduced_scale_and_its_frames_counted():
    """MPO (a JPEG with a second picture): allowed by the jpeg family, decoded by libjpeg's reduced-scale path like
    any JPEG, first frame used, the frame count reported."""
    data = (CASES / "camera_mpo.jpg").read_bytes()
    jpeg_only = ImageChecks(formats=family_names(["jpg"]))
    full = decode_rgb(data, jpeg_only)
    assert full.source_format == "MPO" and full.frames == 2 and full.image.size == (256, 256)
    reduced = decode_rgb(data, jpeg_only, draft_side=32)
    assert reduced.image.size[0] < 256  # the draft path: a JPEG's DCT scaling
    plain = decode_rgb((CASES / "plain.jpg").read_bytes(), jpeg_only, draft_side=32)
    assert plain.image.size == reduced.image.size and plain.frames == 1
    with pytest.raises(ImageRejected) as rejected:
        decode_rgb(data, ImageChecks(formats=family_names(["png"])))
    assert rejected.value.reason == "format_not_allowed"
    with pytest.raises(ValueError, match="not a format family"):
        family_names(["jpeg2000x"])
