"""Activation range observers: min/max, exponential moving average, percentile.

An observer keeps ``low`` and ``high`` buffers (saved in checkpoints). ``scale(bits,
signed)`` turns them into a symmetric scale ``max(|low|, |high|) / (2^(b-1) - 1)`` for
signed points and ``high / (2^b - 1)`` for unsigned ones. In a distributed run the
ranges are reduced across ranks (min of lows, max of highs) after every update, so every
rank quantizes with the same scale.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..arith import qrange


class RangeObserver(nn.Module):
    def __init__(self, method: str = "minmax", momentum: float = 0.9,
                 percentile: float = 99.99) -> None:
        super().__init__()
        self.method, self.momentum, self.percentile = method, momentum, percentile
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))

    @property
    def ready(self) -> bool:
        return bool(torch.isfinite(self.low)) and bool(torch.isfinite(self.high))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.method == "percentile" and x.numel() > 1:
            flat = x.flatten()
            if flat.numel() > 1 << 20:
                flat = flat[torch.randperm(flat.numel(), device=flat.device)[: 1 << 20]]
            low = torch.quantile(flat, 1 - self.percentile / 100)
            high = torch.quantile(flat, self.percentile / 100)
        else:
            low, high = x.min(), x.max()
        if self.method == "minmax" or not self.ready:
            low, high = torch.minimum(self.low, low), torch.maximum(self.high, high)
        else:
            low = self.momentum * self.low + (1 - self.momentum) * low
            high = self.momentum * self.high + (1 - self.momentum) * high
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
        self.low.copy_(low)
        self.high.copy_(high)

    def scale(self, bits: int, signed: bool = True) -> torch.Tensor:
        if not self.ready:
            raise RuntimeError("activation ranges are not calibrated: run `intvit calibrate` "
                               "(or the model under `calibration(model)`) first")
        top = qrange(bits, signed)[1]
        bound = torch.maximum(self.low.abs(), self.high.abs()) if signed else self.high
        return (bound / top).clamp_min(1e-8)
