"""The ops of an integer program and what each computes, on int64 torch tensors.

Every arithmetic op calls the function the quantized model calls in ``Mode.INT``
(:mod:`intvit.quant.integer`, :mod:`intvit.approx.rows`), so a program computes the
model's integers by construction. The non-linears arrive as integer data: GELU as the
table of its kernel over the whole input domain, Softmax as the table of its
exponentials plus the row constants, LayerNorm as its per-channel dyadic affine.

| op          | inputs        | computes                                                    |
|-------------|---------------|-------------------------------------------------------------|
| quantize    | x (float)     | ``clamp(floor(x / scale + 1/2), lo, hi)``                    |
| linear      | x             | ``x W^T + b`` (int8 W, int32 b, int32 accumulator)          |
| matmul      | a, b          | ``a @ b`` (int32 accumulator)                               |
| requantize  | x [, r]       | ``clamp(R(x; m, e) + R(r; residual_m, residual_e), lo, hi)`` |
| lookup      | x             | ``table[x - lo]``                                           |
| softmax     | x             | rows: exponentials from ``exp_table``, one division per row |
| layernorm   | x             | rows: integer mean, variance, isqrt; per-channel affine     |
| sum         | x             | ``sum`` over ``axis``, declared ``bits`` wide               |
| reshape, transpose, take, slice, concat, broadcast, roll, pad, where | index moves |
| dequantize  | x             | ``x * scale`` (float32): the logits                         |

``R(v; m, e) = floor((v m + 2^(e-1)) / 2^e)``. Shapes: ``reshape`` takes ``-1`` for the
batch; ``broadcast`` expands a constant of batch 1 to the batch of its second input.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..arith import declare
from ..quant.frozen import KERNEL_OPS
from ..quant.integer import linear_int, matmul_int, quantize_input, requantize_sum

OPS: dict[str, Callable[..., torch.Tensor]] = {}


def as_value(t: torch.Tensor) -> torch.Tensor:
    """A stored tensor as a value between nodes: integers widen to int64 (stored int8
    constants would otherwise keep int8 through products with 0-dim int64 tensors)."""
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        return t
    return t.to(torch.int64)


def op(name: str):
    def register(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        OPS[name] = fn
        return fn
    return register


@op("quantize")
def _quantize(x, *, scale, lo, hi):
    return quantize_input(x, scale, lo, hi)


@op("linear")
def _linear(x, *, weight, bias=None, in_bits, weight_bits):
    return linear_int(x, weight, bias, in_bits, weight_bits)


@op("matmul")
def _matmul(a, b, *, a_bits, b_bits, a_unsigned=False):
    return matmul_int(a, b, a_bits, b_bits, a_unsigned)


@op("requantize")
def _requantize(x, residual=None, *, m, e, lo, hi, residual_m=None, residual_e=None):
    return requantize_sum(x, m, e, lo, hi, residual, residual_m, residual_e)


OPS.update(KERNEL_OPS)  # lookup, softmax, layernorm: the eval-mode model's functions


@op("sum")
def _sum(x, *, axis, bits):
    return declare(x.sum(dim=axis), bits, "sum")


@op("reshape")
def _reshape(x, *, shape):
    return x.reshape(shape)


@op("transpose")
def _transpose(x, *, perm):
    return x.permute(perm)


@op("take")
def _take(x, *, axis, index):
    return x.select(axis, index)


@op("slice")
def _slice(x, *, axis, start, end):
    return x.narrow(axis, start, end - start)


@op("concat")
def _concat(*xs, axis):
    return torch.cat([x.to(torch.int64) for x in xs], dim=axis)


@op("broadcast")
def _broadcast(c, like):
    return c.expand(like.shape[0], *c.shape[1:])


@op("roll")
def _roll(x, *, shifts, dims, sizes):
    return torch.roll(x, shifts=shifts, dims=dims)


@op("pad")
def _pad(x, *, pads):
    """Zero padding; ``pads`` holds ``(before, after)`` per dimension, first to last."""
    flat = [p for before_after in reversed(pads) for p in before_after]
    return F.pad(x, flat)


@op("where")
def _where(x, cond, *, fill):
    return torch.where(cond, torch.full_like(x, fill), x)


@op("dequantize")
def _dequantize(x, *, scale):
    return x.to(torch.float32) * scale
