"""Packing: round trip through the upstream webdataset reader, messy inputs, incremental runs, crash adoption."""

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from gand.data.images import IMAGE_EXTENSIONS, OUTPUT_EXTENSIONS, decode_member, encode
from gand.data.manifest import latest_generation, read_manifest, read_parts
from gand.data.pack import PackOptions, pack
from gand.data.sources import sample_key
from gand.errors import ConfigError, DataError
from gand.storage import Store
from tests.conftest import DEMO_IMAGES
from tests.corpus import SIXTEEN_BIT_VALUE, build_bad_corpus, pattern, save


def read_resolution(root, manifest, resolution):
    urls = [str(root / shard.path) for shard in manifest.shards_at(resolution)]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def options(**kw) -> PackOptions:
    return PackOptions(**{"resolutions": (32,), "workers": 1, **kw})


def test_counts_labels_and_keys_exact_at_every_resolution(demo_raw, packed):
    manifest, _ = read_manifest(str(packed))
    sources = sorted(p.relative_to(demo_raw).as_posix() for p in demo_raw.rglob("*.*"))
    thumbnails = [s for s in sources if s.endswith("-thumb.jpg")]
    kept = [s for s in sources if s not in thumbnails]
    assert manifest.num_samples == len(kept) == DEMO_IMAGES - len(thumbnails)
    assert manifest.skipped == ({"too_small": len(thumbnails)} if thumbnails else {})
    assert manifest.files_seen == DEMO_IMAGES
    assert manifest.class_names == ["dawn", "dusk", "night", "noon"]

    by_resolution = {res: read_resolution(packed, manifest, res) for res in (32, 64)}
    keys = {res: [s["__key__"] for s in samples] for res, samples in by_resolution.items()}
    assert keys[32] == keys[64] == [sample_key(s) for s in kept]  # same keys, same (source) order
    for res, samples in by_resolution.items():
        assert sum(shard.samples for shard in manifest.shards_at(res)) == len(samples)
        for sample, source in zip(samples, kept, strict=True):
            meta = json.loads(sample["json"])
            assert meta["source"] == source
            assert manifest.class_names[int(sample["cls"])] == source.split("/")[0] == meta["class_name"]
            assert min(meta["width"], meta["height"]) >= 256
            assert Image.open(io.BytesIO(sample["png"])).size == (res, res)
    assert Counter(s.split("/")[0] for s in kept) == Counter(
        manifest.class_names[int(s["cls"])] for s in by_resolution[32]
    )


def test_manifest_checksums_match_published_shards(packed):
    manifest, _ = read_manifest(str(packed))
    for shards in manifest.shards.values():
        for shard in shards:
            data = (packed / shard.path).read_bytes()
            assert len(data) == shard.bytes
            assert hashlib.sha256(data).hexdigest() == shard.sha256
    assert not list(packed.rglob("*.tmp-*"))  # nothing left half-written


def test_packing_is_deterministic(demo_raw, packed, tmp_path):
    again = tmp_path / "again"
    pack(str(demo_raw), str(again), PackOptions(resolutions=(32, 64), shard_size=8, min_side=128, workers=2))
    first, _ = read_manifest(str(packed))
    second, _ = read_manifest(str(again))
    assert first.shards == second.shards  # same bytes, whatever the worker count


