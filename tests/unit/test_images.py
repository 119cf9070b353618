import io

import pytest
from PIL import Image

from gand.data.images import ImageRejected, center_square_box, decode_rgb, resize_square


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
