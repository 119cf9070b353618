"""What a run must carry across a restart besides weights: counters and random-number-generator states."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gand.data.loader import DataPosition


@dataclass
class TrainState:
    step: int = 0
    images_seen: int = 0  # real images drawn by all ranks together
    epoch: int = 0  # the data position: epoch, batches drawn in it, manifest generation it draws from
    epoch_batches: int = 0
    data_generation: int = 0
    data_stream_batch: int = 0  # batches this rank drew from that generation's stream

    def advance(self, images: int) -> None:
        self.step += 1
        self.images_seen += images

    @property
    def data_position(self) -> DataPosition:
        return DataPosition(self.epoch, self.epoch_batches, self.data_generation, self.data_stream_batch)

    def record_position(self, position: DataPosition) -> None:
        self.epoch, self.epoch_batches = position.epoch, position.batch
        self.data_generation, self.data_stream_batch = position.generation, position.stream_batch

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{name: int(data.get(name, 0)) for name in cls.__dataclass_fields__})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """Every generator a step can draw from, in types that torch.load(weights_only=True) accepts."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
