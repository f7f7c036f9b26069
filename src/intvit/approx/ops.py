"""The four ops an approximation can stand for, with their exact float definitions.

Each :class:`OpSpec` says what the op computes in float64 (the reference every variant
is measured against), its integer input domain, whether its output is signed, and the
output scale a kernel uses when the caller gives none:

| op        | reference                         | input domain         | output, default scale            |
|-----------|-----------------------------------|----------------------|----------------------------------|
| gelu      | x * Phi(x) (erf form)             | signed b bits        | signed, the input's real range   |
| exp       | e^x                               | signed b bits, <= 0  | unsigned, 2^-out_bits            |
| softmax   | e^x / sum e^x over the last dim   | signed b bits        | unsigned, 2^-out_bits            |
| layernorm | (x - mean) / sqrt(var + eps) * w + b over the last dim | signed b bits | signed, 2^(5 - out_bits) (range +-16) |

Probabilities and exponentials use the power-of-two scale ``2^-out_bits``: 1.0 itself
saturates to ``2^out_bits - 1``, one LSB below, which keeps normalization a shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..arith import qrange

LAYERNORM_EPS = 1e-6


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def exp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def layernorm(x: torch.Tensor, weight: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, eps: float = LAYERNORM_EPS) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


@dataclass(frozen=True)
class OpSpec:
    name: str
    reference: Callable[..., torch.Tensor]
    out_signed: bool
    rowwise: bool
    nonpositive_input: bool = False

    def domain(self, in_bits: int) -> tuple[int, int]:
        lo, hi = qrange(in_bits, signed=True)
        return (lo, 0) if self.nonpositive_input else (lo, hi)

    def default_out_scale(self, in_scale: float, in_bits: int, out_bits: int) -> float:
        if self.name == "gelu":
            return in_scale * 2.0 ** (in_bits - out_bits)
        if self.name == "layernorm":
            return 2.0 ** (5 - out_bits)
        return 2.0 ** -out_bits


OPS: dict[str, OpSpec] = {
    "gelu": OpSpec("gelu", gelu, out_signed=True, rowwise=False),
    "exp": OpSpec("exp", exp, out_signed=False, rowwise=False, nonpositive_input=True),
    "softmax": OpSpec("softmax", softmax, out_signed=False, rowwise=True),
    "layernorm": OpSpec("layernorm", layernorm, out_signed=True, rowwise=True),
}
