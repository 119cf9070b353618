"""The command-line path a new user takes: demo-data -> pack -> manifest."""

import json

import pytest
import webdataset as wds
import yaml

from tests.conftest import REPO, gand

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


# -- moved from the unit tests: they start `gand` as a process ----------------------------------------------------
def test_cli_exits_2_with_message_and_no_traceback(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "d", "resolution": 2000}}))
    result = gand("train", str(path), "model.width=-1")
    assert result.returncode == 2
    assert "data.resolution" in result.stderr
    assert "model.width" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_usage_errors_exit_2(tmp_path):
    result = gand("pack", str(tmp_path), str(tmp_path / "out"), "--resolutions", "2000")
    assert result.returncode == 2
    assert "--resolutions" in result.stderr
    assert "Traceback" not in result.stderr


def test_pack_refuses_a_destination_with_files_gand_did_not_write_from_the_command_line(tmp_path):
    from PIL import Image

    src, dest = tmp_path / "src", tmp_path / "pictures"
    src.mkdir()
    Image.new("RGB", (64, 64), "white").save(src / "a.png")
    (dest / "2019").mkdir(parents=True)
    (dest / "cv.pdf").write_bytes(b"%PDF-1.4")
    result = gand("pack", str(src), str(dest), "--resolutions", "32", "--overwrite")
    assert result.returncode == 2 and "files gand did not write" in result.stderr
    assert sorted(p.name for p in dest.rglob("*")) == ["2019", "cv.pdf"]


def test_plan_command_prints_components_table_and_overrides():
    result = gand("plan", str(REPO / "configs" / "dcgan64.yaml"), "--gpu-mem", "4GiB", "model.width=0.25",
                  "train.batch_size=16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for text in ("parameters (fp32)", "optimizer state", "activations / image", "fastest setting that fits",
                 "memory.micro_batch=16 memory.grad_checkpointing=none memory.zero_stage=0"):  # fmt: skip
        assert text in result.stdout
    nothing = gand("plan", str(REPO / "configs" / "dcgan64.yaml"), "--gpu-mem", "1MiB", "model.width=0.25")
    assert nothing.returncode == 1 and "nothing fits" in nothing.stdout
    bad = gand("plan", str(REPO / "configs" / "dcgan64.yaml"), "--gpu-mem", "plenty")
    assert bad.returncode == 2 and "--gpu-mem" in bad.stderr
