"""One owner for a checkpoint's contents (issue 22): what training saves is what each way back restores, a new piece
of training state is one entry, and readers get the image count and state.json without parsing names."""

import pytest
import torch

from gand.checkpoint.contents import GENERATOR, SavedRun, sampling_weights
from gand.checkpoint.manager import CheckpointManager, CorruptCheckpoint
from gand.config import MemoryConfig, validate_config
from gand.observability.metrics import TrainingMetrics
from gand.train.engine import Engine
from gand.train.snapshot import CheckpointIO, Networks, Part, fixed_sample_inputs, training_parts
from gand.train.state import TrainState
from gand.train.steps import Recipe, setup_networks


class Counter:
    """A stand-in for a new piece of training state (an augmentation p, a schedule's progress)."""

    def __init__(self):
        self.value = torch.tensor(0.0)

    def state_dict(self) -> dict:
        return {"value": self.value.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state.get("value", torch.tensor(0.0)).clone()


@pytest.fixture
def training(tmp_path):
    cfg = validate_config({
        "run": {"name": "snap", "dir": str(tmp_path / "run")},
        "data": {"path": str(tmp_path / "data"), "resolution": 32},
        "model": {"arch": "dcgan", "width": 0.125, "latent_dim": 8},
        "train": {"batch_size": 4},
        "samples": {"count": 4},
        "loss": {"lecam_weight": 0.01},
    })  # fmt: skip
    engine = Engine("fp32", MemoryConfig(), batch_size=4)
    g, d = setup_networks(cfg, engine, 0)
    recipe = Recipe.from_config(cfg, 0)
    nets = Networks(g, d, None, *fixed_sample_inputs(cfg, recipe))
    parts = training_parts(recipe, None)
    parts["kept_on_rollback"] = Part(Counter(), per_rank=False, shared=True, rewinds=False)
    parts["rewound"] = Part(Counter(), per_rank=True, shared=True, rewinds=True)
    checkpoint_io = CheckpointIO(engine, nets, parts, cfg, 0, None, {"wandb": "run-1"})
    checkpoints = CheckpointManager(str(tmp_path / "checkpoints"), engine)
    return checkpoint_io, checkpoints, parts, nets, recipe


def _first_weight(nets: Networks) -> torch.Tensor:
    return next(nets.g.module.parameters())


def test_each_part_is_saved_where_it_says_and_restored_by_the_ways_back_it_names(training):
    checkpoint_io, checkpoints, parts, nets, _ = training
    parts["kept_on_rollback"].obj.value = torch.tensor(1.0)
    parts["rewound"].obj.value = torch.tensor(2.0)
    saved_weight = _first_weight(nets).detach().clone()
    checkpoint_io.save(checkpoints, TrainState(step=3, images_seen=12), history={"points": []})

    checkpoint = checkpoints.load_latest()
    assert checkpoint is not None
    assert {"kept_on_rollback", "rewound", "lecam", "fixed_noise"} <= set(checkpoint.trainer)
    assert {"rewound", "lecam", "rng"} <= set(checkpoint.rank_state)
    assert "kept_on_rollback" not in checkpoint.rank_state and "rng" not in checkpoint.trainer
    assert SavedRun.from_state(checkpoint.state).tracking_run_ids == {"wandb": "run-1"}

    # Training moves on: weights, both parts, the fixed noise.
    with torch.no_grad():
        _first_weight(nets).add_(1.0)
    parts["kept_on_rollback"].obj.value = torch.tensor(5.0)
    parts["rewound"].obj.value = torch.tensor(6.0)
    nets.fixed_noise = torch.zeros_like(nets.fixed_noise)

    rolled = checkpoint_io.restore(checkpoint, resume=False)  # a roll-back
    assert (rolled.step, rolled.images_seen) == (3, 12)
    assert torch.equal(_first_weight(nets), saved_weight)
    assert parts["rewound"].obj.value.item() == 2.0
    assert parts["kept_on_rollback"].obj.value.item() == 5.0  # goes on across a roll-back
    assert not nets.fixed_noise.any()

    checkpoint_io.restore(checkpoint, resume=True)  # a resume brings back everything
    assert parts["kept_on_rollback"].obj.value.item() == 1.0
    assert torch.equal(nets.fixed_noise, checkpoint.trainer["fixed_noise"]) and nets.fixed_noise.any()


def test_a_checkpoint_without_optimizer_state_is_named_not_a_type_error(training):
    checkpoint_io, checkpoints, _, nets, _ = training
    checkpoint_io.save(checkpoints, TrainState(step=1, images_seen=4), history={})
    _drop_from_trainer(checkpoints, nets.g.name)
    checkpoint = checkpoints.load_latest()
    assert checkpoint is not None  # it verifies: only a restore finds what is missing
    with pytest.raises(CorruptCheckpoint, match="no optimizer state for the generator"):
        checkpoint_io.restore(checkpoint, resume=True)


def test_upload_results_carry_the_image_count_to_the_metrics(training):
    checkpoint_io, checkpoints, *_ = training
    checkpoint_io.save(checkpoints, TrainState(step=2, images_seen=8), history={})
    (result,) = checkpoints.poll()
    assert result.committed and result.images_seen == 8
    metrics = TrainingMetrics(0, "snap")
    try:
        metrics.record_commit(result)
        assert metrics.registry.get_sample_value("gand_checkpoint_last_commit_images") == 8
    finally:
        metrics.close()


def test_saved_run_reads_earlier_checkpoints_and_round_trips():
    legacy = SavedRun.from_state({"train": {"step": 1}, "config": {"run": {"name": "old"}}, "tracking_run_id": "w1"})
    assert legacy.tracking_run_ids == {"wandb": "w1"} and legacy.class_names is None and legacy.run_name == "old"
    current = SavedRun({"step": 2}, {"run": {"name": "new"}}, 3, ["a", "b", "c"], {"mlflow": "m"}, "0.1")
    assert SavedRun.from_state(current.to_state()) == current


def test_sampling_prefers_the_ema_generator_when_asked():
    plain, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert sampling_weights({GENERATOR: plain, "generator_ema": ema}) is ema
    assert sampling_weights({GENERATOR: plain, "generator_ema": ema}, use_ema=False) is plain
    assert sampling_weights({GENERATOR: plain}) is plain


def _drop_from_trainer(checkpoints: CheckpointManager, key: str) -> None:
    """Rewrite the newest checkpoint's trainer.pt without `key`, its manifest updated: a verified checkpoint that
    lacks what a restore needs, as something other than gand could write it."""
    import hashlib
    import io
    import json

    from gand.checkpoint.manager import MANIFEST

    name = checkpoints.committed()[-1]
    store = checkpoints.store
    trainer = torch.load(io.BytesIO(store.read_bytes(f"{name}/trainer.pt")), weights_only=True)
    del trainer[key]
    buffer = io.BytesIO()
    torch.save(trainer, buffer)
    data = buffer.getvalue()
    manifest = json.loads(store.read_bytes(f"{name}/{MANIFEST}"))
    manifest["files"]["trainer.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    store.write_bytes(f"{name}/trainer.pt", data)
    store.write_bytes(f"{name}/{MANIFEST}", json.dumps(manifest).encode())


def test_a_roll_back_to_a_checkpoint_it_cannot_restore_is_a_divergence(training):
    from gand.errors import Diverged
    from gand.train.snapshot import roll_back_after_nan

    checkpoint_io, checkpoints, _, nets, _ = training
    checkpoint_io.save(checkpoints, TrainState(step=1, images_seen=4), history={})
    _drop_from_trainer(checkpoints, nets.d.name)
    with pytest.raises(Diverged, match=r"cannot roll back: .*no optimizer state for the discriminator"):
        roll_back_after_nan(checkpoint_io, checkpoints, TrainState(step=2, images_seen=8), 1, 3)