def test_bad_input_corpus_exact_counts_and_every_sample_decodes(tmp_path):
    expected = build_bad_corpus(tmp_path / "src")
    dest = tmp_path / "out"
    report = pack(str(tmp_path / "src"), str(dest),
                  options(resolutions=(32, 64), near_duplicates=4, max_aspect=10, workers=2))  # fmt: skip
    manifest = report.manifest
    assert manifest.class_names is None  # images at the top and in a folder: unlabelled
    assert dict(report.skipped) == expected["skipped"] == manifest.skipped
    assert manifest.num_samples == len(expected["kept"]) == report.packed
    for res in (32, 64):
        samples = read_resolution(dest, manifest, res)
        assert {json.loads(s["json"])["source"] for s in samples} == expected["kept"]
        for sample in samples:
            image = Image.open(io.BytesIO(sample["png"]))
            image.load()  # every published sample decodes
            assert image.size == (res, res) and image.mode == "RGB"
    by_source = {json.loads(s["json"])["source"]: s for s in read_resolution(dest, manifest, 32)}

    def pixel(source, x=16, y=16):
        return Image.open(io.BytesIO(by_source[source]["png"])).getpixel((x, y))

    assert pixel("sixteen_bit.png")[0] == round(SIXTEEN_BIT_VALUE * 255 / 65535)  # rescaled, not clipped
    red_top, blue_bottom = pixel("exif_rotated.jpg", 16, 3), pixel("exif_rotated.jpg", 16, 28)
    assert red_top[0] > 150 > red_top[2] and blue_bottom[2] > 150 > blue_bottom[0]  # orientation applied
    palette_image = Image.open(io.BytesIO(by_source["palette_transparent.png"]["png"]))
    assert (255, 255, 255) in {c for _, c in palette_image.getcolors(4096)}  # transparency on white
    cmyk_meta = json.loads(by_source["cmyk.jpg"]["json"])
    assert cmyk_meta["format"] == "JPEG"


