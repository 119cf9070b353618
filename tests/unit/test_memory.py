"""Memory savers and precision: checkpointing, accumulation, fp16 loss scaling per network, DeepSpeed config."""

import copy
import json

import pytest
import torch
from torch import nn

from gand.config import MemoryConfig, validate_config
from gand.errors import ConfigError
from gand.models import ModelSpec, build_models
from gand.train.engine import Engine, deepspeed_config
from gand.train.memory import checkpoint_blocks, draws_random_numbers, latent_projections, to_channels_last


def gradients(network: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in network.named_parameters()}


@pytest.mark.parametrize(("arch", "resolution", "classes"), [("dcgan", 32, 0), ("can", 128, 4), ("acgan", 32, 10)])
def test_gradient_checkpointing_gives_the_same_gradients(arch, resolution, classes):
    torch.manual_seed(0)
    spec = ModelSpec(resolution, latent_dim=16, width=0.125, num_classes=classes, d_dropout=0.3)
    g, d = build_models(arch, spec)
    g_ckpt, d_ckpt = checkpoint_blocks(copy.deepcopy(g)), checkpoint_blocks(copy.deepcopy(d))
    z = torch.randn(4, 16)
    labels = torch.arange(4) % classes if arch == "acgan" else None
    results = []
    for generator, discriminator in ((g, d), (g_ckpt, d_ckpt)):
        torch.manual_seed(1)  # same dropout masks; checkpointing must replay them on recompute
        discriminator(generator(z, labels)).square().mean().backward()
        results.append((gradients(generator), gradients(discriminator)))
    for plain, checkpointed in zip(results[0], results[1], strict=True):
        assert plain.keys() == checkpointed.keys()
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_applied_once_and_only_with_gradients():
    g, _ = build_models("dcgan", ModelSpec(32, width=0.125))
    checkpoint_blocks(g)
    checkpoint_blocks(g)  # idempotent
    with torch.no_grad():
        assert g(torch.randn(2, 100)).shape == (2, 3, 32, 32)


def test_accumulated_micro_batches_give_the_whole_batch_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    twin = copy.deepcopy(model)
    x, y = torch.randn(8, 6), torch.randn(8, 1)
    for net_model, micro in ((model, None), (twin, 2)):
        engine = Engine("fp32", MemoryConfig(micro_batch=micro), batch_size=8)
        optimizer = torch.optim.SGD(net_model.parameters(), lr=0.5)
        from gand.train.engine import Trained

        net = Trained("d", net_model, net_model, optimizer)
        pieces = list(zip(x.chunk(engine.accumulation_steps), y.chunk(engine.accumulation_steps), strict=True))
        for index, (xs, ys) in enumerate(pieces):
            with engine.accumulate(net, last=index == len(pieces) - 1):
                engine.backward(net, nn.functional.mse_loss(net(xs), ys))
        engine.step(net)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_fp16_loss_scaling_counts_skipped_steps_per_network():
    engine = Engine("fp16", MemoryConfig(), batch_size=2)
    g, d = build_models("dcgan", ModelSpec(32, width=0.125))
    trained_g, trained_d = engine.setup(g, d, torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters()))
    assert trained_g.scaler is not trained_d.scaler
    d_before = [p.detach().clone() for p in d.parameters()]
    with engine.accumulate(trained_d, last=True):
        loss = trained_d(torch.randn(2, 3, 32, 32)).float().mean() * float("inf")  # overflowing gradients
        engine.backward(trained_d, loss)
    engine.step(trained_d)
    assert trained_d.skipped_steps == 1 and trained_g.skipped_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(d_before, d.parameters(), strict=True))  # the update was skipped
    assert engine.loss_scale(trained_d) < engine.loss_scale(trained_g)  # only D's scale backed off


