"""On a GPU: `gand plan`'s predicted peak lands within 15% of the allocator's measured peak for CAN-256."""

import pytest
import torch

from gand.config import load_config
from gand.train.engine import build_engine
from gand.train.planner import Setting, measure, predict
from gand.train.steps import Recipe, setup_networks, synthetic_batch, train_step
from tests.conftest import REPO

pytestmark = pytest.mark.gpu
CLASSES = 27


@pytest.mark.parametrize(
    ("batch", "overrides"),
    [
        (32, ["precision=fp32"]),
        (64, ["precision=bf16"]),
        (64, ["precision=bf16", "memory.grad_checkpointing=both"]),
        (64, ["precision=bf16", "memory.grad_checkpointing=both", "memory.micro_batch=16"]),
    ],
)
def test_plan_predicts_the_measured_peak_within_15_percent(batch, overrides):
    cfg = load_config(REPO / "configs" / "can256.yaml", [*overrides, f"train.batch_size={batch}"])
    device = torch.device("cuda")
    micro = cfg.memory.micro_batch or batch
    setting = Setting(micro, batch // micro, cfg.memory.grad_checkpointing, 0)
    predicted = predict(measure(cfg, CLASSES, device, (cfg.memory.grad_checkpointing,)), setting, ranks=1)

    engine = build_engine(cfg.precision, cfg.memory, batch)
    g, d = setup_networks(cfg, engine, CLASSES)
    recipe = Recipe.from_config(cfg, CLASSES)
    data = synthetic_batch(cfg, batch, CLASSES, engine)
    train_step(engine, g, d, recipe, data)  # warm-up: optimizer state exists from here on
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(engine, g, d, recipe, data)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    assert abs(predicted - measured) / measured <= 0.15, (predicted, measured)