def test_reruns_are_incremental_and_class_names_append_only(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "out"
    for index, kind in enumerate(("rings", "stripes")):
        save(pattern(kind, seed=index), src / "b_style" / f"{kind}.png")
    first = pack(str(src), str(dest), options(shard_size=1)).manifest
    assert first.generation == 1 and first.class_names == ["b_style"] and first.num_samples == 2
    again = pack(str(src), str(dest), options(shard_size=1))
    assert again.files == 0 and again.manifest.generation == 1  # nothing new: nothing published

    save(pattern("blobs"), src / "a_style" / "blobs.png")  # a new class that sorts first
    save(pattern("checker"), src / "b_style" / "checker.png")
    second = pack(str(src), str(dest), options(shard_size=1)).manifest
    assert second.generation == 2 and second.num_samples == 4
    assert second.class_names == ["b_style", "a_style"]  # appended: b_style keeps index 0
    assert second.shards_at(32)[:2] == first.shards_at(32)  # earlier shards untouched
    samples = read_resolution(dest, second, 32)
    assert len({s["__key__"] for s in samples}) == 4
    labels = {json.loads(s["json"])["source"]: int(s["cls"]) for s in samples}
    assert labels == {"b_style/rings.png": 0, "b_style/stripes.png": 0, "a_style/blobs.png": 1,
                      "b_style/checker.png": 0}  # fmt: skip
    assert latest_generation(Store(str(dest))) == 2
    assert (dest / "manifests" / "generation-000001.json").exists()  # earlier generations stay readable


def test_a_crash_between_part_and_generation_is_adopted_not_repacked(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "out"
    for index, kind in enumerate(("rings", "stripes", "blobs")):
        save(pattern(kind, seed=index), src / f"{index}.png")
    pack(str(src), str(dest), options(shard_size=1))
    # as if killed after the parts were published but before any generation listed them
    (dest / "manifest.json").unlink()
    for generation in (dest / "manifests").iterdir():
        generation.unlink()
    # and with a half-published orphan: a tar for part 3 with no record, and a temporary file
    (dest / "32" / "shard-000003.tar").write_bytes(b"garbage")
    (dest / "32" / "shard-000004.tar.tmp-1234abcd").write_bytes(b"partial")
    report = pack(str(src), str(dest), options(shard_size=1))
    assert report.files == 0 and report.manifest.generation == 1 and report.manifest.num_samples == 3
    assert not list(dest.rglob("*.tmp-*"))
    assert [p.index for p in read_parts(Store(str(dest)))] == [0, 1, 2]
    assert "32/shard-000003.tar" not in {s.path for s in report.manifest.shards_at(32)}


def test_list_sources_with_label_columns(tmp_path):
    images = tmp_path / "images"
    for index, kind in enumerate(("rings", "stripes", "blobs")):
        save(pattern(kind, seed=index), images / f"{kind}.png")
    (tmp_path / "list.csv").write_text(
        "path,style,genre\nimages/rings.png,Impressionism,landscape\nimages/stripes.png,Cubism,portrait\n"
        "images/blobs.png,,landscape\nimages/rings.png,Impressionism,landscape\nREADME.md,,\n"
    )
    report = pack(str(tmp_path / "list.csv"), str(tmp_path / "out"), options(label_column="style"))
    manifest = report.manifest
    assert manifest.class_names == ["Cubism", "Impressionism"]
    assert dict(report.skipped) == {"no_label": 1, "duplicate": 1, "not_an_image": 1}
    sample = {json.loads(s["json"])["source"]: s for s in read_resolution(tmp_path / "out", manifest, 32)}
    meta = json.loads(sample["images/rings.png"]["json"])
    assert meta["columns"] == {"style": "Impressionism", "genre": "landscape"}
    assert int(sample["images/stripes.png"]["cls"]) == 0

    lines = [json.dumps({"path": str(images / "blobs.png"), "genre": "abstract"})]
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    jsonl = pack(str(tmp_path / "list.jsonl"), str(tmp_path / "out2"), options(label_column="genre")).manifest
    assert jsonl.class_names == ["abstract"] and jsonl.num_samples == 1
    with pytest.raises(ConfigError, match="--label-column 'style' is not a column"):
        pack(str(tmp_path / "list.jsonl"), str(tmp_path / "out3"), options(label_column="style"))


def test_exclusion_list_and_label_modes(tmp_path):
    src = tmp_path / "src"
    save(pattern("rings"), src / "cats" / "a.png")
    save(pattern("stripes"), src / "cats" / "scroll_painting_1.png")
    save(pattern("blobs"), src / "loose.png")
    auto = pack(str(src), str(tmp_path / "auto"), options(exclude=("scroll_*",)))
    assert auto.manifest.class_names is None and auto.packed == 2 and dict(auto.skipped) == {"excluded": 1}
    folder = pack(str(src), str(tmp_path / "folder"), options(labels="folder"))
    assert folder.manifest.class_names == ["cats"] and dict(folder.skipped) == {"no_label": 1}


@pytest.mark.parametrize("resize", ["center_crop", "keep_ratio"])
@pytest.mark.parametrize("output", ["png", "webp", "jpg", "raw"])
def test_resize_modes_and_output_formats(tmp_path, resize, output):
    src = tmp_path / "src"
    wide = Image.new("RGB", (200, 100), (200, 30, 30))
    save(wide, src / "wide.png")
    manifest = pack(str(src), str(tmp_path / "out"), options(resize=resize, output=output)).manifest
    (sample,) = read_resolution(tmp_path / "out", manifest, 32)
    extension = OUTPUT_EXTENSIONS[output]
    assert [ext for ext in IMAGE_EXTENSIONS if ext in sample] == [extension]
    pixels = decode_member(extension, sample[extension])
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    corner, centre = pixels[1, 16], pixels[16, 16]
    assert centre[0] > 150
    if resize == "keep_ratio":
        assert corner.max() < 40  # the border above a wide picture
    else:
        assert corner[0] > 150


def test_raw_output_is_the_png_packs_pixels_through_upstream_webdataset(demo_raw, packed, tmp_path):
    """The same sources packed as raw .npy and as PNG (the `packed` fixture's options) hold identical pixels."""
    dest = tmp_path / "raw"
    raw_options = PackOptions(resolutions=(32, 64), shard_size=8, min_side=128, workers=2, output="raw")
    raw = pack(str(demo_raw), str(dest), raw_options).manifest
    png, _ = read_manifest(str(packed))
    assert raw.options["layout"] == {"resolutions": [32, 64], "resize": "center_crop", "format": "raw"}
    assert raw.num_samples == png.num_samples > 0
    for res in (32, 64):
        urls = [str(dest / shard.path) for shard in raw.shards_at(res)]
        decoded = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())  # numpy's .npy reader
        encoded = read_resolution(dest, raw, res)
        pngs = read_resolution(packed, png, res)
        assert [s["__key__"] for s in decoded] == [s["__key__"] for s in pngs]
        for upstream, member, reference in zip(decoded, encoded, pngs, strict=True):
            assert not {"png", "webp", "jpg"} & set(member)
            array = upstream["npy"]
            assert array.dtype == np.uint8 and array.shape == (res, res, 3) and array.flags.c_contiguous
            assert len(member["npy"]) == 128 + res * res * 3  # 64-byte aligned header, then the pixels
            for channels in (3, 1):
                expected = decode_member("png", reference["png"], channels)
                assert np.array_equal(decode_member("npy", member["npy"], channels), expected)
            assert np.array_equal(array, decode_member("png", reference["png"]))
            assert json.loads(member["json"]) == json.loads(reference["json"])
            assert member["cls"] == reference["cls"]


def test_decode_member_reads_npy_without_copying_and_matches_png():
    image = pattern("rings", (48, 40), seed=3)
    data = encode(image, "raw")
    pixels = decode_member("npy", data)
    assert np.array_equal(pixels, np.asarray(image))
    assert np.shares_memory(pixels, np.frombuffer(data, np.uint8))  # a view of the member, no copy
    assert np.array_equal(decode_member("npy", memoryview(data)), pixels)
    assert np.array_equal(np.load(io.BytesIO(data), allow_pickle=False), pixels)  # a plain .npy file
    png = encode(image, "png")
    for channels in (3, 1):
        gray_or_rgb = decode_member("npy", data, channels)
        assert gray_or_rgb.shape == (40, 48, channels)
        assert np.array_equal(gray_or_rgb, decode_member("png", png, channels))
    version_2 = io.BytesIO()
    np.lib.format.write_array(version_2, np.asarray(image), version=(2, 0))
    assert np.array_equal(decode_member("npy", version_2.getvalue()), pixels)


class _Trap:
    """Unpickling this would record it: proof that an object array is refused before its payload is touched."""

    loaded = False

    def __reduce__(self):
        return (_Trap._spring, ())

    @staticmethod
    def _spring():
        _Trap.loaded = True
        return _Trap()


def npy(array: np.ndarray, **kw) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda good: npy(np.zeros((8, 8, 3), np.float32)), "dtype float32 is not uint8"),
        (lambda good: npy(np.zeros((8, 8, 3), np.uint16)), "dtype uint16 is not uint8"),
        (lambda good: npy(np.array([[[_Trap()] * 3]], dtype=object), allow_pickle=True), "Python objects"),
        (lambda good: good[:-1], "payload is 191 bytes; shape \\(8, 8, 3\\) needs 192"),
        (lambda good: good + b"\0", "payload is 193 bytes"),
        (lambda good: good[:40], "header truncated"),
        (lambda good: good[:7], "header truncated"),
        (lambda good: npy(np.zeros((8, 8, 4), np.uint8)), "shape \\(8, 8, 4\\) is not H x W x 3"),
        (lambda good: npy(np.zeros((8, 24), np.uint8)), "shape \\(8, 24\\) is not H x W x 3"),
        (lambda good: npy(np.zeros((0, 8, 3), np.uint8)), "is empty"),
        (lambda good: npy(np.asfortranarray(np.zeros((8, 8, 3), np.uint8))), "Fortran order"),
        (lambda good: encode(Image.new("RGB", (8, 8)), "png"), "not a .npy array"),
        (lambda good: b"", "not a .npy array"),
        (lambda good: good[:6] + b"\x09\x00" + good[8:], "unsupported .npy format version 9.0"),
        (lambda good: good.replace(b"'descr'", b"'dxxxx'"), "header unreadable"),
    ],
)
def test_decode_member_refuses_malformed_npy(make, problem):
    good = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "raw")
    assert decode_member("npy", good).shape == (8, 8, 3)
    for channels in (3, 1):
        with pytest.raises(ValueError, match=problem):
            decode_member("npy", make(good), channels)
    assert not _Trap.loaded