def test_channels_last_is_applied_to_conv_weights():
    engine = Engine("fp32", MemoryConfig(channels_last=True), batch_size=2)
    g, d = build_models("dcgan", ModelSpec(32, width=0.125))
    engine.setup(g, d, torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters()))
    weight = d.blocks[1][0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert engine.layout(torch.randn(2, 3, 32, 32)).is_contiguous(memory_format=torch.channels_last)


def test_the_latent_projection_keeps_its_layout_under_channels_last():
    """G's first layer sees the latent as a 1x1 image; NHWC there broke torch.compile's backward on an H200."""
    for arch in ("dcgan", "can"):
        g, _ = build_models(arch, ModelSpec(64, width=0.125, num_classes=4))
        to_channels_last(g)
        projections = latent_projections(g)
        assert len(projections) == 1 and projections[0] is g.blocks[0][0]
        assert projections[0].weight.is_contiguous()
        assert not projections[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert g.blocks[1][0].weight.is_contiguous(memory_format=torch.channels_last)  # the rest is NHWC


def test_the_latent_projection_under_spectral_norm_keeps_its_stored_weight_contiguous_without_a_power_step():
    g, _ = build_models("dcgan", ModelSpec(64, width=0.125, spectral_norm="g"))
    projection = latent_projections(g)[0]
    u_before = projection.parametrizations.weight[0]._u.clone()
    to_channels_last(g)
    assert projection.parametrizations.weight.original.is_contiguous()
    assert torch.equal(projection.parametrizations.weight[0]._u, u_before)  # reading `weight` would have moved it


def test_checkpointing_replays_the_rng_only_where_a_block_draws_random_numbers():
    _, d = build_models("dcgan", ModelSpec(32, width=0.125, d_dropout=0.3))
    _, plain = build_models("dcgan", ModelSpec(32, width=0.125))
    assert all(draws_random_numbers(block) for block in d.blocks[:-1])  # dropout in every down block
    assert not any(draws_random_numbers(block) for block in plain.blocks)


def test_deepspeed_config_from_memory_settings(tmp_path):
    memory = MemoryConfig(zero_stage=3, offload_optimizer="cpu", offload_params="cpu", micro_batch=16)
    config = deepspeed_config(memory, "bf16", micro_batch_size=16, accumulation_steps=4, cuda=True)
    assert config["train_micro_batch_size_per_gpu"] == 16 and config["gradient_accumulation_steps"] == 4
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "fp16" not in config and "bf16" not in config  # precision is autocast, never 16-bit weights
    assert "torch_autocast" not in deepspeed_config(MemoryConfig(zero_stage=1), "fp32", 4, 1, cuda=False)


def test_deepspeed_tuning_json_is_merged_and_conflicts_are_named(tmp_path):
    tuning = tmp_path / "tuning.json"
    tuning.write_text(json.dumps({"zero_optimization": {"overlap_comm": True, "reduce_bucket_size": 5e7}}))
    config = deepspeed_config(MemoryConfig(zero_stage=2, deepspeed_config=str(tuning)), "fp32", 8, 1, cuda=True)
    assert config["zero_optimization"] == {"overlap_comm": True, "reduce_bucket_size": 5e7, "stage": 2}
    tuning.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match=r"sets ZeRO stage 3 but memory\.zero_stage is 2"):
        deepspeed_config(MemoryConfig(zero_stage=2, deepspeed_config=str(tuning)), "fp32", 8, 1, cuda=True)
    tuning.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="leave 'bf16' out"):
        deepspeed_config(MemoryConfig(zero_stage=2, deepspeed_config=str(tuning)), "fp32", 8, 1, cuda=True)


