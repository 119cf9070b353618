import pytest
import torch

from gand.config import load_config
from gand.models import ModelSpec, build_models
from gand.train.planner import (
    GIB,
    H200_TABLE_GIB,
    Components,
    Setting,
    candidates,
    make_plan,
    measure,
    parse_size,
    predict,
    relative_speed,
    zero_buckets,
)
from tests.conftest import REPO


def test_parse_size():
    assert parse_size("16GiB") == parse_size("16G") == parse_size("16 GB") == 16 * GIB
    assert parse_size("800MiB") == 800 * 1024**2
    assert parse_size("15.5GiB") == int(15.5 * GIB)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def components(per_image: int = 10) -> Components:
    return Components(
        device="cpu", precision="fp32", method="test", params={"g": 100, "d": 60}, grads={"g": 100, "d": 60},
        optimizer={"g": 200, "d": 120}, ema=0, fixed={o: 1000 for o in ("none", "g", "d", "both")},
        per_image={"none": per_image, "g": per_image // 2, "d": per_image // 2, "both": per_image // 4},
    )  # fmt: skip


def test_predict_divides_state_by_zero_stage_and_offload():
    c = components()
    base = predict(c, Setting(8, 1, "none", 0), ranks=4)
    assert base == 1000 + 10 * 8
    buckets = zero_buckets(c)  # ZeRO's gradient buckets: at least 2**20 fp32 elements per network
    assert buckets == 2 * 4 * 2**20
    assert predict(c, Setting(8, 1, "none", 1), ranks=4) == base + buckets - round(320 * 3 / 4)  # optimizer / 4
    assert predict(c, Setting(8, 1, "none", 2), ranks=4) == base + buckets - round(320 * 3 / 4 + 160 * 3 / 4)
    assert predict(c, Setting(8, 1, "none", 3), ranks=4) == base + buckets - round(320 * 3 / 4 + 160 * 3 / 2)
    offloaded = predict(c, Setting(8, 1, "none", 2, "cpu"), ranks=4)
    assert offloaded == predict(c, Setting(8, 1, "none", 2), ranks=4) - 320 // 4  # the rank's own slice leaves too
    assert predict(c, Setting(4, 2, "both", 0), ranks=1) == 1000 + 2 * 4


def test_candidates_respect_what_deepspeed_allows():
    settings = candidates(batch_size=8, ranks=1)
    assert {s.micro_batch_size * s.accumulation_steps for s in settings} == {8}
    assert all(s.offload_optimizer == "cpu" for s in settings if s.zero_stage)  # ZeRO alone on one rank: pointless
    assert all(s.zero_stage == 3 for s in settings if s.offload_params == "cpu")
    assert any(s.zero_stage == 2 and s.offload_optimizer == "none" for s in candidates(batch_size=8, ranks=2))


def test_faster_settings_rank_higher():
    assert relative_speed(Setting(64, 1, "none", 0)) > relative_speed(Setting(16, 4, "none", 0))
    assert relative_speed(Setting(64, 1, "none", 0)) > relative_speed(Setting(64, 1, "both", 0))
    assert relative_speed(Setting(64, 1, "none", 2)) > relative_speed(Setting(64, 1, "none", 2, "cpu"))


@pytest.fixture(scope="module")
def dcgan64():
    return load_config(REPO / "configs" / "dcgan64.yaml", ["model.width=0.25", "train.batch_size=16"])


def test_cpu_measurements_respond_to_precision_and_checkpointing(dcgan64):
    fp32 = measure(dcgan64, 0, torch.device("cpu"))
    bf16 = measure(dcgan64.model_copy(update={"precision": "bf16"}), 0, torch.device("cpu"))
    generator, _ = build_models("dcgan", ModelSpec(64, 100, 0.25))
    assert fp32.params["g"] == sum(p.numel() * 4 for p in generator.parameters())
    assert fp32.optimizer["g"] == 2 * fp32.params["g"]  # Adam: two moments
    assert fp32.ema == fp32.params["g"]  # the config keeps an EMA of G
    # DCGAN-64's peak is the D step (two passes through a D as big as G): checkpointing D is what helps.
    assert fp32.per_image["both"] < fp32.per_image["d"] < 0.6 * fp32.per_image["none"]
    assert 0.4 < bf16.per_image["none"] / fp32.per_image["none"] < 0.65  # activations roughly halve


def test_plan_picks_the_fastest_setting_that_fits(dcgan64):
    roomy = make_plan(dcgan64, 0, 8 * GIB, ranks=1, device=torch.device("cpu"))
    assert roomy.best == Setting(16, 1, "none", 0)
    components = roomy.components
    tight_budget = predict(components, Setting(4, 4, "both", 0), 1) + 1
    tight = make_plan(dcgan64, 0, tight_budget, ranks=1, device=torch.device("cpu"))
    assert tight.best is not None
    assert predict(tight.components, tight.best, 1) <= tight_budget
    assert tight.best != roomy.best
    hopeless = make_plan(dcgan64, 0, 1024, ranks=1, device=torch.device("cpu"))
    assert hopeless.best is None


@pytest.mark.parametrize("row", sorted(H200_TABLE_GIB))
def test_the_cpu_estimate_reproduces_the_measured_h200_table_within_15_percent(row):
    """CAN-256 as measured by the allocator on one H200 with bench/memory.py (docs/benchmarks.md, 2026-11-30)."""
    batch, precision, checkpointing, zero_stage, offload = row
    overrides = ["data.path=unused", f"precision={precision}", "ema.half_life_kimg=null", f"train.batch_size={batch}"]
    cfg = load_config(REPO / "configs" / "can256.yaml", overrides)
    components = measure(cfg, 27, torch.device("cpu"), (checkpointing,))
    predicted = predict(components, Setting(batch, 1, checkpointing, zero_stage, offload), ranks=1) / GIB
    measured = H200_TABLE_GIB[row]
    assert abs(predicted - measured) / measured <= 0.15, (predicted, measured)
    assert any("a CPU estimate" in note for note in components.notes)  # gand plan says so, and how far off it was