def test_decode_member_refuses_unknown_extensions_and_channels():
    data = encode(Image.new("RGB", (8, 8)), "raw")
    with pytest.raises(ValueError, match="unknown image member extension 'gif'"):
        decode_member("gif", data)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        decode_member("npy", data, channels=4)


@pytest.mark.parametrize(("first", "second"), [("png", "raw"), ("raw", "png"), ("raw", "jpg")])
def test_one_destination_holds_one_output_format(tmp_path, first, second):
    src, dest = tmp_path / "src", tmp_path / "out"
    save(pattern("rings"), src / "a.png")
    pack(str(src), str(dest), options(output=first))
    save(pattern("stripes"), src / "b.png")
    with pytest.raises(ConfigError, match=f"'format': '{first}'.*'format': '{second}'.*--output-format"):
        pack(str(src), str(dest), options(output=second))
    manifest, _ = read_manifest(str(dest))
    assert manifest.num_samples == 1 and manifest.options["layout"]["format"] == first
    again = pack(str(src), str(dest), options(output=first)).manifest  # the same format adds the new image
    assert again.num_samples == 2


def test_resize_none_keeps_presized_images_only(tmp_path):
    src = tmp_path / "src"
    save(pattern("rings", (32, 32)), src / "ok.png")
    save(pattern("stripes", (40, 32)), src / "other.png")
    report = pack(str(src), str(tmp_path / "out"), options(resize="none"))
    assert report.packed == 1 and dict(report.skipped) == {"wrong_size": 1}


