"""The new benches keep working (tiny settings; the numbers themselves are docs/benchmarks.md's business)."""

import json
import sys

import pytest

from tests.conftest import REPO, run_command

pytestmark = pytest.mark.integration


def test_bare_training_loop_runs_the_same_models():
    result = run_command([sys.executable, str(REPO / "bench" / "trainstep.py"), "--bare", "can256", "--resolution",
                          "128", "--width", "0.0625", "--batch", "2", "--steps", "12"], timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_step"] > 0


def test_load_bench_compares_both_loaders_and_writes_its_record(tmp_path):
    out = tmp_path / "load.json"
    result = run_command([sys.executable, str(REPO / "bench" / "load.py"), "--images", "8", "--batch", "4",
                          "--batches", "2", "--workers", "1", "--work", str(tmp_path / "work"), "--out", str(out)],
                         timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["bench"] == "load" and record["machine"]["cpus"] and record["versions"]["torch"]
    assert [(row["resolution"], row["loader"].split(":")[0]) for row in record["rows"]] == [
        (64, "on the fly"),
        (64, "gand shard loader"),
        (256, "on the fly"),
        (256, "gand shard loader"),
    ]


def test_pack_bench_times_every_pipeline_and_says_when_img2dataset_is_left_out(tmp_path):
    out = tmp_path / "pack.json"
    result = run_command([sys.executable, str(REPO / "bench" / "pack.py"), "--images", "6", "--workers", "1",
                          "--img2dataset", "skip", "--work", str(tmp_path / "work"), "--out", str(out)],
                         timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["pipeline"].split(":")[0] for row in rows] == [
        "naive", "gand pack --no-draft (decode once)", "gand pack (decode once + JPEG draft)", "img2dataset 1.47.0",
    ]  # fmt: skip
    assert all(row["images_per_second"] > 0 for row in rows[:3])
    assert rows[3]["note"] == "skipped (--img2dataset skip)" and "images_per_second" not in rows[3]
