"""Sample grids: generator output in [-1, 1] -> one PNG."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from torch import nn


@torch.no_grad()
def generate(generator: nn.Module, noise: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """G(noise, classes) with training-mode BatchNorm (as DCGAN samples are shown), leaving G's buffers untouched."""
    buffers = {name: tensor.clone() for name, tensor in generator.named_buffers()}
    images = generator(noise, classes).float().cpu()
    for name, tensor in generator.named_buffers():
        tensor.copy_(buffers[name])
    return images


def grid_png(
    images: torch.Tensor,
    columns: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> bytes:
    """N x C x H x W in value_range -> PNG bytes of a grid (near-square unless `columns` is given)."""
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    low, high = value_range
    unit = ((images - low) / (high - low)).clamp(0, 1)
    pixels = (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    canvas = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    for index in range(count):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top : top + height, left : left + width] = pixels[index]
    mode = "RGB" if channels == 3 else "L"
    buffer = io.BytesIO()
    Image.fromarray(canvas.squeeze(-1) if channels == 1 else canvas, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def load_generator(checkpoint_url: str, use_ema: bool = True):
    """The newest committed checkpoint's generator (its EMA when there is one), its config and class count.

    Built from the config snapshot stored in the checkpoint, so nothing but the checkpoint is needed.
    """
    from gand.checkpoint.manager import CheckpointManager, SingleProcess
    from gand.config import validate_config
    from gand.errors import DataError
    from gand.models import build_models, spec_from_config

    found = CheckpointManager(checkpoint_url, SingleProcess()).load_latest_weights()
    if found is None:
        raise DataError(f"no committed checkpoint under {checkpoint_url}")
    name, weights, state = found
    cfg = validate_config(state["config"], source=f"{name}/state.json")
    num_classes = int(state["num_classes"])
    spec = spec_from_config(cfg.model, cfg.data.resolution, cfg.data.channels, num_classes)
    generator, _ = build_models(cfg.model.arch, spec)
    key = "generator_ema" if use_ema and "generator_ema" in weights else "generator"
    generator.load_state_dict(weights[key])  # consolidated fp32, whatever ZeRO stage wrote it
    return generator, cfg, num_classes