def test_jpeg_draft_decoding_keeps_quality(tmp_path):
    src = tmp_path / "src"
    save(pattern("rings", (1600, 1200)), src / "large.jpg", quality=95)
    drafted = pack(str(src), str(tmp_path / "a"), options(resolutions=(64,), draft=True)).manifest
    full = pack(str(src), str(tmp_path / "b"), options(resolutions=(64,), draft=False)).manifest
    a = np.asarray(Image.open(io.BytesIO(read_resolution(tmp_path / "a", drafted, 64)[0]["png"])), np.float32)
    b = np.asarray(Image.open(io.BytesIO(read_resolution(tmp_path / "b", full, 64)[0]["png"])), np.float32)
    assert np.abs(a - b).mean() < 2.0  # within a couple of grey levels on average


def test_upscale_is_opt_in(tmp_path):
    src = tmp_path / "src"
    save(Image.new("RGB", (40, 40)), src / "small.png")
    with pytest.raises(ConfigError, match=r"every file in .* was skipped \(too_small: 1\)"):
        pack(str(src), str(tmp_path / "a"), options(resolutions=(32, 64)))
    assert not (tmp_path / "a" / "manifest.json").exists()  # nothing recorded: a looser pack takes the file
    allowed = pack(str(src), str(tmp_path / "b"), options(resolutions=(32, 64), upscale=True))
    assert allowed.manifest.num_samples == 1


def test_same_destination_needs_same_source_and_layout(demo_raw, tmp_path):
    dest = tmp_path / "out"
    pack(str(demo_raw), str(dest), options(shard_size=100, min_side=128))
    with pytest.raises(ConfigError, match="was packed with"):
        pack(str(demo_raw), str(dest), options(resolutions=(32, 64)))
    other = tmp_path / "other"
    save(pattern("rings"), other / "x.png")
    with pytest.raises(ConfigError, match="was packed from"):
        pack(str(other), str(dest), options())
    replaced = pack(str(other), str(dest), options(overwrite=True)).manifest
    assert replaced.num_samples == 1 and replaced.generation == 1
    assert sorted(p.name for p in (dest / "32").iterdir()) == ["shard-000000.tar"]


