"""I-BERT's integer approximations (Kim et al., ICML 2021): i-exp softmax, i-GELU and
LayerNorm with a 32-bit variance.

**i-exp.** For ``d <= 0`` at scale ``s``, write ``x = -k ln2 + r`` with
``r in (-ln2, 0]``; then ``e^x = 2^-k e^r`` and ``e^r ~ a r^2 + 0.96963238 r + 1``
(I-BERT's second-order fit, ``a = 0.35815147``), written ``a (r (r + b) + c)`` with
``b = 0.96963238 / a, c = 1 / a`` so that one integer multiply remains:

    x0 = floor(-0.6931 / s)               the integer standing for -ln 2 (< 0)
    d  = max(d, n * x0);  k = floor(d / x0);  r = d - k * x0      x0 < r <= 0
    z  = r * (r + floor(b / s)) + floor(c / s^2)                   ~ e^r / (a s^2)
    out = z << (n - k)                                            scale a s^2 / 2^n

I-BERT's ``n = 30`` is the default, as in its code; since ``z ~ 2.8 / s^2`` the result
needs ``bits(2.8 / s^2) + 31`` bits: int64 for every practical scale (the declared width
says so). ``ibert_n_K`` with a smaller ``K`` trades the smallest representable value
``2^-K`` for width.

**Softmax**: ``d = q - max(q)``, i-exp, then, as I-BERT does with a 16-bit QuantAct,
requantize the exponentials to 16 bits at scale ``2^-15`` (``e^0 = 1`` becomes
``2^15``), and :func:`.rows.normalize_rows` with I-BERT's numerator ``N = 2^32``: the
row sum stays below ``C * 2^15`` and the product within 34 bits.

**i-GELU.** ``GELU(x) = x/2 (1 + erf(x / sqrt 2))`` with
``erf(u) ~ sign(u) [a (min(|u|, -b) + b)^2 + 1]``, ``a = -0.2888, b = -1.769``,
``sqrt 2 = 1.4142``. With ``s_e = s / 1.4142``, ``b_int = floor(b / s_e)``,
``c_int = floor(1 / (a s_e^2))``:

    L   = sign(q) * ((min(|q|, -b_int) + b_int)^2 + c_int)   erf at scale a s_e^2
    L   = floor(L / 2^n)                                     scale a s_e^2 2^n
    out = requantize(q * (L + floor(1 / (a s_e^2 2^n))))     scale s a s_e^2 2^n / 2

I-BERT fixes ``n = 14`` for its 32-bit GELU inputs; at 8-bit input scales that shift
flattens the erf term (tests/test_error_bounds.py measures it). The default
``n = auto`` picks the smallest shift that keeps ``q * (L + one)`` within 32 bits for the
given input bits and scale; ``ibert_n_14`` reproduces I-BERT's constant.

**LayerNorm**: :func:`.rows.layernorm_core` with the smallest variance shift ``k`` that
keeps ``sum (y >> k)^2`` within 32 bits (I-BERT shifts ``y`` for the same reason; here
the shift is fixed from the input width and row length instead of grown during
training), followed by the same per-channel affine as I-LayerNorm.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..arith import (declare, dyadic, floor_div, horner, mantissa_bits_for, requantize,
                     signed_bits)
from .base import REQUANT_COST, Approx, Kernel, Param, non_negative_int, plus, positive_int
from .ivit import IntLayerNormKernel
from .registry import register
from .rows import NUMERATOR_IBERT, SoftmaxKernel, variance_shift_for_32_bits

EXP_COEF = (0.35815147, 0.96963238, 1.0)
LN2 = 0.6931
GELU_ERF_A, GELU_ERF_B = -0.2888, -1.769
SQRT2 = 1.4142

I_EXP_COST = dict(cmp=1, div=1, mul=3, add=4, shift=1)


EXP_REQUANT_BITS = 16
MAX_EXP_BITS = 55


class IExp:
    """i-exp constants for one input scale; ``__call__`` is the integer map."""

    def __init__(self, scale: float, n: int) -> None:
        a, b, c = EXP_COEF
        self.n = n
        self.x0 = math.floor(-LN2 / scale)
        self.b = math.floor(b / a / scale)
        self.c = math.floor(c / a / scale ** 2)
        self.scale = a * scale ** 2 / 2.0 ** n
        r = -self.x0 - 1
        self.z_max = max(self.c, r * r - self.b * r + self.c)
        if self.bits > MAX_EXP_BITS:
            fits = n - self.bits + MAX_EXP_BITS
            raise ValueError(
                f"i-exp with n={n} needs {self.bits}-bit results at input scale {scale:g}; "
                f"use n <= {fits} (name 'ibert_n_{fits}')"
            )

    @property
    def bits(self) -> int:
        return signed_bits(self.out_max)

    @property
    def out_max(self) -> int:
        return self.z_max << self.n

    def __call__(self, d: torch.Tensor, what: str) -> torch.Tensor:
        d = torch.maximum(d, torch.full_like(d, self.n * self.x0))
        k = floor_div(-d, -self.x0)
        r = d - k * self.x0
        z = horner(r, [self.c, self.b, 1], -self.x0 - 1, f"{what}.poly")
        return declare(z << (self.n - k), signed_bits(self.out_max), f"{what}.out")


class IExpKernel(Kernel):
    def __init__(self, n: int, **quant: Any) -> None:
        super().__init__("exp", **quant)
        self.exp = IExp(self.in_scale, n)
        self.m, self.e = self.output_multiplier(self.exp.scale, self.exp.bits)

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        return self.finish(self.exp(q, "exp"), self.exp.bits, self.m, self.e)

    def counts(self) -> dict[str, Any]:
        return plus(I_EXP_COST, REQUANT_COST)


class IBertSoftmaxKernel(SoftmaxKernel):
    numerator = NUMERATOR_IBERT
    e_max = 1 << (EXP_REQUANT_BITS - 1)

    def __init__(self, n: int, **quant: Any) -> None:
        super().__init__(**quant)
        self.exp = IExp(self.in_scale, n)
        self.exp_m, self.exp_e = dyadic(self.exp.scale * 2.0 ** (EXP_REQUANT_BITS - 1),
                                        mantissa_bits_for(self.exp.bits))

    def exponentials(self, d: torch.Tensor) -> torch.Tensor:
        e = requantize(self.exp(d, "softmax.exp"), self.exp_m, self.exp_e, self.exp.bits,
                       "softmax.exp16")
        return e.clamp_max(self.e_max)

    def remedy(self, length: int) -> str:
        return "rows this long are beyond I-BERT's 2^32 numerator"

    def counts(self) -> dict[str, Any]:
        row = dict(cmp=1, add=2, mul=1)
        return dict(plus(I_EXP_COST, REQUANT_COST, row, REQUANT_COST), per_row=dict(div=1))


class IGeluKernel(Kernel):
    def __init__(self, n: int | str, **quant: Any) -> None:
        super().__init__("gelu", **quant)
        s_erf = self.in_scale / SQRT2
        self.b = math.floor(GELU_ERF_B / s_erf)
        self.c = math.floor(1.0 / (GELU_ERF_A * s_erf ** 2))
        self.erf_max = max(self.b * self.b + self.c, -self.c)
        self.n = self._auto_shift(s_erf) if n == "auto" else int(n)
        erf_scale = GELU_ERF_A * s_erf ** 2 * 2.0 ** self.n
        self.one = math.floor(1.0 / erf_scale)
        self.m, self.e = self.output_multiplier(self.in_scale * erf_scale / 2, self.product_bits)

    def _sum_max(self, n: int, s_erf: float) -> int:
        return (self.erf_max >> n) + 1 + abs(math.floor(1.0 / (GELU_ERF_A * s_erf ** 2 * 2.0 ** n)))

    def _auto_shift(self, s_erf: float) -> int:
        n = 0
        while signed_bits((1 << (self.in_bits - 1)) * self._sum_max(n, s_erf)) > 32:
            n += 1
        return n

    @property
    def product_bits(self) -> int:
        return signed_bits((1 << (self.in_bits - 1)) * ((self.erf_max >> self.n) + 1 + abs(self.one)))

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        clipped = torch.minimum(q.abs(), torch.full_like(q, -self.b))
        square = horner(clipped + self.b, [self.c, 0, 1], -self.b, "gelu.erf")
        erf = declare(torch.sign(q) * square, signed_bits(self.erf_max), "gelu.erf.signed")
        y = declare(q * ((erf >> self.n) + self.one), self.product_bits, "gelu.product")
        return self.finish(y, self.product_bits, self.m, self.e)

    def counts(self) -> dict[str, Any]:
        erf = dict(cmp=2, add=2, mul=2, shift=1)  # |q|, min, +b, square, +c, sign, >> n
        return plus(erf, dict(add=1, mul=1), REQUANT_COST)


class IBertLayerNormKernel(IntLayerNormKernel):
    def var_shift(self) -> int:
        return variance_shift_for_32_bits(self.in_bits, self.dim)

    def counts(self) -> dict[str, Any]:
        counts = super().counts()
        return dict(counts, shift=counts["shift"] + 1)


def gelu_shift(text: str) -> int | str:
    return "auto" if text == "auto" else non_negative_int(text)


class _IBertBase(Approx):
    family = "ibert"


@register
class IBertExp(_IBertBase):
    op = "exp"
    summary = "I-BERT i-exp: range reduction by ln 2, second-order polynomial on the rest"
    params = {"n": Param(30, positive_int, "clamp exponent: values below 2^-n become 0")}

    kernel = IExpKernel


@register
class IBertSoftmax(_IBertBase):
    op = "softmax"
    summary = "I-BERT softmax: i-exp, integer row sum, numerator 2^32"
    params = {"n": Param(30, positive_int, "i-exp clamp exponent")}

    kernel = IBertSoftmaxKernel


@register
class IBertGelu(_IBertBase):
    op = "gelu"
    summary = "I-BERT i-GELU: second-order polynomial erf with clipping"
    params = {"n": Param("auto", gelu_shift,
                         "erf right shift: 'auto' (fits 32 bits) or an integer; I-BERT used 14")}

    kernel = IGeluKernel


@register
class IBertLayerNorm(_IBertBase):
    op = "layernorm"
    summary = "I-BERT LayerNorm: variance of (x - mean) >> k within 32 bits, Newton isqrt"

    kernel = IBertLayerNormKernel
