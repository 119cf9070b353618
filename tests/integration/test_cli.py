"""The command-line path a new user takes: demo-data -> pack -> manifest."""

import json

import pytest
import webdataset as wds

from tests.conftest import gand

pytestmark = pytest.mark.integration


def test_demo_data_then_pack_from_the_command_line(tmp_path):
    raw, packed = tmp_path / "raw", tmp_path / "packed"
    made = gand("demo-data", str(raw), "--n", "24")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["images"] == 24
    result = gand(
        "pack",
        str(raw),
        str(packed),
        "--resolutions",
        "32,64,128,256",
        "--shard-size",
        "10",
        "--min-side",
        "128",
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["resolutions"] == [32, 64, 128, 256]
    for res in (32, 64, 128, 256):
        urls = [str(packed / shard["path"]) for shard in manifest["shards"][str(res)]]
        keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
        assert len(keys) == manifest["num_samples"] > 0
    again = gand("pack", str(raw), str(packed))
    assert again.returncode == 2 and "--overwrite" in again.stderr
