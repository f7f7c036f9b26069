"""The integer steps between quantized modules, as pure functions on int64 tensors.

The quantized modules call them in ``Mode.INT`` with the constants they froze from their
float scales on their first INT-mode call; the inference engine (:mod:`intvit.engine`) calls them with the same
constants frozen into a program. One definition, so the two agree bit for bit.

* ``quantize_input``: ``clamp(floor(x / s + 1/2), lo, hi)``, the one float-to-integer
  step of a model (float32 division, as the model computes it).
* ``linear_int``: ``x W^T + b`` with signed ``in_bits`` inputs, ``weight_bits`` weights
  and an int32 bias, exact; the accumulator is declared 32 bits wide.
* ``matmul_int``: ``a @ b`` of two activations, declared 32 bits wide.
* ``requantize_sum``: ``clamp(R(x) + R(r), lo, hi)`` with ``R(v) = requantize(v, m, e)``
  (round half up of ``v * m / 2^e``) for the input and an optional residual.
"""

from __future__ import annotations

import torch

from ..arith import declare, int_matmul, quantize, requantize

ACC_BITS = 32


def quantize_input(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Float input to ``[lo, hi]`` integers at ``scale`` (round half up)."""
    return quantize(x, scale, lo, hi).to(torch.int64)


def linear_int(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               in_bits: int, weight_bits: int) -> torch.Tensor:
    """``x W^T + b`` over the last dimension; ``weight`` (out, in) and ``bias`` hold
    integers (any dtype)."""
    flat = x.reshape(-1, x.shape[-1])
    if weight.dtype.is_floating_point:
        weight = weight.to(torch.int64)
    acc = int_matmul(flat, weight.T, in_bits, weight_bits, "linear")
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    acc = declare(acc, ACC_BITS, "linear.out")
    return acc.reshape(*x.shape[:-1], -1)


def matmul_int(a: torch.Tensor, b: torch.Tensor, a_bits: int, b_bits: int,
               a_unsigned: bool = False) -> torch.Tensor:
    """``a @ b`` of two quantized activations (attention scores and context)."""
    return declare(int_matmul(a, b, a_bits, b_bits, "attention", a_unsigned), ACC_BITS,
                   "attention.out")


def requantize_sum(q: torch.Tensor, m: torch.Tensor, e: torch.Tensor, lo: int, hi: int,
                   residual: torch.Tensor | None = None,
                   residual_m: torch.Tensor | None = None,
                   residual_e: torch.Tensor | None = None) -> torch.Tensor:
    """Requantize ``q`` (and add the requantized ``residual``), then saturate."""
    out = requantize(q, m, e, ACC_BITS, "act")
    if residual is not None:
        out = out + requantize(residual, residual_m, residual_e, ACC_BITS, "act")
    return out.clamp(lo, hi)
