"""Memory savers applied from outside the models: gradient checkpointing of `.blocks`, channels_last.

Plain torch only; the engine decides when to apply them.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(network: nn.Module) -> nn.Module:
    """Recompute each of `network.blocks` in the backward pass instead of keeping its activations.

    Non-reentrant checkpointing restores the RNG state (dropout masks repeat) and works with DDP and ZeRO-3.
    BatchNorm layers see each batch twice (forward and recompute): the normalised outputs and the gradients are
    identical, only the running statistics (used in eval mode, never in training) take two momentum steps.
    """
    for block in network.blocks:
        if getattr(block, "_gand_checkpointed", False):
            continue
        block.forward = functools.partial(_checkpointed, block.forward)
        block._gand_checkpointed = True
    return network


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def to_channels_last(network: nn.Module) -> nn.Module:
    """NHWC weights for 4-d convolutions (tensor cores prefer it); linear layers are unaffected."""
    return network.to(memory_format=torch.channels_last)


def as_channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images
