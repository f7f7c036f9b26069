"""Bit-exact checks of every integer kernel against slow, plain-Python references.

Each reference below is written from the math stated in the module docstrings of
``intvit.approx`` (ivit.py, ibert.py, ppoly.py, rows.py) and ``intvit.arith``
(dyadic.py for requantization, poly.py for Horner's rule). It uses only Python ints,
loops over elements and rows, and Python's ``//`` / ``>>`` (both floor). Floats appear
only where the docstrings compute a constant from the scale; such constants are
recomputed here from the documented formula and compared with the prepared kernel's
attribute before the integer map is compared element by element.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from fractions import Fraction

import pytest
import torch

from intvit.approx import build

SCALES = [2.0 ** -4, 0.05, 0.2]
INT31 = (1 << 31) - 1  # N of I-ViT (rows.py)
INT32 = 1 << 32  # N of I-BERT (rows.py)


# --------------------------------------------------------------------------------------
# Plain-int primitives (arith/*.py docstrings)
# --------------------------------------------------------------------------------------

def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def signed_bits(max_abs: int) -> int:
    """Signed bits (sign included) holding [-max_abs, max_abs]."""
    return abs(max_abs).bit_length() + 1


def fits_signed(v: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= v <= (1 << (bits - 1)) - 1


def mantissa_bits_for(width: int) -> int:
    """``B = min(31, 63 - W)`` (dyadic.py)."""
    return min(31, 63 - width)


def dyadic(multiplier: float, mantissa_bits: int) -> tuple[int, int]:
    """``M ~= m 2^-e``: frexp, m = round(f 2^B) ties to even, e = B - k, carry on
    |m| = 2^B, reject e < 0, round onto e = 62 below 2^(B-62) (dyadic.py)."""
    frac, k = math.frexp(multiplier)
    m = round(frac * (1 << mantissa_bits))  # exact scaling by a power of two; Python rounds half to even
    e = mantissa_bits - k
    if abs(m) == 1 << mantissa_bits:
        m //= 2
        e -= 1
    assert e >= 0, "multiplier too large for a dyadic pair"
    if e > 62:
        excess = e - 62
        m = (m + (1 << (excess - 1))) >> excess
        e = 62
    return m, e


def requantize(x: int, m: int, e: int) -> int:
    """``floor((x m + 2^(e-1)) / 2^e)`` (round half up); ``e = 0`` is ``x m``."""
    return (x * m + (1 << e) // 2) // (1 << e)


def clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


def round_div(x: int, d: int) -> int:
    """``floor(x / d + 1/2)`` computed as ``floor((x + floor(d/2)) / d)`` (rounding.py)."""
    return (x + d // 2) // d


def sign(v: int) -> int:
    return (v > 0) - (v < 0)


def as_int(t) -> int:
    return int(t) if not isinstance(t, torch.Tensor) else int(t.item())


def check_pair(kernel_m, kernel_e, multiplier: float, width: int) -> tuple[int, int]:
    """Recompute the dyadic pair for ``multiplier`` applied to ``width``-bit values and
    assert the kernel holds the same one; also the documented accuracy of the pair."""
    bits = mantissa_bits_for(width)
    m, e = dyadic(multiplier, bits)
    assert (as_int(kernel_m), as_int(kernel_e)) == (m, e), (multiplier, width)
    if multiplier != 0 and e < 62:
        assert (1 << (bits - 1)) <= abs(m) < (1 << bits)
        assert abs(m * 2.0 ** -e - multiplier) <= abs(multiplier) * 2.0 ** -bits
    return m, e


def output(kernel, y: int, m: int, e: int) -> int:
    """The shared output stage: requantize, then saturate to the output range."""
    lo, hi = kernel.out_range
    return clamp(requantize(y, m, e), lo, hi)


def check_out_range(kernel) -> None:
    signed = kernel.op in ("gelu", "layernorm")
    assert kernel.out_range == qrange(kernel.out_bits, signed)


def assert_same(got: torch.Tensor, want, inputs) -> None:
    assert got.dtype == torch.int64
    got_list = got.tolist()
    if got_list != want:
        flat_g, flat_w, flat_i = _flatten(got_list), _flatten(want), _flatten(inputs)
        bad = [i for i, (g, w) in enumerate(zip(flat_g, flat_w)) if g != w]
        assert len(flat_g) == len(flat_w), "shape mismatch"
        i = bad[0]
        pytest.fail(f"{len(bad)} mismatches; first: input {flat_i[i] if i < len(flat_i) else '?'} "
                    f"-> kernel {flat_g[i]}, reference {flat_w[i]}")


def _flatten(x):
    if isinstance(x, list):
        return [v for item in x for v in _flatten(item)]
    return [x]


def assert_nontrivial(values, at_least: int = 3) -> None:
    """Guard against vacuous comparisons (every output saturated or zero)."""
    assert len(set(_flatten(values))) >= at_least


# --------------------------------------------------------------------------------------
# I-ViT (ivit.py)
# --------------------------------------------------------------------------------------

def shift_exp(d: int, x0: int, n: int) -> int:
    """I-ViT shift-exp of d <= 0 at scale s / 2^n."""
    assert d <= 0
    p = d + (d >> 1) - (d >> 4)
    p = max(p, n * x0)
    k = p // x0  # floor(p / x0)
    r = p - k * x0
    assert 0 <= k <= n and x0 < r <= 0
    e = (r >> 1) - x0
    assert 0 < e <= -x0
    out = e << (n - k)
    assert fits_signed(out, (-x0).bit_length() + n + 1)
    return out


def ivit_x0(scale: float) -> int:
    return math.floor(-1 / scale)


def ref_ivit_exp(kernel, qs):
    s, n = kernel.in_scale, kernel.n
    x0 = ivit_x0(s)
    assert x0 == kernel.x0 < 0
    width = (-x0).bit_length() + n + 1  # "bits(|x0|) + n + 1 signed bits"
    m, e = check_pair(kernel.m, kernel.e, s * 2.0 ** -n / kernel.out_scale, width)
    return [output(kernel, shift_exp(q, x0, n), m, e) for q in qs]


def normalize(es: list[int], numerator: int) -> list[int]:
    total = sum(es)
    assert total > 0
    factor = numerator // total
    ps = [v * factor for v in es]
    assert all(0 <= p <= numerator for p in ps)
    return ps


def ref_shiftmax(kernel, rows):
    s, n = kernel.in_scale, kernel.n
    x0 = ivit_x0(s)
    assert x0 == kernel.x0
    m, e = check_pair(kernel.m, kernel.e, 2.0 ** -31 / kernel.out_scale, 32)
    out = []
    for row in rows:
        assert len(row) * (-x0 << n) < INT31  # the documented row-sum condition
        mx = max(row)
        ps = normalize([shift_exp(q - mx, x0, n) for q in row], INT31)
        out.append([output(kernel, p, m, e) for p in ps])
    return out


def ref_shift_gelu(kernel, qs):
    s, n, sig_bits = kernel.in_scale, kernel.n, kernel.sig_bits
    x0 = math.floor(-1 / (1.702 * s))
    assert x0 == kernel.x0
    y_bits = kernel.in_bits + sig_bits
    m, e = check_pair(kernel.m, kernel.e, s * 2.0 ** (1 - sig_bits) / kernel.out_scale, y_bits)
    out = []
    for q in qs:
        mq = max(q, 0)
        a = shift_exp(q - mq, x0, n)
        b = shift_exp(-mq, x0, n)
        sig = (a * (INT31 // (a + b))) >> (32 - sig_bits)
        assert 0 <= sig <= 1 << (sig_bits - 1)
        y = q * sig
        assert fits_signed(y, y_bits)
        out.append(output(kernel, y, m, e))
    return out


# --------------------------------------------------------------------------------------
# LayerNorm (rows.py, ivit.py, ibert.py)
# --------------------------------------------------------------------------------------

def ibert_var_shift(in_bits: int, length: int) -> int:
    """Smallest k with C * ceil((2^b - 1) / 2^k)^2 < 2^31."""
    k = 0
    while length * (-(-((1 << in_bits) - 1) // (1 << k))) ** 2 >= 1 << 31:
        k += 1
    return k


def ref_layernorm(kernel, rows, weight, bias, var_shift: int, var_bits: int | None = None):
    C = kernel.dim
    assert kernel.var_shift() == var_shift
    w = [1.0] * C if weight is None else [float(v) for v in weight.tolist()]
    bvals = [0.0] * C if bias is None else [float(v) for v in bias.tolist()]
    pairs = [check_pair(kernel.m[c], kernel.e[c], w[c] * math.sqrt(C) / 2.0 ** 30
                        / kernel.out_scale, 32) for c in range(C)]
    beta = [math.floor(bvals[c] / kernel.out_scale + 0.5) for c in range(C)]
    assert kernel.beta.tolist() == beta
    lo, hi = kernel.out_range
    out = []
    for row in rows:
        assert len(row) == C
        mean = round_div(sum(row), C)
        ys = [(q - mean) >> var_shift for q in row]
        var = sum(v * v for v in ys)
        if var_bits is not None:
            assert fits_signed(var, var_bits)
        std = max(math.isqrt(var), 1)
        factor = INT31 // std
        zs = []
        for v in ys:
            assert fits_signed(v * factor, 32)  # the documented 32-bit product
            zs.append((v * factor) >> 1)
        out.append([clamp(requantize(z, *pairs[c]) + beta[c], lo, hi)
                    for c, z in enumerate(zs)])
    return out


# --------------------------------------------------------------------------------------
# I-BERT (ibert.py)
# --------------------------------------------------------------------------------------

EXP_A, EXP_B, EXP_C = 0.35815147, 0.96963238 / 0.35815147, 1.0 / 0.35815147


def iexp_constants(iexp, scale: float) -> tuple[int, int, int, int]:
    """Recompute x0, floor(b/s), floor(c/s^2) and the result width; compare."""
    n = iexp.n
    x0 = math.floor(-0.6931 / scale)
    b = math.floor(EXP_B / scale)
    c = math.floor(EXP_C / scale ** 2)
    assert (iexp.x0, iexp.b, iexp.c) == (x0, b, c)
    assert x0 < 0
    z_max = max(r * (r + b) + c for r in range(x0 + 1, 1))  # exhaustive over x0 < r <= 0
    width = signed_bits(z_max << n)
    assert iexp.bits == width <= 55
    assert iexp.scale == EXP_A * scale ** 2 / 2.0 ** n
    return x0, b, c, width


def iexp(d: int, x0: int, b: int, c: int, n: int) -> int:
    assert d <= 0
    d = max(d, n * x0)
    k = d // x0
    r = d - k * x0
    assert 0 <= k <= n and x0 < r <= 0
    z = r * (r + b) + c
    assert z > 0
    return z << (n - k)


def ref_ibert_exp(kernel, qs):
    x0, b, c, width = iexp_constants(kernel.exp, kernel.in_scale)
    n = kernel.exp.n
    m, e = check_pair(kernel.m, kernel.e, kernel.exp.scale / kernel.out_scale, width)
    return [output(kernel, iexp(q, x0, b, c, n), m, e) for q in qs]


def ref_ibert_softmax(kernel, rows, stats=None):
    x0, b, c, width = iexp_constants(kernel.exp, kernel.in_scale)
    n = kernel.exp.n
    m16, e16 = check_pair(kernel.exp_m, kernel.exp_e, kernel.exp.scale * 2.0 ** 15, width)
    m, e = check_pair(kernel.m, kernel.e, 2.0 ** -32 / kernel.out_scale, 34)
    out = []
    for row in rows:
        mx = max(row)
        es = []
        for q in row:
            v = requantize(iexp(q - mx, x0, b, c, n), m16, e16)  # 16 bits at scale 2^-15
            assert v >= 0
            if stats is not None and v > 1 << 15:
                stats["clamped"] = stats.get("clamped", 0) + 1
            es.append(min(v, 1 << 15))
        assert len(row) * (1 << 15) < INT32
        out.append([output(kernel, p, m, e) for p in normalize(es, INT32)])
    return out


GELU_A, GELU_B, SQRT2 = -0.2888, -1.769, 1.4142


def igelu_erf(q: int, b: int, c: int) -> int:
    """L = sign(q) ((min(|q|, -b) + b)^2 + c), erf at scale a s_e^2."""
    return sign(q) * ((min(abs(q), -b) + b) ** 2 + c)


def igelu_one(s_e: float, n: int) -> int:
    return math.floor(1.0 / (GELU_A * s_e ** 2 * 2.0 ** n))


def igelu_max_product(in_bits: int, b: int, c: int, s_e: float, n: int) -> int:
    """Largest |q (floor(L / 2^n) + one)| over the whole input domain (exhaustive)."""
    one = igelu_one(s_e, n)
    lo, hi = qrange(in_bits)
    # L(q) saturates once |q| >= -b: evaluate distinct |q| once, keep both signs.
    best = 0
    for mag in range(0, min(max(-lo, hi), -b) + 1):
        for q in (mag, -mag):
            if lo <= q <= hi:
                best = max(best, abs(q * ((igelu_erf(q, b, c) >> n) + one)))
    for q in (lo, hi):  # the saturated tail is linear in q: its extremes are the ends
        best = max(best, abs(q * ((igelu_erf(q, b, c) >> n) + one)))
    return best


def ref_igelu(kernel, qs, n_expected=None):
    s = kernel.in_scale
    s_e = s / SQRT2
    b = math.floor(GELU_B / s_e)
    c = math.floor(1.0 / (GELU_A * s_e ** 2))
    assert (kernel.b, kernel.c) == (b, c)
    n = kernel.n
    if n_expected is not None:
        assert n == n_expected
    one = igelu_one(s_e, n)
    assert kernel.one == one
    erf_scale = GELU_A * s_e ** 2 * 2.0 ** n
    width = kernel.product_bits
    assert width <= 32 or n_expected is not None
    m, e = check_pair(kernel.m, kernel.e, s * erf_scale / 2 / kernel.out_scale, width)
    out = []
    for q in qs:
        y = q * ((igelu_erf(q, b, c) >> n) + one)
        assert fits_signed(y, width)
        out.append(output(kernel, y, m, e))
    return out


# --------------------------------------------------------------------------------------
# ppoly (ppoly.py, arith/poly.py)
# --------------------------------------------------------------------------------------

def ppoly_constants(kernel, bounds: str, segments: int, frac_bits: int):
    """Recompute the documented structure of the fit; return starts, coeffs, G, lo."""
    fit = kernel.fit
    in_lo, in_hi = qrange(kernel.in_bits)
    if kernel.op == "exp":
        lo = max(in_lo, math.ceil(-(frac_bits + 1) * math.log(2) / kernel.in_scale))
        hi = 0
    else:
        lo, hi = in_lo, in_hi
    assert (fit.lo, fit.hi) == (lo, hi)
    starts = [int(v) for v in fit.starts.tolist()]
    assert starts[0] == lo and all(a < b for a, b in zip(starts, starts[1:]))
    assert starts[-1] <= hi and len(starts) <= segments
    if bounds == "uniform":
        count = hi - lo + 1
        assert starts == sorted({lo + (i * count) // segments for i in range(segments)})
    ends = starts[1:] + [hi + 1]
    t_max = max(e - s for s, e in zip(starts, ends)) - 1
    G = t_max.bit_length()  # the bits of the largest local coordinate t: 0 <= t / 2^G < 1
    assert fit.shift == G and fit.t_max == t_max
    coeffs = [[int(v) for v in row] for row in fit.int_coeffs.tolist()]
    floats = fit.float_coeffs.tolist()
    assert len(coeffs) == len(starts)
    for row_i, row_f in zip(coeffs, floats):
        assert row_i == [round(v) for v in row_f]  # rounded once
    # Width of the Horner result (arith/poly.py): |acc_d| <= C_d,
    # |acc_k| <= ceil(|acc_{k+1}| T / 2^g) + C_k.
    deg = len(coeffs[0]) - 1
    col_max = [max(abs(row[k]) for row in coeffs) for k in range(deg + 1)]
    bound = col_max[deg]
    for k in reversed(range(deg)):
        bound = -((-bound * t_max) // (1 << G)) + col_max[k]
    width = signed_bits(bound)
    assert fit.out_bits == width
    return starts, coeffs, G, lo, width


def ppoly_eval(q: int, starts, coeffs, G: int, t_max: int | None = None) -> int:
    i = sum(1 for j in range(1, len(starts)) if starts[j] <= q)  # #{j >= 1 : b_j <= q}
    t = q - starts[i]
    assert t >= 0 and (t_max is None or t <= t_max)
    acc = coeffs[i][-1]
    for ck in reversed(coeffs[i][:-1]):
        acc = ((acc * t) >> G) + ck  # floor(acc t / 2^G) + c_k
    return acc


def ref_ppoly(kernel, qs, bounds="uniform", segments=16, frac_bits=22):
    starts, coeffs, G, lo, width = ppoly_constants(kernel, bounds, segments, frac_bits)
    m, e = check_pair(kernel.m, kernel.e, 2.0 ** -frac_bits / kernel.out_scale, width)
    out = []
    for q in qs:
        if q < lo:
            assert kernel.op == "exp"
            out.append(0)
            continue
        y = ppoly_eval(q, starts, coeffs, G)
        assert fits_signed(y, width)
        out.append(output(kernel, y, m, e))
    return out


def ref_ppoly_softmax(kernel, rows, bounds="uniform", segments=16, frac_bits=22):
    exp = kernel.exp
    assert exp.op == "exp" and exp.in_bits == kernel.in_bits + 1
    assert exp.in_scale == kernel.in_scale and exp.out_scale == 2.0 ** -frac_bits
    assert exp.out_range == (0, (1 << (frac_bits + 1)) - 1)  # saturated to F + 1 bits
    m, e = check_pair(kernel.m, kernel.e, 2.0 ** -31 / kernel.out_scale, 32)
    out = []
    for row in rows:
        mx = max(row)
        es = ref_ppoly(exp, [q - mx for q in row], bounds, segments, frac_bits)
        out.append([output(kernel, p, m, e) for p in normalize(es, INT31)])
    return out


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

def all_inputs(op: str, bits: int = 8) -> list[int]:
    lo, hi = qrange(bits)
    return list(range(lo, 1 if op == "exp" else hi + 1))


def sample_inputs(op: str, bits: int, seed: int, count: int = 1500, extra=()) -> list[int]:
    lo, hi = qrange(bits)
    hi = 0 if op == "exp" else hi
    rng = random.Random(seed)
    near_zero = list(range(max(lo, -300), min(hi, 300) + 1))
    values = {lo, lo + 1, hi, hi - 1, 0, -1, *near_zero, *extra}
    values.update(rng.randint(lo, hi) for _ in range(count))
    return sorted(v for v in values if lo <= v <= hi)


def random_rows(seed: int, length: int, count: int, bits: int = 8) -> list[list[int]]:
    """Full-range rows, narrow rows near a random centre, and peaked rows."""
    lo, hi = qrange(bits)
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        if i % 3 == 0:
            row = [rng.randint(lo, hi) for _ in range(length)]
        elif i % 3 == 1:
            centre = rng.randint(lo, hi)
            spread = rng.choice([2, 10, 40]) << (bits - 8)
            row = [clamp(centre + rng.randint(-spread, spread), lo, hi) for _ in range(length)]
        else:
            top = rng.randint(lo // 2, hi)
            row = [clamp(top - int(rng.expovariate(1 / (8 << (bits - 8)))), lo, hi)
                   for _ in range(length)]
        rows.append(row)
    return rows


def edge_rows(length: int, bits: int = 8) -> list[list[int]]:
    lo, hi = qrange(bits)
    rows = [[0] * length, [lo] * length, [hi] * length, [7] * length]
    if length > 1:
        one_hot = [lo] * length
        one_hot[length // 2] = hi
        rows += [one_hot,
                 [hi] * (length - 1) + [lo],
                 [lo if i % 2 else hi for i in range(length)],
                 [0] * (length - 1) + [1]]
    return rows


def run_rows(kernel, rows):
    return kernel(torch.tensor(rows, dtype=torch.int64))


def parse_suggestion(err: pytest.ExceptionInfo, pattern: str) -> int:
    match = re.search(pattern, str(err.value))
    assert match, str(err.value)
    return int(match.group(1))


# --------------------------------------------------------------------------------------
# Dyadic pairs and requantization (the shared output stage)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("multiplier", [1.0, 0.75, -0.3, 2.0 ** -40, 3.3e-21, 1e-30,
                                        1 - 2.0 ** -40, 0.0, 123456.789])
@pytest.mark.parametrize("bits", [31, 22, 8])
def test_dyadic_and_requantize_match_reference(multiplier, bits):
    from intvit.arith import dyadic as k_dyadic, requantize as k_requantize
    if abs(multiplier) >= 2 ** bits:  # documented: multipliers of 2^B or more are rejected
        with pytest.raises(ValueError):
            k_dyadic(multiplier, bits)
        with pytest.raises(AssertionError):
            dyadic(multiplier, bits)
        return
    km, ke = k_dyadic(multiplier, bits)
    m, e = dyadic(multiplier, bits)
    assert (int(km), int(ke)) == (m, e)
    xs = list(range(-300, 301)) + [-(1 << 30), (1 << 30) - 1]
    width = 63 - bits
    got = k_requantize(torch.tensor(xs), km, ke, width).tolist()
    assert got == [requantize(x, m, e) for x in xs]


# --------------------------------------------------------------------------------------
# I-ViT
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["ivit", "ivit_n_6"])
def test_ivit_exp_exhaustive(scale, name):
    kernel = build("exp", name).prepare(in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    qs = all_inputs("exp")
    want = ref_ivit_exp(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want)


def test_ivit_exp_16bit():
    kernel = build("exp", "ivit").prepare(in_scale=2.0 ** -10, in_bits=16, out_bits=16)
    qs = sample_inputs("exp", 16, seed=1)
    want = ref_ivit_exp(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 100)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["ivit", "ivit_sig-bits_12_n_10"])
def test_ivit_gelu_exhaustive(scale, name):
    kernel = build("gelu", name).prepare(in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    qs = all_inputs("gelu")
    want = ref_shift_gelu(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 50)


@pytest.mark.parametrize("scale", [2.0 ** -10, 2.0 ** -12])
def test_ivit_gelu_16bit_names_the_largest_n_that_fits(scale):
    approx = build("gelu", "ivit")
    with pytest.raises(ValueError, match=r"ivit_n_\d+") as err:
        approx.prepare(in_scale=scale, in_bits=16, out_bits=16)
    n = parse_suggestion(err, r"'ivit_n_(\d+)'")
    assert 0 < n < approx.args["n"]
    with pytest.raises(ValueError, match="ivit_n_"):
        build("gelu", f"ivit_n_{n + 1}").prepare(in_scale=scale, in_bits=16, out_bits=16)
    kernel = build("gelu", f"ivit_n_{n}").prepare(in_scale=scale, in_bits=16, out_bits=16)
    assert -kernel.x0 << (n + 1) < 1 << 31  # a + b within 32 bits
    qs = sample_inputs("gelu", 16, seed=2)
    want = ref_shift_gelu(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 100)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("length", [1, 2, 49, 197])
def test_ivit_softmax_random_rows(scale, length):
    kernel = build("softmax", "ivit").prepare(in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    rows = random_rows(seed=length, length=length, count=6)
    want = ref_shiftmax(kernel, rows)
    assert_same(run_rows(kernel, rows), want, rows)
    if length > 1:
        assert_nontrivial(want)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("length", [1, 2, 49, 197])
def test_ivit_softmax_edge_rows(scale, length):
    kernel = build("softmax", "ivit_n_10").prepare(in_scale=scale, in_bits=8, out_bits=8)
    rows = edge_rows(length)
    want = ref_shiftmax(kernel, rows)
    assert_same(run_rows(kernel, rows), want, rows)


def test_ivit_softmax_one_element_rows():
    kernel = build("softmax", "ivit").prepare(in_scale=0.05, in_bits=8, out_bits=8)
    rows = [[-128], [0], [127], [5]]
    want = ref_shiftmax(kernel, rows)
    assert_same(run_rows(kernel, rows), want, rows)
    assert want == [[255]] * 4  # probability 1 saturates one LSB below 1.0


def test_ivit_softmax_16bit_names_the_largest_n_that_fits():
    scale, length = 2.0 ** -10, 197
    kernel = build("softmax", "ivit").prepare(in_scale=scale, in_bits=16, out_bits=16)
    rows = random_rows(seed=16, length=length, count=3, bits=16) + edge_rows(length, 16)[:5]
    with pytest.raises(ValueError, match=r"ivit_n_\d+") as err:
        run_rows(kernel, rows)
    n = parse_suggestion(err, r"'ivit_n_(\d+)'")
    assert 0 < n < kernel.n
    too_many = build("softmax", f"ivit_n_{n + 1}").prepare(in_scale=scale, in_bits=16,
                                                             out_bits=16)
    with pytest.raises(ValueError, match="ivit_n_"):
        run_rows(too_many, rows)
    kernel = build("softmax", f"ivit_n_{n}").prepare(in_scale=scale, in_bits=16, out_bits=16)
    want = ref_shiftmax(kernel, rows)
    assert_same(run_rows(kernel, rows), want, rows)
    assert_nontrivial(want)


# --------------------------------------------------------------------------------------
# LayerNorm (I-ViT and I-BERT)
# --------------------------------------------------------------------------------------

def _affine(seed: int, dim: int):
    rng = random.Random(seed)
    weight = torch.tensor([rng.gauss(1.0, 0.7) for _ in range(dim)], dtype=torch.float64)
    bias = torch.tensor([rng.gauss(0.0, 2.0) for _ in range(dim)], dtype=torch.float64)
    return weight, bias


@pytest.mark.parametrize("family", ["ivit", "ibert"])
@pytest.mark.parametrize("dim", [1, 2, 64, 192])
@pytest.mark.parametrize("affine", [False, True])
def test_layernorm_random_rows(family, dim, affine):
    weight, bias = _affine(dim, dim) if affine else (None, None)
    kernel = build("layernorm", family).prepare(in_scale=0.05, in_bits=8, out_bits=8,
                                                dim=dim, weight=weight, bias=bias)
    check_out_range(kernel)
    k = 0 if family == "ivit" else ibert_var_shift(8, dim)
    rows = random_rows(seed=100 + dim, length=dim, count=6)
    want = ref_layernorm(kernel, rows, weight, bias, k,
                         var_bits=32 if family == "ibert" else None)
    assert_same(run_rows(kernel, rows), want, rows)
    if dim > 2:
        assert_nontrivial(want, 20)


@pytest.mark.parametrize("family", ["ivit", "ibert"])
@pytest.mark.parametrize("dim", [1, 2, 64, 192])
def test_layernorm_edge_rows(family, dim):
    weight, bias = _affine(7, dim)
    weight[0] = 0.0  # a zero gain: m = 0
    bias[-1] = 1e3  # saturates
    kernel = build("layernorm", family).prepare(in_scale=0.2, in_bits=8, out_bits=8,
                                                dim=dim, weight=weight, bias=bias)
    rows = edge_rows(dim)
    k = 0 if family == "ivit" else ibert_var_shift(8, dim)
    want = ref_layernorm(kernel, rows, weight, bias, k)
    assert_same(run_rows(kernel, rows), want, rows)


@pytest.mark.parametrize("family", ["ivit", "ibert"])
@pytest.mark.parametrize("dim", [1, 2, 64, 192])
def test_layernorm_16bit(family, dim):
    weight, bias = _affine(dim + 1, dim)
    kernel = build("layernorm", family).prepare(in_scale=2.0 ** -8, in_bits=16, out_bits=16,
                                                dim=dim, weight=weight, bias=bias)
    k = 0 if family == "ivit" else ibert_var_shift(16, dim)
    if family == "ibert" and dim >= 2:
        assert k > 0  # the variance shift is exercised
    rows = random_rows(seed=200 + dim, length=dim, count=4, bits=16) + edge_rows(dim, 16)
    want = ref_layernorm(kernel, rows, weight, bias, k,
                         var_bits=32 if family == "ibert" else None)
    assert_same(run_rows(kernel, rows), want, rows)


@pytest.mark.parametrize("bits,dim,shift", [(8, 192, 0), (8, 33025, 0), (8, 33026, 1), (16, 1, 1),
                                            (16, 64, 4), (16, 192, 5)])
def test_ibert_variance_shift_rule(bits, dim, shift):
    assert ibert_var_shift(bits, dim) == shift
    kernel = build("layernorm", "ibert").prepare(in_scale=0.1, in_bits=bits, out_bits=8,
                                                 dim=dim)
    assert kernel.var_shift() == shift


# --------------------------------------------------------------------------------------
# I-BERT
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["ibert", "ibert_n_10"])
def test_ibert_exp_exhaustive(scale, name):
    kernel = build("exp", name).prepare(in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    qs = all_inputs("exp")
    want = ref_ibert_exp(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want)


def test_ibert_exp_16bit_accepted_and_rejected():
    kernel = build("exp", "ibert").prepare(in_scale=2.0 ** -10, in_bits=16, out_bits=16)
    qs = sample_inputs("exp", 16, seed=3)
    want = ref_ibert_exp(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 100)

    scale = 2.0 ** -12
    with pytest.raises(ValueError, match=r"ibert_n_\d+") as err:
        build("exp", "ibert").prepare(in_scale=scale, in_bits=16, out_bits=16)
    n = parse_suggestion(err, r"'ibert_n_(\d+)'")
    assert 0 < n < 30
    with pytest.raises(ValueError, match="ibert_n_"):
        build("exp", f"ibert_n_{n + 1}").prepare(in_scale=scale, in_bits=16, out_bits=16)
    kernel = build("exp", f"ibert_n_{n}").prepare(in_scale=scale, in_bits=16, out_bits=16)
    assert kernel.exp.bits == 55
    want = ref_ibert_exp(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("length", [1, 2, 49, 197])
def test_ibert_softmax_random_rows(scale, length):
    kernel = build("softmax", "ibert").prepare(in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    rows = random_rows(seed=300 + length, length=length, count=6)
    want = ref_ibert_softmax(kernel, rows)
    assert_same(run_rows(kernel, rows), want, rows)
    if length > 1:
        assert_nontrivial(want)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("length", [1, 2, 49, 197])
def test_ibert_softmax_edge_rows(scale, length):
    kernel = build("softmax", "ibert").prepare(in_scale=scale, in_bits=8, out_bits=16)
    rows = edge_rows(length)
    want = ref_ibert_softmax(kernel, rows)
    assert_same(run_rows(kernel, rows), want, rows)


@pytest.mark.parametrize("scale", SCALES)
def test_ibert_softmax_exponentials_are_16_bit(scale):
    """Every i-exp value requantized to scale 2^-15 lies in [0, 2^15]; e^0 becomes
    (nearly) 2^15, exercising the 16-bit requantization on every possible d."""
    kernel = build("softmax", "ibert").prepare(in_scale=scale, in_bits=8, out_bits=8)
    x0, b, c, width = iexp_constants(kernel.exp, scale)
    m16, e16 = check_pair(kernel.exp_m, kernel.exp_e, kernel.exp.scale * 2.0 ** 15, width)
    values = [requantize(iexp(d, x0, b, c, kernel.exp.n), m16, e16) for d in range(-255, 1)]
    assert all(0 <= v <= 1 << 15 for v in values)
    # floor(c / s^2) * a s^2 lies in (1 - a s^2, 1]: e^0 maps just below 2^15
    assert (1 << 15) * (1 - EXP_A * scale ** 2) - 2 <= values[-1] <= 1 << 15
    # Pairs (0, d) isolate each 16-bit exponential: kernel vs reference for every d.
    rows = [[0, d] for d in range(-128, 1)] + [[d, 0] for d in range(-128, 1)]
    stats = {}
    want = ref_ibert_softmax(kernel, rows, stats)
    assert_same(run_rows(kernel, rows), want, rows)
    assert stats.get("clamped", 0) == 0


def test_ibert_softmax_16bit():
    approx = build("softmax", "ibert")
    with pytest.raises(ValueError, match=r"ibert_n_\d+") as err:
        approx.prepare(in_scale=2.0 ** -12, in_bits=16, out_bits=16)
    n = parse_suggestion(err, r"'ibert_n_(\d+)'")
    rows = random_rows(seed=17, length=49, count=3, bits=16) + edge_rows(49, 16)
    for name, scale in ((f"ibert_n_{n}", 2.0 ** -12), ("ibert", 2.0 ** -10)):
        kernel = build("softmax", name).prepare(in_scale=scale, in_bits=16, out_bits=16)
        want = ref_ibert_softmax(kernel, rows)
        assert_same(run_rows(kernel, rows), want, rows)
        assert_nontrivial(want)


@pytest.mark.parametrize("scale", SCALES + [0.01])
@pytest.mark.parametrize("name", ["ibert", "ibert_n_14"])
def test_ibert_gelu_exhaustive(scale, name):
    kernel = build("gelu", name).prepare(in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    qs = all_inputs("gelu")
    want = ref_igelu(kernel, qs, n_expected=14 if name == "ibert_n_14" else None)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 5)


@pytest.mark.parametrize("scale,bits", [(0.0625, 8), (0.01, 8), (0.003, 8),
                                        (2.0 ** -8, 16), (2.0 ** -10, 16), (2.0 ** -12, 16)])
def test_ibert_gelu_auto_shift_is_smallest_that_fits_32_bits(scale, bits):
    """n=auto: the smallest shift keeping q * (L + one) within 32 bits."""
    kernel = build("gelu", "ibert").prepare(in_scale=scale, in_bits=bits, out_bits=bits)
    s_e = scale / SQRT2
    b = math.floor(GELU_B / s_e)
    c = math.floor(1.0 / (GELU_A * s_e ** 2))
    n = kernel.n
    assert igelu_max_product(bits, b, c, s_e, n) <= INT31
    if n > 0:
        assert igelu_max_product(bits, b, c, s_e, n - 1) > INT31
    assert kernel.product_bits <= 32


@pytest.mark.parametrize("name", ["ibert", "ibert_n_14"])
@pytest.mark.parametrize("scale", [2.0 ** -8, 2.0 ** -10])
def test_ibert_gelu_16bit(name, scale):
    kernel = build("gelu", name).prepare(in_scale=scale, in_bits=16, out_bits=16)
    qs = sample_inputs("gelu", 16, seed=4)
    want = ref_igelu(kernel, qs, n_expected=14 if name == "ibert_n_14" else None)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 100)


# --------------------------------------------------------------------------------------
# ppoly (integer backend)
# --------------------------------------------------------------------------------------

PPOLY_VARIANTS = [("ppoly", "uniform", 16, 22), ("ppoly_bounds_opt", "opt", 16, 22),
                  ("ppoly_seg_8_deg_3_scale-bits_16", "uniform", 8, 16),
                  ("ppoly_seg_5_deg_1_bounds_opt", "opt", 5, 22)]


@pytest.mark.parametrize("op", ["exp", "gelu"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name,bounds,seg,frac", PPOLY_VARIANTS)
def test_ppoly_exhaustive(op, scale, name, bounds, seg, frac):
    kernel = build(op, name).prepare(in_scale=scale, in_bits=8, out_bits=8)
    assert kernel.integer_only
    check_out_range(kernel)
    qs = all_inputs(op)
    want = ref_ppoly(kernel, qs, bounds, seg, frac)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 10)


def test_ppoly_exp_is_zero_below_cutoff():
    scale, frac = 0.2, 22
    kernel = build("exp", "ppoly").prepare(in_scale=scale, in_bits=8, out_bits=16,
                                           out_scale=2.0 ** -frac)
    lo = math.ceil(-(frac + 1) * math.log(2) / scale)
    assert -128 < lo == kernel.fit.lo
    qs = all_inputs("exp")
    want = ref_ppoly(kernel, qs, "uniform", 16, frac)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert all(v == 0 for q, v in zip(qs, want) if q < lo)


@pytest.mark.parametrize("op", ["exp", "gelu"])
@pytest.mark.parametrize("name,bounds,seg,frac", PPOLY_VARIANTS[:2])
def test_ppoly_16bit(op, name, bounds, seg, frac):
    kernel = build(op, name).prepare(in_scale=2.0 ** -10, in_bits=16, out_bits=16)
    starts = kernel.fit.starts.tolist()
    around = [v + dv for v in starts for dv in (-1, 0, 1)] + [kernel.fit.lo - 1]
    qs = sample_inputs(op, 16, seed=5, extra=around)
    want = ref_ppoly(kernel, qs, bounds, seg, frac)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 100)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("length", [1, 2, 49, 197])
@pytest.mark.parametrize("name,bounds,seg,frac", PPOLY_VARIANTS[:2])
def test_ppoly_softmax_rows(scale, length, name, bounds, seg, frac):
    kernel = build("softmax", name).prepare(in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    rows = random_rows(seed=400 + length, length=length, count=4) + edge_rows(length)
    want = ref_ppoly_softmax(kernel, rows, bounds, seg, frac)
    assert_same(run_rows(kernel, rows), want, rows)
    if length > 1:
        assert_nontrivial(want)


def test_ppoly_softmax_16bit_and_long_rows():
    kernel = build("softmax", "ppoly").prepare(in_scale=2.0 ** -10, in_bits=16, out_bits=16)
    rows = random_rows(seed=18, length=49, count=3, bits=16) + edge_rows(49, 16)
    want = ref_ppoly_softmax(kernel, rows)
    assert_same(run_rows(kernel, rows), want, rows)
    assert_nontrivial(want)

    long_rows = random_rows(seed=19, length=257, count=2)
    kernel = build("softmax", "ppoly").prepare(in_scale=0.05, in_bits=8, out_bits=8)
    with pytest.raises(ValueError, match=r"ppoly_scale-bits_\d+") as err:
        run_rows(kernel, long_rows)
    frac = parse_suggestion(err, r"'ppoly_scale-bits_(\d+)'")
    assert frac < 22
    kernel = build("softmax", f"ppoly_scale-bits_{frac}").prepare(in_scale=0.05, in_bits=8,
                                                                    out_bits=8)
    want = ref_ppoly_softmax(kernel, long_rows, frac_bits=frac)
    assert_same(run_rows(kernel, long_rows), want, long_rows)


# --------------------------------------------------------------------------------------
# ppoly (float backend: ppoly.py "backend=float")
# --------------------------------------------------------------------------------------

def ref_ppoly_float(kernel, qs) -> list[int]:
    """The unrounded float polynomial (Horner in doubles on the fitted float coefficients,
    as ``PiecewisePoly.floating`` does), then ``clamp(floor(y 2^-F / s_out + 1/2))`` with
    the division and rounding done exactly in rationals; 0 below the fit's ``lo``."""
    fit = kernel.fit
    starts, coeffs = fit.starts.tolist(), fit.float_coeffs.tolist()
    lo, hi = kernel.out_range
    scale = Fraction(kernel.out_scale) * (1 << fit.frac_bits)
    out = []
    for q in qs:
        if q < fit.lo:
            out.append(0)
            continue
        i = max(j for j, b in enumerate(starts) if b <= q)
        t = (q - starts[i]) / 2.0 ** fit.shift
        y = 0.0
        for c in reversed(coeffs[i]):
            y = y * t + c
        out.append(clamp(math.floor(Fraction(y) / scale + Fraction(1, 2)), lo, hi))
    return out


