"""I-ViT's integer approximations (Li & Gu, ICCV 2023): Shiftmax, ShiftGELU, I-LayerNorm.

**Shift-exp.** For ``d <= 0`` at scale ``s`` (``x = d * s``), ``e^x = 2^(x log2 e)``:

    p  = d + (d >> 1) - (d >> 4)          ~ d * log2(e)   (1.4375 vs 1.4427)
    x0 = floor(-1 / s)                    the integer standing for -1.0 (< 0)
    p  = max(p, n * x0)                   clamp below at 2^-n
    k  = floor(p / x0)                    integer part, 0 <= k <= n
    r  = p - k * x0                       fraction, x0 < r <= 0
    e  = (r >> 1) - x0                    2^(r s) ~ 1 + r s / 2, in units of s
    out = e << (n - k)                    2^(-k) * 2^(r s), at scale s / 2^n

``e <= |x0|``, so the result needs ``bits(|x0|) + n + 1`` signed bits. Per element: 4
shifts, 4 additions, 1 multiplication, 1 division by the constant ``x0``, 1 comparison.

**Shiftmax** (default ``n = 15``): ``d = q - max(q)``, shift-exp, then the row
normalization of :mod:`.rows` with ``N = 2^31 - 1``. The row sum must stay below
``N`` (``C * |x0| * 2^n < 2^31 - 1``); a row too long for that is an error that names
the largest ``n`` that fits, never a silent clamp as in the original code.

**ShiftGELU** (default ``n = 23``): ``GELU(x) ~ x * sigmoid(1.702 x)``. The input
integers are read at scale ``1.702 s`` and, with ``m = max(q, 0)`` per element,

    sigmoid(z) = e^(z - m) / (e^(z - m) + e^(-m))

so both exponents are ``<= 0``. The paper subtracts the row maximum instead; the
per-element ``m`` gives the same value, keeps GELU elementwise (no dependence on the
neighbours), and never lets a large row maximum underflow the negative inputs. Then

    sig = floor(a * floor((2^31 - 1) / (a + b)) / 2^(32 - sig_bits))   in [0, 2^(sig_bits-1)]
    out = requantize(q * sig)          at scale s * 2^-(sig_bits - 1)

``sig_bits = 8`` is the original code's sigmoid width (7 fraction bits).

**I-LayerNorm**: :func:`.rows.layernorm_core` with no variance shift (the variance may
need more than 32 bits for wide inputs; the declared width says so), then the affine
``gamma, beta`` per channel: ``out_c = requantize(z_c, m_c, e_c) + round(beta_c / s_out)``
with ``m_c * 2^-e_c = gamma_c * sqrt(C) / 2^30 / s_out``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..arith import declare, floor_div, round_half_up, signed_bits
from .base import REQUANT_COST, Approx, Kernel, Param, plus, positive_int
from .registry import register
from .rows import NUMERATOR_IVIT, SoftmaxKernel, layernorm_int

SHIFT_EXP_COST = dict(shift=4, add=4, mul=1, div=1, cmp=1)
GELU_SIGMOID_SCALE = 1.702


def shift_exp(d: torch.Tensor, d_bits: int, x0: int, n: int, what: str) -> torch.Tensor:
    """I-ViT's shift-exp of ``d <= 0`` (``d_bits`` signed bits); scale ``s / 2^n``."""
    d_max = 1 << (d_bits - 1)
    p = declare(d + (d >> 1) - (d >> 4), signed_bits(d_max + d_max // 2 + 1), f"{what}.log2e")
    p = torch.maximum(p, torch.full_like(p, n * x0))
    k = floor_div(-p, -x0)
    r = p - k * x0
    e = (r >> 1) - x0
    return declare(e << (n - k), shift_exp_bits(x0, n), f"{what}.out")


def suggest_n(fits: int) -> str:
    """The remedy named in a too-wide error: the largest ``n`` that fits, if any does."""
    if fits >= 1:
        return f"use n <= {fits} (name 'ivit_n_{fits}')"
    return "no n fits at this input scale: use a larger input scale or another family"


def shift_exp_bits(x0: int, n: int) -> int:
    return signed_bits(-x0 << n)


class ShiftExpKernel(Kernel):
    def __init__(self, n: int, **quant: Any) -> None:
        super().__init__("exp", **quant)
        self.n = n
        self.x0 = math.floor(-1.0 / self.in_scale)
        self.m, self.e = self.output_multiplier(self.in_scale * 2.0 ** -n,
                                                shift_exp_bits(self.x0, n))

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        e = shift_exp(q, self.in_bits, self.x0, self.n, "exp")
        return self.finish(e, shift_exp_bits(self.x0, self.n), self.m, self.e)

    def counts(self) -> dict[str, Any]:
        return plus(SHIFT_EXP_COST, REQUANT_COST)


class ShiftmaxKernel(SoftmaxKernel):
    numerator = NUMERATOR_IVIT

    def __init__(self, n: int, **quant: Any) -> None:
        super().__init__(**quant)
        self.n = n
        self.x0 = math.floor(-1.0 / self.in_scale)
        self.e_max = -self.x0 << self.n

    def exponentials(self, d: torch.Tensor) -> torch.Tensor:
        return shift_exp(d, self.in_bits + 1, self.x0, self.n, "softmax.exp")

    def remedy(self, length: int) -> str:
        return suggest_n(self.n - (self.e_max * length).bit_length() + 31)

    def counts(self) -> dict[str, Any]:
        row = dict(cmp=1, add=2, mul=1)  # running max, subtract, sum, scale by factor
        return dict(plus(SHIFT_EXP_COST, row, REQUANT_COST), per_row=dict(div=1))


class ShiftGeluKernel(Kernel):
    def __init__(self, n: int, sig_bits: int, **quant: Any) -> None:
        super().__init__("gelu", **quant)
        self.n = n
        self.sig_bits = sig_bits
        self.x0 = math.floor(-1.0 / (GELU_SIGMOID_SCALE * self.in_scale))
        if (-self.x0 << (n + 1)) >= 1 << 31:
            raise ValueError(f"ShiftGELU with n={n} overflows 32 bits at input scale "
                             f"{self.in_scale:g}; "
                             + suggest_n(30 - (-self.x0).bit_length()))
        self.m, self.e = self.output_multiplier(self.in_scale * 2.0 ** (1 - sig_bits),
                                                self.in_bits + sig_bits)

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        shift = q.clamp_min(0)
        a = shift_exp(q - shift, self.in_bits, self.x0, self.n, "gelu.exp")
        b = shift_exp(-shift, self.in_bits, self.x0, self.n, "gelu.exp")
        total = declare(a + b, signed_bits(-self.x0 << (self.n + 1)), "gelu.sum")
        factor = floor_div(torch.full_like(total, NUMERATOR_IVIT), total)
        sig = declare(a * factor, signed_bits(NUMERATOR_IVIT), "gelu.sigmoid") >> (32 - self.sig_bits)
        y_bits = self.in_bits + self.sig_bits
        y = declare(q * sig, y_bits, "gelu.product")
        return self.finish(y, y_bits, self.m, self.e)

    def counts(self) -> dict[str, Any]:
        exps = plus(SHIFT_EXP_COST, SHIFT_EXP_COST)
        sigmoid = dict(cmp=1, add=2, div=1, mul=2, shift=1)  # max(q,0), a+b, q-m, 1/sum, *, >>
        return plus(exps, sigmoid, REQUANT_COST)


class IntLayerNormKernel(Kernel):
    """I-LayerNorm with a per-channel affine; ``var_shift`` picks the variance width."""

    def __init__(self, dim: int | None = None, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, **quant: Any) -> None:
        super().__init__("layernorm", **quant)
        if dim is None or dim < 1:
            raise ValueError(f"layernorm kernels need dim=C >= 1 (the row length), got {dim}")
        self.dim = dim
        weight = torch.ones(dim, dtype=torch.float64) if weight is None else weight
        bias = torch.zeros(dim, dtype=torch.float64) if bias is None else bias
        for label, t in (("weight", weight), ("bias", bias)):
            if tuple(t.shape) != (dim,):
                raise ValueError(f"layernorm {label} must have shape ({dim},), got "
                                 f"{tuple(t.shape)}")
        weight = weight.detach().to(torch.float64)
        self.m, self.e = self.output_multiplier(weight * math.sqrt(dim) / 2.0 ** 30, 32)
        self.beta = round_half_up(bias.detach().to(torch.float64) / self.out_scale
                                  ).to(torch.int64)

    def var_shift(self) -> int:
        return 0

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        if q.shape[-1] != self.dim:
            raise ValueError(f"layernorm prepared for rows of {self.dim}, got {q.shape[-1]}")
        return layernorm_int(q, self.in_bits, self.var_shift(), self.m, self.e, self.beta,
                             *self.out_range)

    def counts(self) -> dict[str, Any]:
        row = dict(add=4, mul=2, shift=2)  # sum, centre, var sum, square, *factor, shifts
        return dict(plus(row, REQUANT_COST, dict(add=1)), per_row=dict(div=2, sqrt=1))


class _IvitBase(Approx):
    family = "ivit"


@register
class IvitExp(_IvitBase):
    op = "exp"
    summary = "I-ViT shift-exp: e^x = 2^(x log2 e) with shifts, linear 2^r on the fraction"
    params = {"n": Param(15, positive_int, "clamp exponent: values below 2^-n become 0")}

    kernel = ShiftExpKernel


@register
class IvitSoftmax(_IvitBase):
    op = "softmax"
    summary = "I-ViT Shiftmax: shift-exp, integer row sum, one division per row"
    params = {"n": Param(15, positive_int, "shift-exp clamp exponent")}

    kernel = ShiftmaxKernel


@register
class IvitGelu(_IvitBase):
    op = "gelu"
    summary = "I-ViT ShiftGELU: x * sigmoid(1.702 x), sigmoid from two shift-exps"
    params = {
        "n": Param(23, positive_int, "shift-exp clamp exponent"),
        "sig-bits": Param(8, positive_int, "width of the unsigned sigmoid in [0, 1]"),
    }

    kernel = ShiftGeluKernel


@register
class IvitLayerNorm(_IvitBase):
    op = "layernorm"
    summary = "I-ViT I-LayerNorm: integer mean and variance, Newton isqrt, no variance shift"

    kernel = IntLayerNormKernel
