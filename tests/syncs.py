"""Counting the calls that make the host wait for the device, on any machine.

On a GPU, `torch.cuda.set_sync_debug_mode` reports synchronising CUDA calls; on a CPU nothing synchronises, so
this counts the tensor operations that would: reading a value back (item, tolist, bool/int/float of a tensor,
numpy, cpu) and the operations whose output size depends on the data (nonzero, unique, masked_select, ...).
It is a real torch function mode: every torch call made while it is active goes through it.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

READS_BACK = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.__array__,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.unique,
    torch.unique,
    torch.Tensor.masked_select,
    torch.masked_select,
    torch.equal,
    torch.Tensor.equal,
    torch.Tensor.allclose,
    torch.allclose,
}


class SyncCounter(TorchFunctionMode):
    """Counts calls in READS_BACK made while active (this thread only), by name."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS_BACK:
            self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.calls.values())
