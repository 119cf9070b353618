"""What a checkpoint holds, by name: the layout that training writes (`gand.train.snapshot`) and that sampling,
evaluation and `gand plot` read. Nothing here knows how training runs.

One checkpoint directory (`ckpt-<images seen>`, committed by `gand.checkpoint.manager`):

| file | holds | written by |
|---|---|---|
| `generator.safetensors`, `discriminator.safetensors` | consolidated fp32 weights and buffers | rank 0 |
| `generator_ema.safetensors` | the EMA generator (when `ema.half_life_kimg` is set) | rank 0 |
| `trainer.pt` | the fixed sample noise and classes, optimizer state (DDP), training parts | rank 0 |
| `rank-N.pt` | each rank's own: RNG, per-rank parts, ZeRO's optimizer partitions | every rank |
| `state.json` | `SavedRun`: counters, config, classes, version, tracker run ids | rank 0 |
| `history.pt` | the loss and score history (`gand.observability.curves.LossHistory`) | rank 0 |

Training parts are the objects `gand.train.snapshot.training_parts` lists (LeCam anchors, adaptive augmentation,
the collapse guard, the RNG), each under its own key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Weight files (safetensors), by network
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
GENERATOR_EMA = "generator_ema"
# trainer.pt entries besides the networks' optimizer state and the training parts
FIXED_NOISE = "fixed_noise"
FIXED_CLASSES = "fixed_classes"
# rank-N.pt
RNG = "rng"


@dataclass(frozen=True)
class SavedRun:
    """A checkpoint's `state.json`, typed: what a resume checks and what a reader needs besides the weights."""

    train: dict[str, int]  # gand.train.state.TrainState.to_dict(): step, images_seen, epoch, data position
    config: dict[str, Any]  # the run's config snapshot (GandConfig.snapshot())
    num_classes: int | None  # the class head's size the networks were built with
    class_names: list[str] | None  # the dataset's class names in label order, up to num_classes
    tracking_run_ids: dict[str, str] | None  # tracker name -> run id, so a resume continues the same tracker run
    gand_version: str | None = None

    def to_state(self) -> dict[str, Any]:
        return {
            "train": self.train,
            "config": self.config,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "gand_version": self.gand_version,
            "tracking_run_ids": self.tracking_run_ids,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SavedRun:
        """Also reads checkpoints of earlier versions: no class names, or W&B's id alone (`tracking_run_id`)."""
        legacy_wandb = state.get("tracking_run_id")
        return cls(
            train=state.get("train") or {},
            config=state.get("config") or {},
            num_classes=state.get("num_classes"),
            class_names=state.get("class_names"),
            tracking_run_ids=state.get("tracking_run_ids") or ({"wandb": legacy_wandb} if legacy_wandb else None),
            gand_version=state.get("gand_version"),
        )

    @property
    def run_name(self) -> str:
        return self.config["run"]["name"]


def sampling_weights(weights: dict[str, dict[str, torch.Tensor]], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The generator weights to sample with: the EMA generator's when the checkpoint has one and `use_ema`."""
    return weights[GENERATOR_EMA if use_ema and GENERATOR_EMA in weights else GENERATOR]
