"""Model registry: architecture name -> builder of a (generator, discriminator) pair of pure nn.Modules.

Models know nothing of devices, precision or distribution; the engine applies those from outside. Each network
exposes its stages as `.blocks` (an nn.ModuleList) so checkpointing and wrapping can target them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from gand.models import dcgan


@dataclass(frozen=True)
class ModelSpec:
    resolution: int
    latent_dim: int
    width: float
    channels: int = 3


Builder = Callable[[ModelSpec], tuple[nn.Module, nn.Module]]

MODELS: dict[str, Builder] = {
    "dcgan": dcgan.build,
}


def build_models(arch: str, spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    return MODELS[arch](spec)