@pytest.mark.parametrize("config_file", sorted(__import__("pathlib").Path("configs/deepspeed").glob("*.json")))
def test_shipped_deepspeed_tuning_files_are_accepted(config_file):
    for stage in (1, 2, 3):
        config = deepspeed_config(MemoryConfig(zero_stage=stage, deepspeed_config=str(config_file)), "bf16", 8, 2,
                                  cuda=True)  # fmt: skip
        assert config["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize(
    ("memory", "train", "loss", "expected"),
    [
        ({"offload_params": "cpu", "zero_stage": 2}, {}, {}, "memory.offload_params: parameter offload needs"),
        ({"offload_optimizer": "cpu"}, {}, {}, "memory.offload_optimizer: optimizer offload needs"),
        ({"micro_batch": 5}, {"batch_size": 8}, {}, "memory.micro_batch: 5 must divide train.batch_size (8)"),
        ({"zero_stage": 2}, {}, {"adversarial": "wasserstein", "gradient_penalty": 10}, "loss.gradient_penalty:"),
        ({"zero_stage": 2}, {}, {"adversarial": "rpgan", "r1_gamma": 1}, "loss.r1_gamma: DeepSpeed's ZeRO optimizers"),
        (
            {"compile": True},
            {},
            {"adversarial": "rpgan", "r2_gamma": 1},
            "loss.r2_gamma: torch.compile (memory.compile)",
        ),
        ({"deepspeed_config": "x.json"}, {}, {}, "memory.deepspeed_config: only used with"),
        ({"zero_stage": 4}, {}, {}, "memory.zero_stage: Input should be less than or equal to 3"),
        (
            {"zero_stage": 2, "channels_last": True},
            {},
            {},
            "memory.channels_last: true is not supported with memory.ze",
        ),
    ],
)
def test_memory_settings_that_cannot_work_are_named(memory, train, loss, expected):
    with pytest.raises(ConfigError) as caught:
        validate_config({"data": {"path": "d", "resolution": 32}, "memory": memory, "train": train, "loss": loss})
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("device_type", "capability", "expected"),
    [
        ("cpu", None, "fp32"),  # emulated mixed precision is slower than fp32
        ("cuda", (7, 5), "fp16"),  # T4 (Colab): fp16 tensor cores, no bf16
        ("cuda", (7, 0), "fp16"),  # V100
        ("cuda", (8, 0), "bf16"),  # A100
        ("cuda", (8, 6), "bf16"),  # A10G
        ("cuda", (8, 9), "bf16"),  # L4
        ("cuda", (9, 0), "bf16"),  # H100, H200
        ("cuda", (6, 0), "fp32"),  # P100: no tensor cores
    ],
)
def test_precision_auto_picks_by_device_kind(device_type, capability, expected):
    from gand.train.engine import choose_precision

    precision, reason = choose_precision(device_type, capability)
    assert precision == expected and reason


def test_precision_auto_trains_in_fp32_on_the_cpu_and_says_why():
    engine = Engine("auto", MemoryConfig(), batch_size=2)
    assert engine.precision == "fp32" and engine.autocast().__class__.__name__ == "nullcontext"


def test_deepspeed_buckets_follow_the_network_size_unless_the_tuning_json_sets_them(tmp_path):
    from gand.train.engine import bucket_elements

    config = deepspeed_config(MemoryConfig(zero_stage=2), "fp32", 8, 1, cuda=True, parameters=3_000_000)
    assert config["zero_optimization"]["reduce_bucket_size"] == 3_000_000
    assert config["zero_optimization"]["allgather_bucket_size"] == 3_000_000
    assert "stage3_prefetch_bucket_size" not in config["zero_optimization"]
    stage3 = deepspeed_config(MemoryConfig(zero_stage=3), "fp32", 8, 1, cuda=True, parameters=3_000_000)
    assert stage3["zero_optimization"]["stage3_prefetch_bucket_size"] == 3_000_000
    assert bucket_elements(10) == 2**20 and bucket_elements(10**10) == 500_000_000
    tuning = tmp_path / "tuning.json"
    tuning.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 5e7}}))
    tuned = deepspeed_config(MemoryConfig(zero_stage=2, deepspeed_config=str(tuning)), "fp32", 8, 1, cuda=True,
                             parameters=3_000_000)  # fmt: skip
    assert tuned["zero_optimization"]["reduce_bucket_size"] == 5e7  # the user's choice wins
    assert tuned["zero_optimization"]["allgather_bucket_size"] == 3_000_000
