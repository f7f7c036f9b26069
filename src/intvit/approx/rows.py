"""Row-wise integer building blocks shared by several families.

**Normalizing a row of exponentials** (Shiftmax, I-BERT softmax, ppoly softmax).
Given non-negative integers ``e_i`` of one row with sum ``S > 0``:

    factor = floor(N / S)          one integer division per row
    p_i    = e_i * factor          ~ (e_i / S) * N,  0 <= p_i <= N

``N = 2^31 - 1`` (I-ViT) keeps ``p_i`` within 32 signed bits; ``N = 2^32`` (I-BERT)
needs 34. ``p_i`` has scale ``1/N``, approximated by ``2^-B`` for ``N ~ 2^B`` (relative
error below ``2^-31``), and the kernel's output stage requantizes it.

**Integer LayerNorm** (I-ViT and I-BERT). For a row ``q`` of ``C`` signed ``b``-bit
integers and a variance shift ``k >= 0``:

    mean   = round_div(sum q, C)                  b-bit
    y      = q - mean                             |y| <= 2^b - 1, b+1 bits
    ys     = floor(y / 2^k)
    var    = sum ys^2                             <= C * Y^2,  Y = max |ys|
    std    = max(isqrt(var), 1)                   exact floor(sqrt(var))
    factor = floor((2^31 - 1) / std)              one division per row
    z      = floor(ys * factor / 2)               ~ ys / std * 2^30

Because ``var >= ys_i^2`` we have ``std >= |ys_i|``, so ``|ys * factor| <= 2^31 - 1``:
the product fits 32 signed bits whatever the input. ``z`` has real value
``(x - mean) / sigma * 2^30 / sqrt(C)``, i.e. the normalized row at scale
``sqrt(C) / 2^30`` (the float eps is dropped: var = 0 rows give ``z = 0``).
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from typing import Any

import torch

from ..arith import declare, floor_div, isqrt, requantize, round_div, signed_bits
from .base import MAX_TABLE_BITS, Kernel

NUMERATOR_IVIT = (1 << 31) - 1
NUMERATOR_IBERT = 1 << 32


def normalize_rows(e: torch.Tensor, e_max: int, numerator: int, what: str,
                   remedy: str) -> torch.Tensor:
    """``e_i * floor(N / sum_j e_j)`` along the last dimension (``0 <= e_i <= e_max``).

    A row whose largest possible sum reaches ``N`` would get ``factor = 0``; that is an
    error naming ``remedy``, raised before any arithmetic."""
    length = e.shape[-1]
    if e_max * length >= numerator:
        raise ValueError(f"{what}: a row of {length} values up to {e_max} can sum past the "
                         f"numerator {numerator}; {remedy}")
    total = declare(e.sum(dim=-1, keepdim=True), signed_bits(e_max * length), f"{what}.sum")
    factor = floor_div(torch.full_like(total, numerator), total.clamp_min(1))
    return declare(e * factor, signed_bits(numerator), f"{what}.product")


def normalize_softmax(e: torch.Tensor, e_max: int, numerator: int, m: torch.Tensor,
                      shift: torch.Tensor, lo: int, hi: int, remedy: str = "") -> torch.Tensor:
    """Softmax's row stage: :func:`normalize_rows`, then requantize from scale
    ``1 / numerator`` with the pair ``(m, shift)`` and saturate to ``[lo, hi]``."""
    p = normalize_rows(e, e_max, numerator, "softmax", remedy)
    return requantize(p, m, shift, signed_bits(numerator), "softmax").clamp(lo, hi)


def softmax_from_table(q: torch.Tensor, exp_table: torch.Tensor, e_max: int, numerator: int,
                       m: torch.Tensor, shift: torch.Tensor, lo: int, hi: int,
                       remedy: str = "") -> torch.Tensor:
    """Softmax over the last dimension with the exponentials of ``d = q - max(q)`` read
    from ``exp_table`` (entry ``i`` holds ``e^d`` for ``d = i - len + 1``)."""
    d = q - q.max(dim=-1, keepdim=True).values
    e = exp_table[d + (exp_table.shape[0] - 1)]
    return normalize_softmax(e, e_max, numerator, m, shift, lo, hi, remedy)


class SoftmaxKernel(Kernel):
    """Every softmax family: ``d = q - max(q)``, elementwise exponentials of ``d``
    (:meth:`exponentials`, at most ``e_max``), :func:`normalize_rows` with the family's
    ``numerator``, and the output requantization from scale ``1 / numerator``."""

    numerator: int
    e_max: int

    def __init__(self, **quant: Any) -> None:
        super().__init__("softmax", **quant)
        self.m, self.e = self.output_multiplier(2.0 ** (1 - (self.numerator + 1).bit_length()),
                                                signed_bits(self.numerator))

    @abstractmethod
    def exponentials(self, d: torch.Tensor) -> torch.Tensor:
        """Elementwise ``e^d`` as non-negative integers, for ``d <= 0`` of ``in_bits + 1``
        signed bits."""

    @abstractmethod
    def remedy(self, length: int) -> str:
        """What to change when rows of ``length`` cannot be normalized."""

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        d = q - q.max(dim=-1, keepdim=True).values
        return normalize_softmax(self.exponentials(d), self.e_max, self.numerator, self.m,
                                 self.e, *self.out_range, self.remedy(q.shape[-1]))

    def tabulated(self, q: torch.Tensor) -> torch.Tensor:
        if self.in_bits >= MAX_TABLE_BITS:
            return self.compute(q)
        return softmax_from_table(q, self.exp_table, self.e_max, self.numerator, self.m,
                                  self.e, *self.out_range, self.remedy(q.shape[-1]))

    @functools.cached_property
    def exp_table(self) -> torch.Tensor:
        return self.exponentials(torch.arange(1 - (1 << self.in_bits), 1))


def variance_max(in_bits: int, var_shift: int, length: int) -> int:
    """The largest ``var = sum ys^2`` of a row: ``C * Y^2``, ``Y = ceil((2^b - 1) / 2^k)``."""
    y_max = ((1 << in_bits) - 1 + (1 << var_shift) - 1) >> var_shift
    return length * y_max * y_max


def layernorm_core(q: torch.Tensor, in_bits: int, var_shift: int, what: str) -> torch.Tensor:
    """The normalized row ``z`` at scale ``sqrt(C) / 2^30`` (see the module docstring)."""
    length = q.shape[-1]
    half = 1 << (in_bits - 1)
    total = declare(q.sum(dim=-1, keepdim=True), signed_bits(half * length), f"{what}.sum")
    y = declare(q - round_div(total, length), signed_bits(2 * half - 1), f"{what}.centered")
    ys = y >> var_shift
    var_max = variance_max(in_bits, var_shift, length)
    var = declare((ys * ys).sum(dim=-1, keepdim=True), signed_bits(var_max), f"{what}.var")
    std = isqrt(var, var_max.bit_length()).clamp_min(1)
    factor = floor_div(torch.full_like(std, NUMERATOR_IVIT), std)
    return declare(ys * factor, signed_bits(NUMERATOR_IVIT), f"{what}.product") >> 1


def layernorm_int(q: torch.Tensor, in_bits: int, var_shift: int, m: torch.Tensor,
                  shift: torch.Tensor, beta: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Integer LayerNorm with its per-channel affine: :func:`layernorm_core`, then
    ``requantize(z_c, m_c, shift_c) + beta_c`` saturated to ``[lo, hi]``."""
    z = layernorm_core(q, in_bits, var_shift, "layernorm")
    return (requantize(z, m, shift, 32, "layernorm.affine") + beta).clamp(lo, hi)


def variance_shift_for_32_bits(in_bits: int, length: int) -> int:
    """Smallest shift ``k`` with ``C * ceil((2^b - 1) / 2^k)^2 < 2^31`` (I-BERT's rule)."""
    for shift in range(in_bits + 1):
        if variance_max(in_bits, shift, length) < (1 << 31):
            return shift
    raise ValueError(f"a row of {length} elements cannot keep its variance within 32 bits")
