"""On a GPU: `gand plan`'s predicted peak lands within 15% of the allocator's measured peak for CAN-256."""

import pytest
import torch

from gand.config import load_config
from gand.data.loader import Batch, DataPosition
from gand.models import build_models, spec_from_config
from gand.train.engine import build_engine
from gand.train.optim import build_optimizer
from gand.train.planner import Setting, measure, predict
from gand.train.steps import Recipe, discriminator_update, generator_update
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
    predicted = predict(measure(cfg, CLASSES, device), setting, ranks=1)

    generator, discriminator = build_models("can", spec_from_config(cfg.model, 256, 3, CLASSES))
    engine = build_engine(cfg.precision, cfg.memory, batch)
    g, d = engine.setup(generator, discriminator, build_optimizer(generator.parameters(), cfg.optim.g),
                        build_optimizer(discriminator.parameters(), cfg.optim.d))  # fmt: skip
    recipe = Recipe.from_config(cfg, CLASSES)
    data = Batch(torch.rand(batch, 3, 256, 256) * 2 - 1, torch.randint(0, CLASSES, (batch,)), [""] * batch,
                 DataPosition())  # fmt: skip
    discriminator_update(engine, d, g, recipe, data)  # warm-up: optimizer state exists from here on
    generator_update(engine, g, d, recipe, batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    discriminator_update(engine, d, g, recipe, data)
    generator_update(engine, g, d, recipe, batch)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    assert abs(predicted - measured) / measured <= 0.15, (predicted, measured)
