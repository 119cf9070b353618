"""Pack round trip, read back with the upstream webdataset reader."""

import hashlib
import io
import json
from collections import Counter

import pytest
import webdataset as wds
from PIL import Image

from gand.data.manifest import read_manifest
from gand.data.pack import PackOptions, pack, sample_key
from gand.errors import ConfigError, DataError
from tests.conftest import DEMO_IMAGES


def read_resolution(root, manifest, resolution):
    urls = [str(root / shard.path) for shard in manifest.shards_at(resolution)]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


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


def test_bad_files_are_skipped_with_counted_reasons(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (80, 60), (10, 20, 30)).save(src / "good.png")
    Image.new("RGBA", (64, 64), (200, 0, 0, 0)).save(src / "transparent.png")
    Image.new("RGB", (20, 20)).save(src / "tiny.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    whole = io.BytesIO()
    Image.new("RGB", (300, 300), (1, 2, 3)).save(whole, format="PNG")
    (src / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(b"ignored")

    manifest = pack(str(src), str(tmp_path / "out"), PackOptions(resolutions=(32,), workers=1))
    assert manifest.num_samples == 2
    assert manifest.class_names is None
    assert manifest.skipped == {"decode_error": 2, "not_an_image": 1, "too_small": 1}
    samples = read_resolution(tmp_path / "out", manifest, 32)
    assert {json.loads(s["json"])["source"] for s in samples} == {"good.png", "transparent.png"}
    assert all("cls" not in s for s in samples)
    # transparent pixels land on the fixed white background, not black
    transparent = next(s for s in samples if json.loads(s["json"])["source"] == "transparent.png")
    assert Image.open(io.BytesIO(transparent["png"])).getpixel((16, 16)) == (255, 255, 255)


def test_upscale_is_opt_in(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (40, 40)).save(src / "small.png")
    refused = pack(str(src), str(tmp_path / "a"), PackOptions(resolutions=(32, 64), workers=1, upscale=False))
    assert refused.num_samples == 0 and refused.skipped == {"too_small": 1}
    allowed = pack(str(src), str(tmp_path / "b"), PackOptions(resolutions=(32, 64), workers=1, upscale=True))
    assert allowed.num_samples == 1


def test_images_beside_class_folders_are_counted_as_unlabelled(tmp_path):
    src = tmp_path / "src"
    (src / "cats").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(src / "cats" / "a.png")
    Image.new("RGB", (40, 40)).save(src / "loose.png")
    manifest = pack(str(src), str(tmp_path / "out"), PackOptions(resolutions=(32,), workers=1))
    assert manifest.class_names == ["cats"]
    assert manifest.skipped == {"no_label": 1}


def test_refuses_to_overwrite_without_flag_and_cleans_up_with_it(demo_raw, tmp_path):
    dest = tmp_path / "out"
    pack(str(demo_raw), str(dest), PackOptions(resolutions=(32,), shard_size=4, min_side=128, workers=1))
    with pytest.raises(ConfigError, match="--overwrite"):
        pack(str(demo_raw), str(dest), PackOptions(resolutions=(32,), workers=1))
    manifest = pack(str(demo_raw), str(dest), PackOptions(resolutions=(32,), shard_size=100, workers=1, overwrite=True))
    assert sorted(p.name for p in (dest / "32").iterdir()) == ["shard-000000.tar"]
    assert len(manifest.shards_at(32)) == 1


def test_missing_source_and_empty_source(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        pack(str(tmp_path / "nope"), str(tmp_path / "out"), PackOptions(resolutions=(32,), workers=1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        pack(str(tmp_path / "empty"), str(tmp_path / "out"), PackOptions(resolutions=(32,), workers=1))


@pytest.mark.parametrize(
    ("options", "field"),
    [({"resolutions": (4,)}, "--resolutions"), ({"resolutions": (32,), "shard_size": 0}, "--shard-size")],
)
def test_bad_options_name_the_flag(options, field):
    with pytest.raises(ConfigError, match=field):
        PackOptions(**options)
