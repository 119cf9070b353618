"""Sample grids: generator output in [-1, 1] -> one PNG."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from torch import nn


@torch.no_grad()
def generate(generator: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """G(noise) in training-mode BatchNorm (as DCGAN samples are shown), leaving G's buffers untouched."""
    buffers = {name: tensor.clone() for name, tensor in generator.named_buffers()}
    images = generator(noise).float().cpu()
    for name, tensor in generator.named_buffers():
        tensor.copy_(buffers[name])
    return images


def grid_png(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> bytes:
    """N x C x H x W in [-1, 1] -> PNG bytes of a grid (near-square unless `columns` is given)."""
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    canvas = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    for index in range(count):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top : top + height, left : left + width] = pixels[index]
    mode = "RGB" if channels == 3 else "L"
    buffer = io.BytesIO()
    Image.fromarray(canvas.squeeze(-1) if channels == 1 else canvas, mode).save(buffer, format="PNG")
    return buffer.getvalue()
