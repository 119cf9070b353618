"""`gand eval` end to end on CPU: a short real run, an FID Inception network with random weights saved to a
temporary file (never a download), the reference statistics cached beside the dataset's manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gand.errors import DataError
from gand.eval.fid import random_inception
from gand.eval.inception import CACHE_DIR, WEIGHTS_URL, load_inception
from tests.conftest import gand, on_terminal, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, packed) -> Path:
    tmp_path = tmp_path_factory.mktemp("eval")
    config = tiny_config(tmp_path, packed, train={"max_steps": 4, "log_every_steps": 2})
    assert gand("train", str(config)).returncode == 0
    return tmp_path / "run"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return random_inception(str(tmp_path_factory.mktemp("inception") / "random-inception.pth"))


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_gand_eval_scores_a_run_and_caches_the_reference(trained_run, weights, packed):
    first = gand("eval", str(trained_run), "--n", "24", "--weights", weights, "--batch", "12")
    assert first.returncode == 0, first.stderr[-3000:]
    scores = json.loads(first.stdout)  # stdout is the scores alone (`gand eval RUN > scores.json`); logs: stderr
    assert '"reference_statistics"' in first.stderr
    progress = [json.loads(line) for line in first.stderr.splitlines() if '"progress"' in line]
    assert {(p["task"], p["done"]) for p in progress} >= {("generated images", 24)}
    assert scores["checkpoint"].startswith("ckpt-") and scores["generated"] == 24 and scores["real"] == 24
    assert {"fid", "kid_mean", "kid_std", "is_mean", "is_std"} <= scores.keys()
    assert all(math.isfinite(scores[name]) for name in ("fid", "kid_mean", "is_mean"))
    assert scores["fid"] > 0 and scores["is_mean"] >= 1.0
    cached = packed / "eval" / "inception-32px-24.npz"
    with np.load(cached, allow_pickle=False) as saved:
        assert saved["features"].shape == (24, 2048)

    # The same evaluation again reads the cache, and a named checkpoint gives the same scores as "the newest".
    newest = sorted((trained_run / "checkpoints").glob("ckpt-*"))[-1]
    again = gand("eval", str(newest), "--n", "24", "--weights", weights, "--batch", "12", "--metrics", "fid")
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"reference_statistics"' not in again.stderr and '"generated images"' in again.stderr
    assert last_json(again.stdout)["fid"] == pytest.approx(scores["fid"], rel=1e-9)
    assert "kid_mean" not in last_json(again.stdout)
    code, text = on_terminal("eval", str(trained_run), "--n", "24", "--weights", weights, "--batch", "12")
    assert code == 0 and f"FID {scores['fid']:.4g}" in text and "(24 generated vs 24 real images)" in text


def test_eval_errors_name_the_problem(trained_run, weights, tmp_path):
    unknown = gand("eval", str(trained_run), "--n", "10", "--weights", weights, "--metrics", "fid,lpips")
    assert unknown.returncode == 2 and "lpips" in unknown.stderr
    missing = gand("eval", str(trained_run), "--n", "10", "--weights", str(tmp_path / "nope.pth"))
    assert missing.returncode == 1 and "nope.pth" in missing.stderr  # data problems exit 1 (README: Exit codes)
    nothing = gand("eval", str(tmp_path), "--n", "10", "--weights", weights)
    assert nothing.returncode == 1 and "no committed checkpoint" in nothing.stderr


def test_weights_that_do_not_fit_are_refused_without_running_code(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(DataError, match="does not fit the FID Inception network"):
        load_inception(str(wrong))
    pickled = tmp_path / "code.pth"
    torch.save({"payload": Path("/")}, pickled)  # an object only loadable by unpickling arbitrary globals
    with pytest.raises(DataError, match="refused"):
        load_inception(str(pickled))


def test_offline_download_error_says_how_to_supply_the_weights(monkeypatch, tmp_path):
    from gand.eval import inception

    monkeypatch.setattr(inception, "CACHE_DIR", tmp_path)  # an empty cache, so the default URL is fetched
    with pytest.raises(DataError, match=r"eval\.inception_weights") as raised:
        inception.read_weights("http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth")
    assert str(tmp_path) in str(raised.value)


REAL_WEIGHTS = CACHE_DIR / Path(WEIGHTS_URL).name
NO_REAL_WEIGHTS = f"the real FID Inception weights are not in {REAL_WEIGHTS} (README: Evaluation)"


@pytest.mark.skipif(not REAL_WEIGHTS.exists(), reason=NO_REAL_WEIGHTS)
def test_real_weights_load_strictly_and_give_the_published_shapes():
    network = load_inception(str(REAL_WEIGHTS))
    torch.manual_seed(0)
    features, logits = network(torch.rand(4, 3, 299, 299) * 2 - 1)
    assert features.shape == (4, 2048) and logits.shape == (4, 1008) and (features >= 0).all()


@pytest.mark.skipif(not REAL_WEIGHTS.exists(), reason=NO_REAL_WEIGHTS)
def test_features_match_pytorch_fid():
    pytorch_fid = pytest.importorskip("pytorch_fid.inception", reason="pytorch-fid (needs torchvision) not installed")
    ours = load_inception(str(REAL_WEIGHTS))
    theirs = pytorch_fid.InceptionV3([3], resize_input=True, normalize_input=False).eval()
    images = torch.rand(4, 3, 299, 299) * 2 - 1  # at 299 px no resizing happens, so both see the same pixels
    with torch.no_grad():
        assert torch.allclose(ours(images)[0], theirs(images)[0].flatten(1), atol=1e-4)


def test_gand_sample_writes_grid_walks_and_arithmetic_with_the_right_shapes(trained_run, tmp_path):
    from PIL import Image

    out = tmp_path / "samples"
    result = gand("sample", str(trained_run), "--out", str(out), "--n", "6", "--seed", "3", "--interpolate", "5",
                  "--seeds", "1,2,9", "--arithmetic", "a=1,2 b=3,4 c=5 : a - b + c")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    written = last_json(result.stdout)["written"]
    assert written == ["grid.png", "interpolate-linear-1-2.png", "interpolate-spherical-1-2.png",
                       "interpolate-linear-2-9.png", "interpolate-spherical-2-9.png", "arithmetic.png"]  # fmt: skip
    tile = 32 + 2  # 32 px images with 2 px padding
    assert Image.open(out / "grid.png").size == (3 * tile + 2, 2 * tile + 2)  # 6 images: 3 x 2
    # Walks and arithmetic are labelled: cells enlarged x2 (to 64 px) under a 34 px band of title and column labels.
    labels = 18 + 16 + 2
    assert Image.open(out / "interpolate-linear-2-9.png").size == (2 * (5 * tile + 2), 2 * (tile + 2) + labels)
    arithmetic = Image.open(out / "arithmetic.png").size  # 3 terms + result, 2 rows, row labels on the left
    assert arithmetic[1] == 2 * (2 * tile + 2) + labels and arithmetic[0] > 2 * (4 * tile + 2)
    again = gand("sample", str(trained_run), "--out", str(tmp_path / "again"), "--n", "6", "--seed", "3")
    assert again.returncode == 0
    assert (tmp_path / "again" / "grid.png").read_bytes() == (out / "grid.png").read_bytes()  # seeded: repeatable

    not_conditional = gand("sample", str(trained_run), "--out", str(out), "--class", "2")
    assert not_conditional.returncode == 2 and "not conditional" in not_conditional.stderr


def test_gand_features_compares_d_features_with_raw_pixels(trained_run, packed, tmp_path):
    result = gand("features", str(trained_run), "--data", str(packed))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert '"D features"' in result.stderr and '"linear SVMs fitted"' in result.stderr  # progress, on stderr
    code, text = on_terminal("features", str(trained_run), "--data", str(packed))
    assert code == 0 and "linear SVM on 14 held-out images of 4 classes: D's features" in text
    assert report["classes"] == 4 and report["images"] == 45 and report["test_images"] == 14
    assert report["pixel_dims"] == 3 * 32 * 32 and report["feature_dims"] > 0
    for kind in ("discriminator_features_accuracy", "raw_pixels_accuracy"):
        assert 0.0 <= report[kind] <= 1.0
    unlabelled = tmp_path / "unlabelled"
    assert gand("demo-data", str(tmp_path / "raw"), "--n", "12").returncode == 0
    packed_unlabelled = gand("pack", str(tmp_path / "raw"), str(unlabelled), "--resolutions", "32", "--labels", "none")
    assert packed_unlabelled.returncode == 0
    refused = gand("features", str(trained_run), "--data", str(unlabelled))
    assert refused.returncode == 1 and "labelled" in refused.stderr


def test_gand_plot_draws_the_runs_history_from_its_checkpoint(trained_run):
    from PIL import Image

    result = gand("plot", str(trained_run))
    assert result.returncode == 0, result.stderr[-3000:]
    report = last_json(result.stdout)
    assert report["points"] == 3  # steps 1 (a run's first step is always logged), 2 and 4: log_every_steps 2
    assert report["written"] == [
        "discriminator.png",
        "gradient-norms.png",
        "losses.png",
        "vanishing-gradients-d.png",
        "vanishing-gradients-g.png",
    ]  # fmt: skip  (no FID yet: no periodic evaluation)
    for name in report["written"]:
        assert Image.open(trained_run / "plots" / name).size == (720, 360)


def test_periodic_evaluation_logs_scores_into_manifests_and_the_history(tmp_path, packed, weights):
    config = tiny_config(tmp_path, packed, train={"max_steps": 4, "log_every_steps": 1},
                         checkpoint={"every_steps": 1000},
                         eval={"every_kimg": 0.016, "samples": 10, "inception_weights": weights})  # fmt: skip
    result = gand("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = [json.loads(line) for line in result.stdout.splitlines() if '"evaluated"' in line]
    assert [e["step"] for e in evaluated] == [2, 4]  # every 16 images of 8 per step
    assert all(math.isfinite(e["fid"]) and e["fid"] > 0 for e in evaluated)
    checkpoints = tmp_path / "run" / "checkpoints"
    for event in evaluated:  # each evaluation landed on a checkpoint whose manifest carries it
        manifest = json.loads((checkpoints / f"ckpt-{event['images_seen']:012d}" / "MANIFEST.json").read_text())
        assert manifest["eval"]["fid"] == pytest.approx(event["fid"], rel=1e-3)
    plotted = gand("plot", str(tmp_path / "run"))
    assert plotted.returncode == 0 and "fid.png" in last_json(plotted.stdout)["written"]


def test_the_collapse_guard_returns_to_the_best_checkpoint_when_the_score_gets_worse(tmp_path, packed, weights):
    """A run destabilised on purpose: 8 steps at its own learning rate, then the same run resumed with a learning
    rate 10,000 times higher (a one-image "burn-in" to 2.0). FID, evaluated every 16 images, gets worse than its best
    for two evaluations in a row, and the guard goes back to the best checkpoint of the stable part, with the
    learning rates x0.1; logged and counted. The guard's best score carried over the resume in the checkpoint."""
    sections = {
        "train": {"max_steps": 8, "log_every_steps": 1},
        "checkpoint": {"every_steps": 1000},
        "eval": {"every_kimg": 0.016, "samples": 10, "inception_weights": weights},
        "guard": {"action": "rollback", "patience": 2, "margin": 0.05, "lr_factor": 0.1, "max_rollbacks": 10},
    }
    stable = gand("train", str(tiny_config(tmp_path, packed, **sections)))
    assert stable.returncode == 0, stable.stderr[-3000:]
    evaluated = [json.loads(line) for line in stable.stdout.splitlines() if '"evaluated"' in line]
    stable_scores = {f"ckpt-{e['images_seen']:012d}": e["fid"] for e in evaluated}
    destabilised = tiny_config(tmp_path, packed, **sections, burn_in={"kimg": 0.001, "lr": [2.0, 2.0]})
    result = gand("train", str(destabilised), "train.max_steps=20")
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    later_scores = [e["fid"] for e in events if e["event"] == "evaluated"]
    rolled = [e for e in events if e["event"] == "collapse_rolled_back"]
    assert rolled, f"the guard never went back: {stable_scores}, then {later_scores}"
    best = min(stable_scores, key=stable_scores.get)
    assert rolled[0]["checkpoint"] == best and rolled[0]["best"] == pytest.approx(stable_scores[best], rel=1e-4)
    assert rolled[0]["lr_scale"] == pytest.approx(0.1) and rolled[0]["rollbacks"] == 1
    assert [e["step"] for e in events if e["event"] == "train_step"][-1] == 20  # and it trained on
