import io

from PIL import Image

from gand.data.demo import PALETTES, THUMBNAIL_SIDE, render_one, write_digits


def test_same_seed_same_bytes_different_seed_different_image():
    assert render_one((0, 5)).data == render_one((0, 5)).data
    assert render_one((1, 5)).data != render_one((0, 5)).data


def test_styles_sizes_and_formats_vary_like_a_scrape():
    items = [render_one((0, index)) for index in range(120)]
    styles = {item.relpath.split("/")[0] for item in items}
    assert styles == set(PALETTES)
    sizes = [Image.open(io.BytesIO(item.data)).size for item in items]
    thumbnails = [s for s in sizes if s == (THUMBNAIL_SIDE, THUMBNAIL_SIDE)]
    large = [s for s in sizes if min(s) >= 256]
    assert 0 < len(thumbnails) < 20
    assert len(large) + len(thumbnails) == len(items)
    assert len({w / h for w, h in sizes}) > 50  # many aspect ratios
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes)
    assert {item.relpath.rsplit(".", 1)[1] for item in items} == {"jpg", "png"}


def test_digits_are_the_bundled_real_scans_as_32px_grayscale(tmp_path):
    summary = write_digits(tmp_path)
    assert summary["images"] == 1797
    assert sorted(summary["per_class"]) == [str(d) for d in range(10)]
    assert sum(summary["per_class"].values()) == 1797
    image = Image.open(next((tmp_path / "0").iterdir()))
    assert image.size == (32, 32) and image.mode == "L"
    assert image.getpixel((0, 0)) == 0  # black background, white ink, like MNIST
