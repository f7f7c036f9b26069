"""The ``float`` variants: the exact function on the dequantized input, its output
quantized like every other variant's (round half up, saturate). Measuring them
isolates the quantization error from the approximation error. Not integer-only.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ..arith import quantize
from .base import Approx, Kernel
from .ops import OPS
from .registry import register


class FloatKernel(Kernel):
    integer_only = False

    def __init__(self, op: str, dim: int | None = None, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, **quant: Any) -> None:
        super().__init__(op, **quant)
        self.dim = dim
        self.affine = {} if op != "layernorm" else {"weight": weight, "bias": bias}

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        if self.dim is not None and q.shape[-1] != self.dim:
            raise ValueError(f"{self.op} prepared for rows of {self.dim}, got {q.shape[-1]}")
        affine = {k: v.to(torch.float64) for k, v in self.affine.items() if v is not None}
        y = self.spec.reference(q.to(torch.float64) * self.in_scale, **affine)
        lo, hi = self.out_range
        return quantize(y, self.out_scale, lo, hi).to(torch.int64)

    def counts(self) -> dict[str, Any]:
        return {}


def _float_variant(op_name: str) -> type[Approx]:
    class FloatVariant(Approx):
        op = op_name
        family = "float"
        summary = "exact float function, output quantized (reference, not integer-only)"
        kernel = partial(FloatKernel, op_name)

    FloatVariant.__name__ = FloatVariant.__qualname__ = f"Float{op_name.capitalize()}"
    return register(FloatVariant)


FLOAT_VARIANTS = {op: _float_variant(op) for op in OPS}