# Digests of the float backend's outputs over every input, recorded at commit 1cd4a1d
# (before its rounding went through intvit.arith.quantize): the 8-bit cases are unchanged.
PPOLY_FLOAT_DIGESTS = [
    ("gelu", "ppoly_backend_float", 0.05, 8, None, "2075dcbbb5bd6cb4"),
    ("gelu", "ppoly_backend_float", 2.0 ** -4, 8, 0.03, "27f08994b85f0164"),
    ("exp", "ppoly_backend_float", 0.05, 16, 2.0 ** -15, "95a4aea2ffd2bbfd"),
]


@pytest.mark.parametrize("op,name,scale,out_bits,out_scale,digest", PPOLY_FLOAT_DIGESTS)
def test_ppoly_float_backend_outputs_unchanged(op, name, scale, out_bits, out_scale, digest):
    kernel = build(op, name).prepare(in_scale=scale, in_bits=8, out_bits=out_bits,
                                     out_scale=out_scale)
    assert not kernel.integer_only
    qs = all_inputs(op)
    got = kernel(torch.tensor(qs)).tolist()
    text = ",".join(map(str, got)).encode()
    assert hashlib.sha256(text).hexdigest()[:16] == digest
    assert got == ref_ppoly_float(kernel, qs)


@pytest.mark.parametrize("op", ["exp", "gelu"])
@pytest.mark.parametrize("scale", SCALES)
def test_ppoly_float_backend_exhaustive(op, scale):
    kernel = build(op, "ppoly_seg_8_deg_3_bounds_opt_backend_float").prepare(
        in_scale=scale, in_bits=8, out_bits=8)
    check_out_range(kernel)
    qs = all_inputs(op)
    want = ref_ppoly_float(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert_nontrivial(want, 10)


def test_ppoly_float_backend_rounds_once():
    """At 16 bits, q = 22144 and 22400 give y 2^-F / s_out just below 86.5 and 87.5; the
    old spelling ``y * (2^-F / s_out)`` rounded the product up onto the tie (87, 88)."""
    kernel = build("gelu", "ppoly_seg_8_deg_3_bounds_opt_backend_float").prepare(
        in_scale=0.002, in_bits=16, out_bits=8)
    qs = sample_inputs("gelu", 16, seed=7, extra=[22144, 22400])
    want = ref_ppoly_float(kernel, qs)
    assert_same(kernel(torch.tensor(qs)), want, qs)
    assert kernel(torch.tensor([22144, 22400])).tolist() == [86, 87]
