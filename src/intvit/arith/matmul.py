"""Exact integer matrix products.

``int_matmul(a, b)`` is ``a @ b`` on integer tensors with an int64 result, exact by
construction: torch's integer matmul accumulates in int64. Two 2-D operands whose
values fit int8 take ``torch._int_mm`` (int8 x int8 -> int32, the kernel a deployment
uses) when torch offers it; the result is the same integer either way. Callers declare
the accumulator width: ``|sum_k a_ik b_kj| <= K * max|a| * max|b|``.
"""

from __future__ import annotations

import torch

from .width import declare, signed_bits


def accumulator_bits(a_bits: int, b_bits: int, depth: int) -> int:
    """Signed width of a sum of ``depth`` products of ``a_bits`` x ``b_bits`` integers."""
    return signed_bits(depth << (a_bits + b_bits - 2))


def int_matmul(a: torch.Tensor, b: torch.Tensor, a_bits: int = 8, b_bits: int = 8,
               what: str = "matmul") -> torch.Tensor:
    """``a @ b`` for integer tensors of at most ``a_bits``/``b_bits`` signed bits."""
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        raise TypeError("int_matmul takes integer tensors")
    declare(a, a_bits, f"{what}.a")
    declare(b, b_bits, f"{what}.b")
    if a.dim() == 2 and b.dim() == 2 and a_bits <= 8 and b_bits <= 8 and a.shape[0] > 16:
        out = torch._int_mm(a.to(torch.int8), b.to(torch.int8).contiguous()).to(torch.int64)
    else:
        out = torch.matmul(a.to(torch.int64), b.to(torch.int64))
    return declare(out, accumulator_bits(a_bits, b_bits, a.shape[-1]), f"{what}.acc")
