"""The new benches keep working (tiny settings; the numbers themselves are docs/benchmarks.md's business)."""

import json
import sys

import pytest

from tests.conftest import REPO, run_command

pytestmark = pytest.mark.integration


def test_training_step_bench_measures_its_four_numbers_on_one_device(tmp_path):
    out = tmp_path / "trainstep.json"
    result = run_command([sys.executable, str(REPO / "bench" / "trainstep.py"), "--configs", "dcgan32", "--repeats",
                          "1", "--sizes", "32,0.125,4,14", "--images", "40", "--work", str(tmp_path / "work"),
                          "--out", str(out)], timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [row["loop"].split(",")[0] for row in record["rows"]] == [
        "bare PyTorch loop", "gand step functions", "gand train", "gand train",
    ]  # fmt: skip
    assert all(row["images_per_second"] > 0 for row in record["rows"])
    assert record["settings"]["device"] == "cpu" and set(record["loader_share_of_steps"]) == {"dcgan32"}


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
    assert {(row["format"], row["resolution"]) for row in record["per_core"]} == {
        (fmt, res) for fmt in ("png", "jpg", "raw") for res in (32, 64, 256)
    }
    assert all(row["images_per_second_per_core"] > 0 for row in record["per_core"])
    assert record["epoch_boundary"]["ratio"] > 0


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


def test_stacked_digits_bench_scores_real_data_and_a_run_stopped_by_sigterm(tmp_path):
    out = tmp_path / "quality_stacked.json"
    result = run_command([sys.executable, str(REPO / "bench" / "quality_stacked.py"), "--configs", "r3gan32",
                          "--minutes", "0.15", "--images", "300", "--samples", "200", "--width", "0.125",
                          "--work", str(tmp_path / "work"), "--out", str(out)], timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    real, trained = json.loads(out.read_text())["rows"]
    assert real["config"] == "real stacked digits" and real["confident"] > 0.9  # the judge reads real digits
    assert 100 < real["modes"] <= 200 and real["kl"] > 0  # 200 draws from 1000 modes: most land on new ones
    assert trained["config"] == "r3gan32" and trained["steps"] > 0 and trained["samples"] == 200
    assert 1 <= trained["modes"] <= 200 and 0 <= trained["confident"] <= 1
