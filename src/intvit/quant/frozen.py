"""A prepared non-linear kernel as integer data: the op that runs it, its tensors and its
integer attributes. The eval-mode model holds this data as buffers on its device and
runs it with :data:`KERNEL_OPS`; the exported program stores the same data in its nodes
and runs the same functions (:mod:`intvit.engine.ops` registers them).

| op        | tensors                         | computes                                        |
|-----------|---------------------------------|-------------------------------------------------|
| lookup    | ``table``                       | ``table[x - lo]`` (GELU, any elementwise kernel) |
| softmax   | ``exp_table``, ``m``, ``e``     | :func:`~intvit.approx.rows.softmax_from_table`   |
| layernorm | ``m``, ``e``, ``beta``          | :func:`~intvit.approx.rows.layernorm_int`        |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..approx.base import MAX_TABLE_BITS, Kernel
from ..approx.ivit import IntLayerNormKernel
from ..approx.rows import SoftmaxKernel, layernorm_int, softmax_from_table
from ..arith import signed_bits


class FreezeError(ValueError):
    """A kernel that cannot be held as integer data (a float reference, or too wide)."""


def compact(t: torch.Tensor) -> torch.Tensor:
    """An integer tensor in the narrowest of int8/int16/int32/int64 that holds it."""
    t = t.detach().to(torch.int64)
    top = int(t.abs().max()) if t.numel() else 0
    for dtype in (torch.int8, torch.int16, torch.int32):
        if signed_bits(top) <= torch.iinfo(dtype).bits:
            return t.to(dtype).contiguous()
    return t.contiguous()


@dataclass
class FrozenKernel:
    op: str
    tensors: dict[str, torch.Tensor]
    attrs: dict[str, Any]


def _elementwise(kernel: Kernel) -> FrozenKernel:
    if kernel.spec.rowwise or kernel.in_bits > MAX_TABLE_BITS:
        raise FreezeError(f"{kernel.op} with {kernel.in_bits}-bit inputs cannot be tabulated")
    lo = kernel.spec.domain(kernel.in_bits)[0]
    return FrozenKernel("lookup", {"table": compact(kernel.table)}, dict(lo=lo,
                                                                          function=kernel.op))


def _softmax(kernel: SoftmaxKernel) -> FrozenKernel:
    if kernel.in_bits >= MAX_TABLE_BITS:
        raise FreezeError(f"softmax with {kernel.in_bits}-bit inputs: its exponentials "
                          f"cannot be tabulated (at most {MAX_TABLE_BITS - 1} bits)")
    lo, hi = kernel.out_range
    tensors = {"exp_table": compact(kernel.exp_table), "m": compact(kernel.m),
               "e": compact(kernel.e)}
    return FrozenKernel("softmax", tensors, dict(e_max=kernel.e_max,
                                                 numerator=kernel.numerator, lo=lo, hi=hi))


def _layernorm(kernel: IntLayerNormKernel) -> FrozenKernel:
    lo, hi = kernel.out_range
    tensors = {"m": compact(kernel.m), "e": compact(kernel.e), "beta": compact(kernel.beta)}
    return FrozenKernel("layernorm", tensors, dict(in_bits=kernel.in_bits,
                                                   var_shift=kernel.var_shift(), lo=lo, hi=hi))


FREEZERS: dict[type, Callable[[Any], FrozenKernel]] = {
    SoftmaxKernel: _softmax,
    IntLayerNormKernel: _layernorm,
}


def freeze_kernel(kernel: Kernel) -> FrozenKernel:
    """The integer data of a prepared kernel (its class's freezer; elementwise: a table)."""
    if not kernel.integer_only:
        raise FreezeError(f"{kernel.op} kernel {type(kernel).__name__} is a float reference, "
                          "not integer-only")
    freeze = next((f for cls, f in FREEZERS.items() if isinstance(kernel, cls)), _elementwise)
    return freeze(kernel)


def lookup_op(x, *, table, lo, function="", approx=""):
    return table.to(torch.int64)[x - lo]


def softmax_op(x, *, exp_table, m, e, e_max, numerator, lo, hi, approx=""):
    return softmax_from_table(x, exp_table.to(torch.int64), e_max, numerator, m, e, lo, hi)


def layernorm_op(x, *, m, e, beta, in_bits, var_shift, lo, hi, approx=""):
    return layernorm_int(x, in_bits, var_shift, m, e, beta.to(torch.int64), lo, hi)


KERNEL_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "lookup": lookup_op, "softmax": softmax_op, "layernorm": layernorm_op}
