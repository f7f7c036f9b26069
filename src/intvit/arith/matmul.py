"""Exact integer matrix products.

``int_matmul(a, b)`` is ``a @ b`` on integer tensors with an int64 result, exact by
construction. Operands that fit int8 (with more than 16 rows) take ``torch._int_mm``
(int8 x int8 -> int32, the kernel a deployment uses), one call per leading index for
batched operands; anything else takes torch's int64 matmul. The result is the same
integer either way. Two exact rewrites keep more products on the int8 kernel:

* an unsigned 8-bit left operand (softmax probabilities, ``0..255``) enters as
  ``a - 128`` and the product gets ``128 * sum_k b_kn`` back per column;
* a right operand whose column count is not a multiple of 8 is padded with zero
  columns, cut off again after the product (``_int_mm`` on CPU is slow on such shapes:
  8 ms instead of 10 us for 197x64 @ 64x197 here).

Callers declare the accumulator width: ``|sum_k a_ik b_kj| <= K * max|a| * max|b|``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .width import declare, signed_bits

INT8_MIN_ROWS = 17


def accumulator_bits(a_bits: int, b_bits: int, depth: int) -> int:
    """Signed width of a sum of ``depth`` products of ``a_bits`` x ``b_bits`` integers."""
    return signed_bits(depth << (a_bits + b_bits - 2))


def _int8_matmul(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool) -> torch.Tensor:
    a8 = (a - 128 if a_unsigned else a).to(torch.int8)
    columns = b.shape[-1]
    b8 = b.to(torch.int8)
    if columns % 8:
        b8 = F.pad(b8, (0, (-columns) % 8))
    if a.dim() == 2 and b.dim() == 2:
        out = torch._int_mm(a8, b8)
    else:
        a3 = a8.reshape(-1, *a.shape[-2:])
        b3 = b8.expand(*a.shape[:-2], *b8.shape[-2:]).reshape(-1, *b8.shape[-2:])
        out = torch.stack([torch._int_mm(a3[i], b3[i])
                           for i in range(a3.shape[0])]).reshape(*a.shape[:-1], -1)
    out = out[..., :columns].to(torch.int64)
    if a_unsigned:
        out = out + 128 * b.to(torch.int64).sum(dim=-2, keepdim=True)
    return out


def int_matmul(a: torch.Tensor, b: torch.Tensor, a_bits: int = 8, b_bits: int = 8,
               what: str = "matmul", a_unsigned: bool = False) -> torch.Tensor:
    """``a @ b`` for integer tensors of at most ``a_bits``/``b_bits`` signed bits
    (``a_unsigned``: ``a`` holds ``0 .. 2^(a_bits-1) - 1``)."""
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        raise TypeError("int_matmul takes integer tensors")
    declare(a, a_bits, f"{what}.a")
    declare(b, b_bits, f"{what}.b")
    fits = b_bits <= 8 and (a_bits <= 8 or (a_unsigned and a_bits <= 9))
    if fits and a.dim() >= 2 and a.shape[-2] >= INT8_MIN_ROWS:
        out = _int8_matmul(a, b, a_unsigned and a_bits == 9)
    else:
        out = torch.matmul(a.to(torch.int64), b.to(torch.int64))
    return declare(out, accumulator_bits(a_bits, b_bits, a.shape[-1]), f"{what}.acc")