def test_missing_source_and_empty_source(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        pack(str(tmp_path / "nope"), str(tmp_path / "out"), options())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        pack(str(tmp_path / "empty"), str(tmp_path / "out"), options())


@pytest.mark.parametrize(
    ("kw", "flag"),
    [
        ({"resolutions": (4,)}, "--resolutions"),
        ({"shard_size": 0}, "--shard-size"),
        ({"resize": "stretch"}, "--resize"),
        ({"output": "gif"}, "--output-format"),
        ({"output": "jpg", "quality": 90}, "--quality"),
        ({"near_duplicates": 40}, "--near-duplicates"),
    ],
)
def test_bad_options_name_the_flag(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        options(**kw)


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_destination_with_files_gand_did_not_write_is_refused_and_left_as_it_was(tmp_path):
    """`gand pack SRC ~/Pictures --overwrite` on a folder of the user's: refused (exit 2), nothing deleted, even
    where the user's folders look like gand's (numbered, `parts/`)."""
    src, dest = tmp_path / "src", tmp_path / "pictures"
    save(pattern("blobs", seed=1), src / "a.png")
    save(pattern("blobs", seed=2), dest / "2019" / "beach.png")
    save(pattern("blobs", seed=3), dest / "2020" / "snow.png")
    (dest / "parts").mkdir()
    (dest / "parts" / "shopping.txt").write_text("milk")
    (dest / "cv.pdf").write_bytes(b"%PDF-1.4")
    before = _tree(dest)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"holds files gand did not write \(.*cv\.pdf.*\); .*Nothing was changed"):
            pack(str(src), str(dest), options(overwrite=overwrite))
        assert _tree(dest) == before


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_a_destination_that_is_or_nests_the_source_is_refused_before_anything_happens(tmp_path, where):
    src = tmp_path / "photos"
    save(pattern("blobs", seed=1), src / "a.png")
    save(pattern("blobs", seed=2), src / "b.png")
    dest = {"same": src, "inside": src / "packed", "around": tmp_path}[where]
    before = _tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="SRC"):
            pack(str(src), str(dest), options(overwrite=overwrite))
    assert _tree(tmp_path) == before  # every source image still there


def test_overwrite_deletes_only_gands_files_and_keeps_hidden_ones(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    for index in range(3):
        save(pattern("blobs", seed=index), src / f"{index}.png")
    pack(str(src), str(dest), options())
    (dest / ".DS_Store").write_bytes(b"finder")  # hidden files neither block nor get deleted
    (dest / "eval").mkdir()
    (dest / "eval" / "inception-32px-10.npz").write_bytes(b"stats")  # gand's reference statistics
    pack(str(src), str(dest), options(overwrite=True, resolutions=(64,)))
    files = _tree(dest)
    assert ".DS_Store" in files and "eval/inception-32px-10.npz" not in files
    assert not any(path.startswith("32/") for path in files) and any(path.startswith("64/") for path in files)
    (dest / "notes.txt").write_text("mine")  # a dataset card dropped into a gand dataset later
    save(pattern("blobs", seed=9), src / "9.png")
    assert pack(str(src), str(dest), options(resolutions=(64,))).packed == 1  # incremental packs go on
    with pytest.raises(ConfigError, match=r"notes\.txt"):  # but --overwrite cannot tell it from gand's files
        pack(str(src), str(dest), options(resolutions=(64,), overwrite=True))
    assert (dest / "notes.txt").read_text() == "mine"


def test_format_families_decide_what_is_packed_and_multi_frame_files_are_counted(tmp_path):
    cases = Path(__file__).resolve().parents[1] / "data" / "cases"
    report = pack(str(cases), str(tmp_path / "out"), options(formats=("jpeg",), workers=1))
    assert report.packed == 2  # plain.jpg and the camera's MPO: both JPEGs
    assert report.first_frame_only == 1  # the MPO's second picture is not packed
    assert report.skipped == {"format_not_allowed": 4}  # the four PNGs
    with pytest.raises(ConfigError, match="--formats: 'jpeg2000x' is not a format family"):
        options(formats=("jpeg2000x",))
