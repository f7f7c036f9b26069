"""Piecewise-polynomial approximation (``ppoly``) of GELU and of exp, with integer
coefficients fitted once per input scale.

**Fit (at prepare time, float64).** The integer input domain ``[lo, hi]`` is cut into
``seg`` segments starting at integer breakpoints ``b_0 = lo < b_1 < ... < b_{S-1}``.
On segment ``i`` the local coordinate is ``t = q - b_i >= 0`` and a polynomial of degree
``deg`` in ``u = t / 2^G`` (``G`` = bit length of the largest ``t``, so ``0 <= u < 1``) is
fitted by least squares to ``f(s * q) * 2^F`` on the segment's integers (``F`` =
``scale-bits``). Coefficient ``k`` is stored as ``round(c_k * 2^(k G))``, rounded once
and kept; nothing is refitted on a forward pass. The extra ``k G`` fraction bits keep
high-order coefficients exact enough when segments span thousands of integers (16-bit
inputs), where rounding ``c_k`` per unit of ``t`` would cost ``t^k / 2`` units.

**Breakpoints.** ``bounds=uniform`` spaces them evenly. ``bounds=opt`` equidistributes
``|f^(deg+1)|^(1/(deg+1))``, the density that minimizes the interpolation error of
degree-``deg`` pieces: segments are short where the function bends.

**Softmax** uses the ppoly exp at ``2^-F`` (saturated to ``F + 1`` bits) and the row
normalization of :mod:`.rows` with ``N = 2^31 - 1``, which needs
``C * (2^(F+1) - 1) < N``; a longer row is an error naming the largest ``F`` that fits.

**Evaluate (integer).**

    i   = #{ j >= 1 : b_j <= q }         segment index, ceil(log2 S) comparisons
    t   = q - b_i                        0 <= t < longest segment
    y   = fixed-point Horner in t >> G   :func:`intvit.arith.horner` with ``shift = G``
    out = requantize(y)                  scale 2^-F -> output scale

For exp the domain is ``[max(lo, -(F+1) ln2 / s), 0]``: below it ``e^x * 2^F < 1/2`` and
the output is 0 (one more comparison). ``backend=float`` evaluates the unrounded float
polynomial instead, as the I-ViT extension did; it is a reference, not integer-only.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from ..arith import horner, horner_bits, quantize, round_half_even
from .base import REQUANT_COST, Approx, Kernel, Param, plus, positive_int
from .registry import register
from .rows import NUMERATOR_IVIT, SoftmaxKernel


def _segment_starts(lo: int, hi: int, segments: int, bounds: str,
                    f: Callable[[np.ndarray], np.ndarray], deg: int) -> np.ndarray:
    points = np.arange(lo, hi + 1)
    if bounds == "uniform" or len(points) <= segments:
        cuts = np.linspace(0, len(points), segments + 1)[:-1]
        return np.unique(lo + np.floor(cuts).astype(np.int64))
    values = f(points.astype(np.float64))
    for _ in range(deg + 1):
        values = np.gradient(values)
    density = np.abs(values) ** (1.0 / (deg + 1))
    density += 1e-3 * density.mean() + 1e-300
    cumulative = np.concatenate([[0.0], np.cumsum(density)])
    targets = np.linspace(0.0, cumulative[-1], segments + 1)[:-1]
    starts = lo + np.searchsorted(cumulative, targets, side="right") - 1
    return np.unique(np.clip(starts, lo, hi))


class PiecewisePoly:
    """A fitted piecewise polynomial of ``f`` on integers ``[lo, hi]`` at scale ``s``."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], scale: float, lo: int,
                 hi: int, segments: int, deg: int, frac_bits: int, bounds: str) -> None:
        def f_int(q: np.ndarray) -> np.ndarray:
            return f(torch.from_numpy(q * scale)).numpy() * 2.0 ** frac_bits

        self.lo, self.hi, self.deg, self.frac_bits = lo, hi, deg, frac_bits
        starts = _segment_starts(lo, hi, segments, bounds, f_int, deg)
        ends = np.append(starts[1:], hi + 1)
        self.t_max = int((ends - starts).max()) - 1
        self.shift = self.t_max.bit_length()
        coeffs = np.zeros((len(starts), deg + 1))
        for i, (start, end) in enumerate(zip(starts, ends)):
            t = np.arange(end - start, dtype=np.float64)
            fit = np.polynomial.polynomial.polyfit(t / 2.0 ** self.shift, f_int(start + t),
                                                   min(deg, len(t) - 1))
            coeffs[i, : len(fit)] = fit
        self.starts = torch.from_numpy(starts.astype(np.int64))
        self.float_coeffs = torch.from_numpy(coeffs)
        self.int_coeffs = round_half_even(self.float_coeffs).to(torch.int64)
        columns = [self.int_coeffs[:, k] for k in range(deg + 1)]
        self.out_bits = horner_bits(columns, self.t_max, self.shift)[-1]

    def locate(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.bucketize(q, self.starts[1:], right=True)
        return index, q - self.starts[index]

    def integer(self, q: torch.Tensor, what: str) -> torch.Tensor:
        index, t = self.locate(q)
        columns = [self.int_coeffs[index, k] for k in range(self.deg + 1)]
        return horner(t, columns, self.t_max, what, self.shift)

    def floating(self, q: torch.Tensor) -> torch.Tensor:
        index, t = self.locate(q)
        t = t.to(torch.float64) / 2.0 ** self.shift
        y = torch.zeros_like(t)
        for k in reversed(range(self.deg + 1)):
            y = y * t + self.float_coeffs[index, k]
        return y


def exp_fit_low(scale: float, in_bits: int, frac_bits: int) -> int:
    """Lowest input whose e^x * 2^F still rounds above zero, within the input range."""
    return max(-(1 << (in_bits - 1)), math.ceil(-(frac_bits + 1) * math.log(2) / scale))


class PPolyKernel(Kernel):
    def __init__(self, op: str, seg: int, deg: int, scale_bits: int, bounds: str,
                 backend: str, **quant: Any) -> None:
        super().__init__(op, **quant)
        self.integer_only = backend == "int"
        lo, hi = self.spec.domain(self.in_bits)
        if op == "exp":
            lo = exp_fit_low(self.in_scale, self.in_bits, scale_bits)
        self.fit = PiecewisePoly(self.spec.reference, self.in_scale, lo, hi, seg, deg,
                                 scale_bits, bounds)
        self.m, self.e = self.output_multiplier(2.0 ** -scale_bits, self.fit.out_bits)

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        if not self.integer_only:
            y = self.fit.floating(q) * 2.0 ** -self.fit.frac_bits
            out = quantize(y, self.out_scale, *self.out_range).to(torch.int64)
        else:
            y = self.fit.integer(q.clamp_min(self.fit.lo), f"{self.op}.ppoly")
            out = self.finish(y, self.fit.out_bits, self.m, self.e)
        return torch.where(q < self.fit.lo, torch.zeros_like(out), out)

    def counts(self) -> dict[str, Any]:
        search = max(1, math.ceil(math.log2(len(self.fit.starts))))
        cutoff = 1 if self.op == "exp" else 0
        poly = dict(cmp=search + cutoff, add=1 + self.fit.deg, mul=self.fit.deg,
                    shift=self.fit.deg)
        return plus(poly, REQUANT_COST)


class PPolySoftmaxKernel(SoftmaxKernel):
    numerator = NUMERATOR_IVIT

    def __init__(self, scale_bits: int, backend: str, **fit: Any) -> None:
        quant = {k: fit.pop(k) for k in ("in_scale", "in_bits", "out_bits", "out_scale")}
        super().__init__(**quant)
        self.integer_only = backend == "int"
        self.exp = PPolyKernel("exp", scale_bits=scale_bits, backend=backend, **fit,
                               in_scale=self.in_scale, in_bits=self.in_bits + 1,
                               out_bits=scale_bits + 1, out_scale=2.0 ** -scale_bits)
        self.e_max = (1 << (scale_bits + 1)) - 1

    def exponentials(self, d: torch.Tensor) -> torch.Tensor:
        return self.exp.compute(d)

    def remedy(self, length: int) -> str:
        fits = max((f for f in range(1, 31) if length * ((1 << (f + 1)) - 1) < self.numerator),
                   default=None)
        return (f"use scale-bits <= {fits} (softmax name 'ppoly_scale-bits_{fits}')"
                if fits else "no scale-bits fits rows this long")

    def counts(self) -> dict[str, Any]:
        row = dict(cmp=1, add=2, mul=1)
        return dict(plus(self.exp.counts(), row, REQUANT_COST), per_row=dict(div=1))


PPOLY_PARAMS = {
    "seg": Param(16, positive_int, "number of segments"),
    "deg": Param(2, positive_int, "polynomial degree per segment"),
    "scale-bits": Param(22, positive_int, "fraction bits F of the coefficients and result"),
    "bounds": Param("uniform", str, "breakpoints: uniform or opt (curvature-equidistributed)",
                    choices=("uniform", "opt")),
    "backend": Param("int", str, "int (integer Horner) or float (float reference)",
                     choices=("int", "float")),
}


class _PPolyBase(Approx):
    family = "ppoly"
    params = PPOLY_PARAMS

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if self.args["scale-bits"] > 30:
            raise ValueError("ppoly scale-bits must be at most 30")


@register
class PPolyExp(_PPolyBase):
    op = "exp"
    summary = "piecewise polynomial e^x with integer coefficients, zero below 2^-(F+1)"

    kernel = partial(PPolyKernel, "exp")


@register
class PPolyGelu(_PPolyBase):
    op = "gelu"
    summary = "piecewise polynomial GELU over the whole input range, integer coefficients"

    kernel = partial(PPolyKernel, "gelu")


@register
class PPolySoftmax(_PPolyBase):
    op = "softmax"
    summary = "softmax with the ppoly exp, integer row sum, one division per row"

    kernel = PPolySoftmaxKernel


