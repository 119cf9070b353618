"""Memory savers applied from outside the models: gradient checkpointing of `.blocks`, channels_last.

Plain torch only; the engine decides when to apply them.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(network: nn.Module) -> nn.Module:
    """Recompute each of `network.blocks` in the backward pass instead of keeping its activations.

    Non-reentrant checkpointing works with DDP and ZeRO-3; blocks with dropout replay the RNG state so that their
    masks repeat.
    BatchNorm layers see each batch twice (forward and recompute): the normalised outputs and the gradients are
    identical, only the running statistics (used in eval mode, never in training) take two momentum steps.
    """
    for block in network.blocks:
        if getattr(block, "_gand_checkpointed", False):
            continue
        block.forward = functools.partial(_checkpointed, block.forward, draws_random_numbers(block))
        block._gand_checkpointed = True
    return network


def draws_random_numbers(block: nn.Module) -> bool:
    """Whether a block's forward uses the RNG (dropout): only then must its recompute replay the RNG state. Saving
    and restoring the CPU and CUDA generator states costs each checkpointed call host work for nothing otherwise."""
    return any(isinstance(module, DROPOUT) and module.p > 0 for module in block.modules())


DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _checkpointed(forward, random: bool, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=random, **kwargs)
    return forward(*args, **kwargs)


def to_channels_last(network: nn.Module) -> nn.Module:
    """NHWC weights for 4-d convolutions (tensor cores prefer it); linear layers are unaffected.

    A generator's latent projection (a transposed convolution from the latent vector seen as a 1x1 image: DCGAN's
    and CAN's first layer) stays contiguous. On a 1x1 input the two layouts are the same tensor, and cuDNN returns
    that layer's weight gradient contiguous where torch.compile expects NHWC: a compiled generator failed its
    backward on an H200 (2026-11-30). The layer is a matrix product in convolution form, so NHWC gains nothing there.
    """
    network.to(memory_format=torch.channels_last)
    for module in latent_projections(network):
        # Under spectral norm `weight` is computed (reading it runs a power iteration): change the stored original.
        if parametrize.is_parametrized(module, "weight"):
            stored = module.parametrizations.weight.original
        else:
            stored = module.weight
        stored.data = stored.data.contiguous()
    return network


def latent_projections(network: nn.Module) -> list[nn.Module]:
    """Transposed convolutions fed the latent vector as a 1x1 image (in_channels == the network's latent_dim)."""
    latent_dim = getattr(network, "latent_dim", None)
    return [
        module
        for module in network.modules()
        if isinstance(module, nn.ConvTranspose2d) and module.in_channels == latent_dim
    ]


def as_channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images
