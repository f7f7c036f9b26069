"""Bit-exact tests of the integer primitives in ``intvit.arith``.

Every integer result is compared exactly (``torch.equal`` / ``==`` on ints, never a
tolerance) with a slow reference written on plain Python ints or
``fractions.Fraction``. Random inputs come from hypothesis; edge inputs (0, +-1,
2^i +- a few, the int8/int16/int32/int64 extremes) are listed explicitly.

A test marked ``xfail(strict=True)`` pins down a known deviation from the documented
math (its ``reason`` says which); once fixed it XPASSes, which fails the run until the
marker is removed.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from intvit.arith import (MANTISSA_BITS, IntegerOverflowError, WidthLog, bit_length,
                          declare, dyadic, dyadic_value, floor_div, floor_shift, horner,
                          horner_bits, isqrt, mantissa_bits_for, newton_steps, overflow_checks,
                          qrange, record_widths, requantize, round_div, round_shift, saturate,
                          signed_bits)

# ----------------------------------------------------------------------------------
# Constants, edge values, strategies, helpers
# ----------------------------------------------------------------------------------

INT8_MIN, INT8_MAX = -(1 << 7), (1 << 7) - 1
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_SHIFT = 62          # documented limit of shift amounts and of the dyadic exponent
HALF = Fraction(1, 2)

HYP = settings(max_examples=200, deadline=None)
HYP_SMALL = settings(max_examples=100, deadline=None)


def _build_edges() -> list[int]:
    vals = {0, 1, -1}
    for i in range(65):
        for d in range(-3, 4):
            vals.add((1 << i) + d)
            vals.add(-(1 << i) + d)
    for bits in (8, 16, 32, 64):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        vals |= {lo, lo + 1, lo + 2, hi, hi - 1, hi - 2, (1 << bits) - 1}
    return sorted(vals)


ALL_EDGES = _build_edges()


def edges(lo: int, hi: int) -> list[int]:
    """The edge values that lie in ``[lo, hi]`` (``lo`` and ``hi`` always included)."""
    return sorted({v for v in ALL_EDGES if lo <= v <= hi} | {lo, hi})


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Uniform-ish integers in ``[lo, hi]``, half of the draws taken from the edges."""
    return st.one_of(st.integers(lo, hi), st.sampled_from(edges(lo, hi)))


def int_lists(lo: int, hi: int, max_size: int = 16) -> st.SearchStrategy[list[int]]:
    return st.lists(ints(lo, hi), min_size=1, max_size=max_size)


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def assert_exact(got: torch.Tensor, expected) -> None:
    """``got`` is an int64 tensor equal, element for element, to ``expected`` (ints)."""
    want = t64(expected)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.int64, got.dtype
    assert got.shape == want.shape, (got.shape, want.shape)
    if not torch.equal(got, want):
        bad = (got != want).nonzero()[:5].tolist()
        details = [(idx, got[tuple(idx)].item(), want[tuple(idx)].item()) for idx in bad]
        pytest.fail(f"mismatch at (index, got, expected): {details}")


def ref_signed_bits(v: int) -> int:
    """Smallest b with -2^(b-1) <= -|v| and |v| <= 2^(b-1) - 1, found by counting."""
    v = abs(v)
    b = 1
    while v > (1 << (b - 1)) - 1:
        b += 1
    return b


def fits(v: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= v <= (1 << (bits - 1)) - 1


def ref_floor_div(x: int, d: int) -> int:
    """floor(x / d), via an exact rational."""
    return math.floor(Fraction(x, d))


def ref_round_div(x: int, d: int) -> int:
    """floor(x / d + 1/2) (round half up), via an exact rational."""
    return math.floor(Fraction(x, d) + HALF)


def ref_requantize(x: int, m: int, e: int) -> int:
    """floor((x*m + 2^(e-1)) / 2^e), and x*m for e == 0."""
    if e == 0:
        return x * m
    return math.floor(Fraction(x * m + (1 << (e - 1)), 1 << e))


def ref_dyadic_unclamped(multiplier: float, bits: int) -> tuple[int, int]:
    """The documented split before the e <= 62 clamp: 2^(k-1) <= |M| < 2^k,
    m = round_half_even(M * 2^(B-k)), e = B - k, and |m| = 2^B is halved."""
    f = Fraction(multiplier)
    if f == 0:
        return 0, bits
    k = f.numerator.bit_length() - f.denominator.bit_length()
    while abs(f) >= Fraction(2) ** k:
        k += 1
    while abs(f) < Fraction(2) ** (k - 1):
        k -= 1
    m = round(f * Fraction(2) ** (bits - k))  # Fraction.__round__: nearest, ties to even
    e = bits - k
    if abs(m) == 1 << bits:
        m, e = m // 2, e - 1
    return m, e


def as_pair(pair) -> tuple[int, int]:
    m, e = pair
    assert m.dtype == torch.int64 and e.dtype == torch.int64
    return int(m), int(e)


@st.composite
def floats_by_exponent(draw, min_k: int, max_k: int) -> float:
    """sign * f * 2^k with 0.5 <= f < 1, i.e. 2^(k-1) <= |M| < 2^k."""
    f = draw(st.floats(0.5, 1.0, exclude_max=True))
    k = draw(st.integers(min_k, max_k))
    sign = draw(st.sampled_from([1.0, -1.0]))
    return sign * math.ldexp(f, k)


# ----------------------------------------------------------------------------------
# dyadic(), dyadic_value(), mantissa_bits_for()
# ----------------------------------------------------------------------------------

@st.composite
def dyadic_cases(draw) -> tuple[float, int]:
    """(M, B) with e = B - k in [0, 62], i.e. no clamping, and |M| <= 2^B - 1."""
    bits = draw(st.integers(2, 31))
    multiplier = draw(floats_by_exponent(bits - MAX_SHIFT, bits))
    assume(abs(multiplier) <= 2.0 ** bits - 1)
    return multiplier, bits


@HYP
@given(case=dyadic_cases())
def test_dyadic_matches_reference(case):
    """(m, e) equals the documented round-to-nearest-even split computed on Fractions."""
    multiplier, bits = case
    assert as_pair(dyadic(multiplier, bits)) == ref_dyadic_unclamped(multiplier, bits)


@HYP
@given(case=st.one_of(dyadic_cases(),
                      floats_by_exponent(MANTISSA_BITS - MAX_SHIFT, MANTISSA_BITS - 1)
                      .map(lambda mult: (mult, None))))
def test_dyadic_mantissa_range_sign_and_error_bound(case):
    """Nonzero M: 2^(B-1) <= |m| < 2^B, 0 <= e <= 62, sign(m) = sign(M) and
    |m 2^-e - M| <= 2^-B |M| (exact rational arithmetic on the float's value)."""
    multiplier, bits = case
    m, e = as_pair(dyadic(multiplier) if bits is None else dyadic(multiplier, bits))
    bits = MANTISSA_BITS if bits is None else bits
    assert (1 << (bits - 1)) <= abs(m) < (1 << bits)
    assert 0 <= e <= MAX_SHIFT
    assert (m > 0) == (multiplier > 0)
    exact = Fraction(multiplier)
    assert abs(Fraction(m, 1 << e) - exact) <= abs(exact) / (1 << bits)


EDGE_MULTIPLIERS = [1.0, -1.0, 0.5, -0.5, 0.75, 1 / 3, -1 / 3, math.pi, 0.1, 1e-9,
                    2.0 ** 30, 2.0 ** 31 - 1, -(2.0 ** 31 - 1), 2.0 ** 31 - 1.5,
                    1 - 2.0 ** -40, -(1 - 2.0 ** -40), 2.0 ** -31, 2.0 ** -32,
                    3 * 2.0 ** -33, 1.0 + 2.0 ** -31, 1.0 + 3 * 2.0 ** -32, 12345.678]


@pytest.mark.parametrize("multiplier", EDGE_MULTIPLIERS)
def test_dyadic_edge_multipliers(multiplier):
    """Hand-picked multipliers (powers of two, carries, ties, 2^31 - 1, e = 62 exactly)
    give exactly the reference pair."""
    assert as_pair(dyadic(multiplier)) == ref_dyadic_unclamped(multiplier, MANTISSA_BITS)


@pytest.mark.parametrize("multiplier, expected", [
    ((2 ** 30 + 0.5) / 2 ** 31, (2 ** 30, 31)),          # tie -> even (down)
    ((2 ** 30 + 1.5) / 2 ** 31, (2 ** 30 + 2, 31)),      # tie -> even (up)
    (-(2 ** 30 + 0.5) / 2 ** 31, (-(2 ** 30), 31)),
    (-(2 ** 30 + 1.5) / 2 ** 31, (-(2 ** 30 + 2), 31)),
    (1 - 2.0 ** -40, (2 ** 30, 30)),                     # rounds to 2^31: carry
    (-(1 - 2.0 ** -40), (-(2 ** 30), 30)),
    (1.0, (2 ** 30, 30)),
    (2.0 ** 30, (2 ** 30, 0)),
    (2.0 ** 31 - 1, (2 ** 31 - 1, 0)),
    (2.0 ** -32, (2 ** 30, 62)),
])
def test_dyadic_known_pairs(multiplier, expected):
    """Ties round to even, the |m| = 2^B carry halves m and decrements e."""
    assert as_pair(dyadic(multiplier)) == expected


@pytest.mark.parametrize("multiplier", [0.0, -0.0])
def test_dyadic_zero(multiplier):
    """M = 0 gives m = 0 with a legal shift, and requantizing by it gives 0."""
    m, e = as_pair(dyadic(multiplier))
    assert m == 0
    assert 0 <= e <= MAX_SHIFT
    x = t64(edges(INT32_MIN, INT32_MAX))
    assert_exact(requantize(x, m, e), [0] * x.numel())


@pytest.mark.parametrize("bits", range(2, 32))
def test_dyadic_largest_accepted_multiplier(bits):
    """+-(2^B - 1) is representable: m = +-(2^B - 1), e = 0."""
    assert as_pair(dyadic(2.0 ** bits - 1, bits)) == (2 ** bits - 1, 0)
    assert as_pair(dyadic(-(2.0 ** bits - 1), bits)) == (-(2 ** bits - 1), 0)


@pytest.mark.parametrize("multiplier, bits", [
    (2.0 ** 31, 31), (-(2.0 ** 31), 31), (2.0 ** 32, 31), (1e300, 31), (-1e300, 31),
    (float(torch.finfo(torch.float64).max), 31), (256.0, 8), (-256.0, 8), (300.5, 8),
    (4.0, 2), (torch.tensor([1.0, 2.0 ** 31]), 31), (torch.tensor([[0.5], [-1e10]]), 31),
])
def test_dyadic_rejects_too_large(multiplier, bits):
    """|M| >= 2^B cannot be written with e >= 0: ValueError (scalar or any tensor element)."""
    with pytest.raises(ValueError):
        dyadic(multiplier, bits)


@pytest.mark.parametrize("multiplier", [
    math.nan, math.inf, -math.inf, torch.tensor([1.0, math.nan]),
    torch.tensor([[0.25, 0.5], [math.inf, 1.0]]), torch.tensor([-math.inf]),
])
def test_dyadic_rejects_non_finite(multiplier):
    """NaN and +-inf (scalar or anywhere in a tensor) raise ValueError."""
    with pytest.raises(ValueError):
        dyadic(multiplier)


@pytest.mark.parametrize("bits", [-1, 0, 1, 32, 33, 63])
def test_dyadic_rejects_bad_mantissa_bits(bits):
    """mantissa_bits outside [2, 31] raise ValueError."""
    with pytest.raises(ValueError):
        dyadic(0.5, bits)


def test_dyadic_tensor_matches_scalar_calls():
    """A tensor of multipliers gives the same pairs, element for element and in the same
    shape, as one scalar call per element (including 0, negatives, ties, carries and
    clamped tiny values)."""
    values = EDGE_MULTIPLIERS + [0.0, -0.0, 2.0 ** -40, -(2.0 ** -40), 2.0 ** -70, 1e-300,
                                 -7.5, 0.999, 2.0 ** -63]
    values = values[:30]
    mult = torch.tensor(values, dtype=torch.float64).reshape(5, 6)
    m, e = dyadic(mult)
    assert m.shape == e.shape == (5, 6)
    assert m.dtype == e.dtype == torch.int64
    for idx, v in enumerate(values):
        assert (int(m.flatten()[idx]), int(e.flatten()[idx])) == as_pair(dyadic(v)), v


@HYP_SMALL
@given(values=st.lists(floats_by_exponent(-100, MANTISSA_BITS - 1), min_size=1,
                       max_size=12),
       bits=st.integers(8, 31))
def test_dyadic_tensor_matches_scalar_calls_random(values, bits):
    """Vectorized dyadic() equals scalar calls for random multipliers and widths."""
    values = [v for v in values if abs(v) <= 2.0 ** bits - 1]
    assume(values)
    m, e = dyadic(torch.tensor(values, dtype=torch.float64), bits)
    got = list(zip(m.tolist(), e.tolist()))
    assert got == [as_pair(dyadic(v, bits)) for v in values]


def test_dyadic_empty_tensor():
    """An empty tensor of multipliers gives empty int64 tensors."""
    m, e = dyadic(torch.empty(0, dtype=torch.float64))
    assert m.shape == e.shape == (0,)
    assert m.dtype == e.dtype == torch.int64


@HYP
@given(case=st.integers(2, 31).flatmap(lambda b: st.tuples(st.just(b), st.one_of(
    floats_by_exponent(b - 124, b - 63), floats_by_exponent(-1074, b - 125)))))
def test_dyadic_tiny_multipliers_clamp_e_to_62(case):
    """Multipliers below 2^(B-62) get e = 62 and m = M 2^62 rounded: the sign is kept
    and |m - M 2^62| <= 1/2 + 2^-(x+1) (x = bits dropped, one double rounding), for
    any number of dropped bits (1..62 and far more, down to subnormals)."""
    bits, multiplier = case
    _, e_unclamped = ref_dyadic_unclamped(multiplier, bits)
    dropped = e_unclamped - MAX_SHIFT
    assume(dropped >= 1)  # a carry can bring 2^(B-63) <= |M| back onto e = 62
    m, e = as_pair(dyadic(multiplier, bits))
    assert e == MAX_SHIFT
    assert m * multiplier >= 0
    scaled = Fraction(multiplier) * (1 << MAX_SHIFT)
    assert abs(m - scaled) <= HALF + Fraction(1, 1 << (dropped + 1))


@pytest.mark.parametrize("multiplier", [1e-300, 5e-324, 2.0 ** -100, 2.0 ** -1000,
                                        2.0 ** -94, 2.0 ** -64])
def test_dyadic_positive_tiny_multipliers_become_zero(multiplier):
    """Positive M far below 2^-63 round to (0, 62); 2^-64 rounds to 0 (M 2^62 = 1/4)."""
    assert as_pair(dyadic(multiplier)) == (0, MAX_SHIFT)


@pytest.mark.parametrize("multiplier", [2.0 ** -95, 1.5 * 2.0 ** -95, -(2.0 ** -95),
                                        -(2.0 ** -94), -1e-300, -5e-324, -(2.0 ** -100),
                                        -(2.0 ** -64), -0.9 * 2.0 ** -63])
def test_dyadic_tiny_multipliers_never_flip_sign(multiplier):
    """|M| < 2^-63 has |M| 2^62 < 1/2, so the clamped pair is (0, 62) for either sign
    (regression: 63 or more dropped bits used to give m = -1)."""
    assert as_pair(dyadic(multiplier)) == (0, MAX_SHIFT)


@pytest.mark.parametrize("multiplier, expected_m", [
    (2.0 ** -63, 1), (-(2.0 ** -63), 0), (3 * 2.0 ** -64, 1), (2.0 ** -62, 1),
    (2.0 ** -61 * 0.75, 2), (-(2.0 ** -61) * 0.75, -1), (2.0 ** -33, 1 << 29),
])
def test_dyadic_clamped_known_values(multiplier, expected_m):
    """Clamped pairs round M 2^62 half up: 1/2 -> 1, -1/2 -> 0, 3/2 -> 2, -3/2 -> -1."""
    assert as_pair(dyadic(multiplier)) == (expected_m, MAX_SHIFT)


@pytest.mark.parametrize("multiplier", [2.0 ** -63 * (1 - 2.0 ** -40), 2.0 ** -64,
                                        -(2.0 ** -63) * (1 - 2.0 ** -40), 2.0 ** -70])
def test_dyadic_below_two_pow_minus_63_is_zero_or_one_unit(multiplier):
    """Below 2^-63 the pair is m in {0, +-1} at e = 62, within one unit of 2^-62 (the
    mantissa's own rounding can reach 2^-63 first; dyadic.py documents this)."""
    m, e = as_pair(dyadic(multiplier))
    assert e == MAX_SHIFT and abs(m) <= 1
    assert abs(Fraction(m, 1 << e) - Fraction(multiplier)) < Fraction(1, 1 << MAX_SHIFT)


@HYP
@given(m=ints(-(2 ** 31 - 1), 2 ** 31 - 1), e=st.integers(0, MAX_SHIFT))
def test_dyadic_value_is_exact(m, e):
    """dyadic_value(m, e) is the float64 of m 2^-e, exactly (it is representable)."""
    got = dyadic_value(t64(m), t64(e))
    assert got.dtype == torch.float64
    assert Fraction(float(got)) == Fraction(m, 1 << e)


@HYP
@given(case=dyadic_cases())
def test_dyadic_value_round_trip(case):
    """dyadic_value(*dyadic(M)) is within 2^-B relative of M."""
    multiplier, bits = case
    value = float(dyadic_value(*dyadic(multiplier, bits)))
    assert abs(Fraction(value) - Fraction(multiplier)) <= abs(Fraction(multiplier)) / (1 << bits)


@pytest.mark.parametrize("x_bits", range(1, 56))
def test_mantissa_bits_for_values_and_guarantee(x_bits):
    """B = min(31, 63 - W), at least 8, and the worst product 2^(W-1) (2^B - 1) plus
    the largest rounding constant 2^61 stays below 2^63."""
    b = mantissa_bits_for(x_bits)
    assert b == min(31, 63 - x_bits)
    assert 8 <= b <= MANTISSA_BITS
    assert (1 << (x_bits - 1)) * ((1 << b) - 1) + (1 << 61) <= INT64_MAX


@pytest.mark.parametrize("x_bits", [56, 57, 60, 63, 64, 100])
def test_mantissa_bits_for_rejects_too_wide(x_bits):
    """Inputs wider than 55 bits leave a mantissa below 8 bits: ValueError."""
    with pytest.raises(ValueError):
        mantissa_bits_for(x_bits)


# ----------------------------------------------------------------------------------
# requantize()
# ----------------------------------------------------------------------------------

M31 = 2 ** 31 - 1


@HYP
@given(xs=int_lists(INT32_MIN, INT32_MAX), m=ints(-M31, M31), e=st.integers(0, MAX_SHIFT))
def test_requantize_scalar_pair_matches_reference(xs, m, e):
    """int32 x, |m| <= 2^31 - 1, e in [0, 62]: floor((x m + 2^(e-1)) / 2^e) exactly."""
    assert_exact(requantize(t64(xs), m, e), [ref_requantize(x, m, e) for x in xs])


@HYP
@given(rows=st.lists(st.tuples(ints(INT32_MIN, INT32_MAX), ints(-M31, M31),
                               st.integers(0, MAX_SHIFT)), min_size=1, max_size=16))
def test_requantize_per_element_pairs(rows):
    """Per-element tensors m and e (same shape as x) apply element by element."""
    xs, ms, es = (list(c) for c in zip(*rows))
    got = requantize(t64(xs), t64(ms), t64(es))
    assert_exact(got, [ref_requantize(x, m, e) for x, m, e in rows])


def test_requantize_edge_grid():
    """Every int32 edge x times every edge m times every edge e (broadcast 3-D)."""
    xs = edges(INT32_MIN, INT32_MAX)
    ms = [0, 1, -1, 2, 3, -3, 2 ** 30, -(2 ** 30), 2 ** 30 + 1, M31, -M31, M31 - 1]
    es = [0, 1, 2, 15, 30, 31, 32, 33, 61, 62]
    got = requantize(t64(xs)[:, None, None], t64(ms)[None, :, None], t64(es)[None, None, :])
    expected = [[[ref_requantize(x, m, e) for e in es] for m in ms] for x in xs]
    assert_exact(got, expected)


def test_requantize_broadcasts_m_and_e():
    """x of shape (4, 5), m of shape (5,), e of shape (4, 1) broadcast like numpy."""
    xs = [[INT32_MIN, -7, -1, 0, 5], [1, 2, 3, -2, -3], [INT32_MAX, 100, -100, 7, 8],
          [2 ** 20, -(2 ** 20), 3, 1 << 30, -(1 << 30)]]
    ms = [3, -5, M31, 1, 2 ** 30]
    es = [[0], [1], [31], [62]]
    got = requantize(t64(xs), t64(ms), t64(es))
    expected = [[ref_requantize(xs[i][j], ms[j], es[i][0]) for j in range(5)]
                for i in range(4)]
    assert_exact(got, expected)


@HYP
@given(data=st.data())
def test_requantize_wider_inputs_with_shorter_mantissa(data):
    """W = 40-bit x with B = mantissa_bits_for(40) = 23-bit m: exact for all e in [0, 62]
    and no declared width is exceeded under overflow_checks."""
    b = mantissa_bits_for(40)
    xs = data.draw(int_lists(-(1 << 39), (1 << 39) - 1))
    m = data.draw(ints(-((1 << b) - 1), (1 << b) - 1))
    e = data.draw(st.integers(0, MAX_SHIFT))
    with overflow_checks():
        got = requantize(t64(xs), m, e, x_bits=40)
    assert_exact(got, [ref_requantize(x, m, e) for x in xs])


def test_requantize_declares_input_and_product_widths():
    """Under overflow_checks: '<what>.in' is x_bits, '<what>.requant' holds the worst
    |x m| (so WidthLog.requant reports it and WidthLog.widest does not), and every
    observed magnitude fits its declaration."""
    xs = t64([INT32_MIN, INT32_MAX, 0, -1])
    with overflow_checks() as log:
        got = requantize(xs, -M31, 5, what="rq")
    assert_exact(got, [ref_requantize(x, -M31, 5) for x in xs.tolist()])
    assert log.declared["rq.in"] == 32
    assert log.declared["rq.requant"] == ref_signed_bits(M31 << 31) == 63
    assert log.requant == 63
    assert log.widest == 32
    for label, bits in log.declared.items():  # magnitudes: -2^(b-1) is allowed
        assert log.observed[label] <= 1 << (bits - 1), label
    assert log.observed["rq.in"] == 1 << 31


@pytest.mark.parametrize("x", [1 << 31, INT32_MIN - 1, 1 << 40])
def test_requantize_input_outside_x_bits(x):
    """An x wider than x_bits raises IntegerOverflowError only inside overflow_checks;
    outside it the result is still the exact formula."""
    with overflow_checks(), pytest.raises(IntegerOverflowError):
        requantize(t64([x]), 3, 1)
    assert_exact(requantize(t64([x]), 3, 1), [ref_requantize(x, 3, 1)])


@HYP
@given(xs=int_lists(INT32_MIN, INT32_MAX),
       multiplier=floats_by_exponent(-30, 20))
def test_requantize_with_dyadic_approximates_product(xs, multiplier):
    """requantize(x, *dyadic(M)) is x M rounded half up, up to the pair's error:
    |r - x M| <= 1/2 + |x M| 2^-31."""
    m, e = dyadic(multiplier)
    got = requantize(t64(xs), m, e).tolist()
    exact_m = Fraction(multiplier)
    for x, r in zip(xs, got):
        assert abs(r - x * exact_m) <= HALF + abs(x * exact_m) / (1 << MANTISSA_BITS)


# ----------------------------------------------------------------------------------
# floor_shift / round_shift / floor_div / round_div
# ----------------------------------------------------------------------------------

INT64_EDGES = edges(INT64_MIN, INT64_MAX)


@HYP
@given(xs=int_lists(INT64_MIN, INT64_MAX), k=st.integers(0, MAX_SHIFT))
def test_floor_shift_matches_reference(xs, k):
    """floor_shift(x, k) = floor(x / 2^k) over the whole int64 range."""
    assert_exact(floor_shift(t64(xs), k), [ref_floor_div(x, 1 << k) for x in xs])


def test_floor_shift_edge_grid_with_tensor_shifts():
    """All int64 edges against every shift 0..62 given as a broadcast tensor."""
    ks = list(range(MAX_SHIFT + 1))
    got = floor_shift(t64(INT64_EDGES)[:, None], t64(ks)[None, :])
    assert_exact(got, [[x // (1 << k) for k in ks] for x in INT64_EDGES])


@HYP
@given(xs=int_lists(INT64_MIN, INT64_MAX), k=st.integers(0, MAX_SHIFT))
def test_round_shift_matches_reference(xs, k):
    """round_shift(x, k) = floor(x / 2^k + 1/2) over the whole int64 range."""
    assert_exact(round_shift(t64(xs), k), [ref_round_div(x, 1 << k) for x in xs])


def test_round_shift_edge_grid():
    """All int64 edges against every shift 0..62, as a broadcast tensor and as ints."""
    ks = list(range(MAX_SHIFT + 1))
    expected = [[ref_round_div(x, 1 << k) for k in ks] for x in INT64_EDGES]
    assert_exact(round_shift(t64(INT64_EDGES)[:, None], t64(ks)[None, :]), expected)
    for k in (0, 1, 2, 31, 32, 61, 62):
        assert_exact(round_shift(t64(INT64_EDGES), k), [row[k] for row in expected])


@pytest.mark.parametrize("x, k, expected", [
    (1, 1, 1), (-1, 1, 0), (3, 1, 2), (-3, 1, -1), (5, 1, 3), (-5, 1, -2),
    (2, 2, 1), (-2, 2, 0), (6, 2, 2), (-6, 2, -1), (-5, 2, -1), (-7, 2, -2),
    (-1, 62, 0), (-(1 << 61), 62, 0), (-(1 << 61) - 1, 62, -1), (1 << 61, 62, 1),
    ((1 << 61) - 1, 62, 0), (INT64_MIN, 62, -2), (INT64_MIN, 1, -(1 << 62)),
])
def test_round_shift_ties_go_up(x, k, expected):
    """Exact halves round toward +inf for both signs; everything else to nearest."""
    assert_exact(round_shift(t64([x]), k), [expected])
    assert expected == ref_round_div(x, 1 << k)


@pytest.mark.parametrize("x, k, expected", [
    (-1, 1, -1), (-1, 62, -1), (-3, 1, -2), (3, 1, 1), (INT64_MIN, 62, -2),
    (INT64_MIN, 63 - 1, -2), (INT64_MAX, 62, 1), (-(1 << 62) - 1, 62, -2),
])
def test_floor_shift_negative_rounds_toward_minus_infinity(x, k, expected):
    """floor_shift is an arithmetic shift: negatives go toward -inf, not toward 0."""
    assert_exact(floor_shift(t64([x]), k), [expected])


def test_shift_by_zero_is_identity():
    """k = 0 returns x unchanged for both shifts, int64 extremes included."""
    x = t64(INT64_EDGES)
    assert_exact(floor_shift(x, 0), INT64_EDGES)
    assert_exact(round_shift(x, 0), INT64_EDGES)
    assert_exact(round_shift(x, t64([0] * len(INT64_EDGES))), INT64_EDGES)


@HYP
@given(rows=st.lists(st.tuples(ints(INT64_MIN, INT64_MAX), st.integers(0, MAX_SHIFT)),
                     min_size=1, max_size=16))
def test_shifts_with_per_element_tensor_amounts(rows):
    """A tensor of shift amounts (same shape as x) applies element by element."""
    xs, ks = (list(c) for c in zip(*rows))
    assert_exact(floor_shift(t64(xs), t64(ks)), [ref_floor_div(x, 1 << k) for x, k in rows])
    assert_exact(round_shift(t64(xs), t64(ks)), [ref_round_div(x, 1 << k) for x, k in rows])


@pytest.mark.parametrize("fn", [floor_shift, round_shift])
@pytest.mark.parametrize("k", [-1, -100, 63, 64, 1000, t64([0, 63]), t64([-1, 5]),
                               t64([[62], [63]])])
def test_shifts_reject_bad_amounts(fn, k):
    """Shift amounts outside [0, 62] (int or anywhere in a tensor) raise ValueError."""
    with pytest.raises(ValueError):
        fn(t64([1, 2]), k)


@pytest.mark.parametrize("fn", [floor_shift, round_shift])
def test_shifts_accept_boundary_and_empty_amounts(fn):
    """k = 62 (int and tensor) and an empty shift tensor are accepted."""
    assert_exact(fn(t64([1 << 62]), 62), [1])
    assert_exact(fn(t64([1 << 62]), t64([62])), [1])
    assert fn(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)).numel() == 0


@pytest.mark.parametrize("fn, x, arg", [
    (round_shift, INT64_MAX, 1), (round_shift, INT64_MAX, 62), (round_shift, INT64_MAX, 2),
    (round_shift, INT64_MAX - 1, 2), (round_shift, INT64_MIN, 62), (round_div, INT64_MAX, 2),
    (round_div, INT64_MAX, 3), (round_div, INT64_MAX, INT64_MAX),
    (round_div, INT64_MAX - 1, INT64_MAX), (round_div, INT64_MIN, INT64_MAX),
    (round_div, INT64_MIN, 2), (round_div, INT64_MIN + 1, 3),
])
def test_round_near_int64_extremes(fn, x, arg):
    """Rounding values at the int64 ends does not overflow (regression: the rounding
    add x + 2^(k-1), x + d//2 used to wrap for x near INT64_MAX)."""
    d = (1 << arg) if fn is round_shift else arg
    assert_exact(fn(t64([x]), arg), [ref_round_div(x, d)])


DIVISORS = st.one_of(st.integers(1, 1000), st.integers(1, INT64_MAX),
                     st.sampled_from(edges(1, INT64_MAX)))


@HYP
@given(xs=int_lists(INT64_MIN, INT64_MAX), d=DIVISORS)
def test_floor_div_matches_reference(xs, d):
    """floor_div(x, d) = floor(x / d) over the whole int64 range."""
    assert_exact(floor_div(t64(xs), d), [ref_floor_div(x, d) for x in xs])


@HYP
@given(xs=int_lists(INT64_MIN, INT64_MAX), d=DIVISORS)
def test_round_div_matches_reference(xs, d):
    """round_div(x, d) = floor(x / d + 1/2) over the whole int64 range."""
    assert_exact(round_div(t64(xs), d), [ref_round_div(x, d) for x in xs])


def test_div_edge_grid():
    """int64 edges against edge divisors (1, 2, 3, 2^i +- 1, INT64_MAX) as a tensor."""
    ds = [1, 2, 3, 5, 7, 10, 255, 256, 257, (1 << 31) - 1, 1 << 31, (1 << 62) + 1,
          INT64_MAX - 1, INT64_MAX]
    x = t64(INT64_EDGES)[:, None]
    d = t64(ds)[None, :]
    assert_exact(floor_div(x, d), [[ref_floor_div(v, q) for q in ds] for v in INT64_EDGES])
    assert_exact(round_div(x, d), [[ref_round_div(v, q) for q in ds] for v in INT64_EDGES])


@pytest.mark.parametrize("d", [1, 3, 5, 7, 9, 255])
def test_round_div_odd_divisor_rule(d):
    """Odd d: x = d k + r (0 <= r < d) rounds up exactly when r >= (d + 1) / 2."""
    xs, expected = [], []
    for k in range(-4, 5):
        for r in range(d):
            xs.append(d * k + r)
            expected.append(k + (1 if 2 * r >= d + 1 else 0))
    assert_exact(round_div(t64(xs), d), expected)


@pytest.mark.parametrize("d", [2, 4, 10, 256])
def test_round_div_even_divisor_ties_go_up(d):
    """Even d: x = d k + d/2 rounds to k + 1 for negative and positive k."""
    ks = list(range(-5, 6))
    assert_exact(round_div(t64([d * k + d // 2 for k in ks]), d), [k + 1 for k in ks])
    assert_exact(round_div(t64([d * k + d // 2 - 1 for k in ks]), d), ks)


@HYP
@given(rows=st.lists(st.tuples(ints(INT64_MIN, INT64_MAX), ints(1, INT64_MAX)),
                     min_size=1, max_size=16))
def test_divs_with_per_element_tensor_divisors(rows):
    """A tensor of divisors (same shape as x) applies element by element."""
    xs, ds = (list(c) for c in zip(*rows))
    assert_exact(floor_div(t64(xs), t64(ds)), [ref_floor_div(x, d) for x, d in rows])
    assert_exact(round_div(t64(xs), t64(ds)), [ref_round_div(x, d) for x, d in rows])


@pytest.mark.parametrize("fn", [floor_div, round_div])
@pytest.mark.parametrize("d", [0, -1, -7, INT64_MIN, t64([1, 0]), t64([3, -2]),
                               t64([[5], [0]])])
def test_divs_reject_non_positive_divisors(fn, d):
    """d <= 0 (int or anywhere in a tensor) raises ValueError."""
    with pytest.raises(ValueError):
        fn(t64([10, -10]), d)


# ----------------------------------------------------------------------------------
# qrange / saturate
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, signed, expected", [
    (8, True, (-128, 127)), (8, False, (0, 255)),
    (16, True, (-32768, 32767)), (16, False, (0, 65535)),
    (32, True, (INT32_MIN, INT32_MAX)), (32, False, (0, 4294967295)),
    (2, True, (-2, 1)), (2, False, (0, 3)), (4, True, (-8, 7)), (4, False, (0, 15)),
])
def test_qrange_known_values(bits, signed, expected):
    """The ranges of common signed and unsigned widths."""
    assert qrange(bits, signed) == expected


@pytest.mark.parametrize("dtype, bits, signed", [
    (torch.int8, 8, True), (torch.uint8, 8, False), (torch.int16, 16, True),
    (torch.int32, 32, True),
])
def test_qrange_agrees_with_torch_iinfo(dtype, bits, signed):
    """qrange matches torch's own integer dtypes."""
    info = torch.iinfo(dtype)
    assert qrange(bits, signed) == (info.min, info.max)


@pytest.mark.parametrize("bits", range(2, 33))
def test_qrange_shape_of_ranges(bits):
    """Each range holds exactly 2^b integers; signed is symmetric up to one, unsigned
    starts at 0; the default is signed."""
    lo, hi = qrange(bits)
    assert (lo, hi) == qrange(bits, True)
    assert hi - lo + 1 == 1 << bits and lo == -(hi + 1)
    ulo, uhi = qrange(bits, signed=False)
    assert ulo == 0 and uhi + 1 == 1 << bits


@pytest.mark.parametrize("bits", [-8, 0, 1, 33, 64])
def test_qrange_and_saturate_reject_unsupported_bits(bits):
    """Bit-widths outside [2, 32] raise ValueError in qrange and saturate."""
    with pytest.raises(ValueError):
        qrange(bits)
    with pytest.raises(ValueError):
        qrange(bits, signed=False)
    with pytest.raises(ValueError):
        saturate(t64([0]), bits)


@HYP
@given(xs=int_lists(INT64_MIN, INT64_MAX),
       bits=st.one_of(st.sampled_from([8, 16, 32]), st.integers(2, 32)),
       signed=st.booleans())
def test_saturate_matches_reference(xs, bits, signed):
    """saturate(x, b, signed) = min(max(x, lo), hi) for the b-bit range."""
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    assert_exact(saturate(t64(xs), bits, signed), [min(max(x, lo), hi) for x in xs])


@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("signed", [True, False])
def test_saturate_edges(bits, signed):
    """All int64 edges (around every power of two and every integer extreme)."""
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    x = t64(INT64_EDGES).reshape(-1, 1)
    before = x.clone()
    got = saturate(x, bits, signed)
    assert_exact(got, [[min(max(v, lo), hi)] for v in INT64_EDGES])
    assert torch.equal(x, before)  # input not modified


@pytest.mark.parametrize("bits, signed, lo, hi", [
    (8, True, INT8_MIN, INT8_MAX), (16, True, INT16_MIN, INT16_MAX), (8, False, 0, 255),
])
def test_saturate_keeps_in_range_values(bits, signed, lo, hi):
    """Every value already inside the range is returned unchanged."""
    values = list(range(lo, hi + 1))
    assert_exact(saturate(t64(values), bits, signed), values)


# ----------------------------------------------------------------------------------
# bit_length / isqrt
# ----------------------------------------------------------------------------------

NONNEG_EDGES = edges(0, INT64_MAX)
NONNEG = st.one_of(st.integers(0, INT64_MAX), st.sampled_from(NONNEG_EDGES),
                   st.integers(0, 63).flatmap(lambda b: st.integers(0, (1 << b) - 1)))


@HYP
@given(xs=st.lists(NONNEG, min_size=1, max_size=16))
def test_bit_length_matches_int_bit_length(xs):
    """bit_length(x) = int.bit_length(x) for random non-negative int64."""
    assert_exact(bit_length(t64(xs)), [x.bit_length() for x in xs])


def test_bit_length_edges():
    """0, 1, 2^i +- a few for every i, and 2^63 - 1 (63 bits)."""
    assert_exact(bit_length(t64(NONNEG_EDGES)), [x.bit_length() for x in NONNEG_EDGES])
    assert int(bit_length(t64([INT64_MAX]))) == 63
    assert int(bit_length(t64([0]))) == 0


def test_bit_length_rejects_negative():
    """Any negative element raises ValueError."""
    with pytest.raises(ValueError):
        bit_length(t64([5, -1, 7]))
    with pytest.raises(ValueError):
        bit_length(t64([INT64_MIN]))


@HYP
@given(xs=st.lists(NONNEG, min_size=1, max_size=16))
def test_isqrt_matches_math_isqrt(xs):
    """isqrt(x) = math.isqrt(x) for random non-negative int64 (log-uniform too)."""
    assert_exact(isqrt(t64(xs)), [math.isqrt(x) for x in xs])


def _square_neighbourhoods() -> list[int]:
    k_max = math.isqrt(INT64_MAX)
    ks = set(range(0, 3000)) | {k_max - d for d in range(8)}
    for i in range(32):
        ks |= {(1 << i) + d for d in range(-3, 4)}
    rng = random.Random(1234)
    ks |= {rng.randint(0, k_max) for _ in range(3000)}
    xs = set()
    for k in ks:
        if 0 <= k <= k_max:
            xs |= {k * k - 1, k * k, k * k + 1}
    return sorted(x for x in xs if 0 <= x <= INT64_MAX)


def test_isqrt_perfect_squares_and_neighbours():
    """k^2 - 1, k^2 and k^2 + 1 for small k, k near 2^i, random k and k up to
    isqrt(2^63 - 1) = 3037000499, in one tensor."""
    xs = _square_neighbourhoods()
    assert_exact(isqrt(t64(xs)), [math.isqrt(x) for x in xs])


def test_isqrt_edges_and_extremes():
    """Every non-negative int64 edge, and isqrt(2^63 - 1) = 3037000499."""
    assert_exact(isqrt(t64(NONNEG_EDGES)), [math.isqrt(x) for x in NONNEG_EDGES])
    assert_exact(isqrt(t64([INT64_MAX])), [3037000499])
    assert_exact(isqrt(t64([0, 1, 2, 3, 4])), [0, 1, 1, 1, 2])


def test_isqrt_exhaustive_small_and_random_sweep():
    """All x in [0, 2^16], then 2000 seeded random x below 2^b for every b in 1..63."""
    small = list(range((1 << 16) + 1))
    assert_exact(isqrt(t64(small)), [math.isqrt(x) for x in small])
    gen = torch.Generator().manual_seed(0)
    sweep = torch.cat([torch.randint(0, min(1 << b, INT64_MAX), (2000,), generator=gen,
                                     dtype=torch.int64) for b in range(1, 64)])
    assert_exact(isqrt(sweep), [math.isqrt(x) for x in sweep.tolist()])


def _newton_moves(x: int) -> int:
    """Newton steps that change the root of ``x`` from ``2^ceil(n/2)`` (isqrt.py), in ints."""
    root, moves = 1 << ((x.bit_length() + 1) >> 1), 0
    while (step := (root + x // max(root, 1)) >> 1) < root:
        root, moves = step, moves + 1
    assert root == math.isqrt(x)
    return moves


def test_newton_steps_bound_the_moves_of_every_width():
    """``newton_steps(B)`` (the e_{i+1} = e_i^2 / (2 (1 + e_i)) bound) is at least the
    moves of the slowest inputs below 2^B: just above a power of two (start twice the
    root), just below one, squares and their neighbours, random values."""
    assert [newton_steps(b) for b in (0, 1, 8, 16, 31, 32, 63)] == [2, 2, 3, 4, 5, 5, 6]
    rng = random.Random(7)
    for bits in range(1, 64):
        top = 1 << bits
        xs = {(1 << (n - 1)) + d for n in range(1, bits + 1) for d in range(40)}
        xs |= {(1 << n) - 1 - d for n in range(1, bits + 1) for d in range(40)}
        xs |= {k * k + d for k in (rng.randrange(math.isqrt(top - 1) + 1) for _ in range(200))
               for d in (-1, 0, 1)}
        xs |= {rng.randrange(top) for _ in range(200)}
        assert max(_newton_moves(x) for x in xs if 0 <= x < top) <= newton_steps(bits)
    with pytest.raises(ValueError, match="0 to 63 bits"):
        newton_steps(64)


def test_isqrt_refuses_inputs_beyond_the_bits_promised_that_do_not_converge():
    """Three steps (8 bits) settle every root below 2^8, not that of 2^62 (five moves)."""
    assert_exact(isqrt(t64([0, 255, 65535]), 8), [0, 15, 255])
    with pytest.raises(ValueError, match="did not converge in 3 steps: an input is not "
                                         "below the 2\\^8 promised"):
        isqrt(t64([3, 1 << 62]), 8)


def test_isqrt_keeps_shape():
    """A 2-D input gives a 2-D int64 output of the same shape."""
    xs = [[0, 15, 16], [INT64_MAX, 99, 100]]
    assert_exact(isqrt(t64(xs)), [[math.isqrt(v) for v in row] for row in xs])


def test_isqrt_rejects_negative():
    """A negative element raises ValueError."""
    with pytest.raises(ValueError):
        isqrt(t64([4, -1]))
    with pytest.raises(ValueError):
        isqrt(t64([INT64_MIN]))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.float64, torch.float32])
def test_isqrt_rejects_wrong_dtype(dtype):
    """Only int64 tensors are accepted: TypeError otherwise."""
    with pytest.raises(TypeError):
        isqrt(torch.tensor([4, 9], dtype=dtype))


# ----------------------------------------------------------------------------------
# horner / horner_bits
# ----------------------------------------------------------------------------------

def ref_horner(t: int, coeffs: list[int], shift: int) -> tuple[int, list[int]]:
    """acc = c_d; acc = floor(acc t / 2^g) + c_k; returns p and every product acc t."""
    acc = coeffs[-1]
    products = []
    for c in reversed(coeffs[:-1]):
        products.append(acc * t)
        acc = ref_floor_div(acc * t, 1 << shift) + c
    return acc, products


def ref_horner_bits(c_max: list[int], t_max: int, shift: int) -> list[int]:
    """The docstring's bound: |acc_d| <= C_d, |acc_k| <= ceil(|acc_{k+1}| T / 2^g) + C_k,
    as signed widths of each product, then of the result."""
    bound = c_max[-1]
    widths = []
    for c in reversed(c_max[:-1]):
        widths.append(ref_signed_bits(bound * t_max))
        bound = math.ceil(Fraction(bound * t_max, 1 << shift)) + c
    widths.append(ref_signed_bits(bound))
    return widths


@st.composite
def horner_cases(draw, degree_max=4, t_bits_max=12, coef_bits_max=16, shift_max=20,
                 t_scale=1):
    """(t values, coefficients (int or per-element list), T, shift). t lies in
    [-t_scale T - t_scale, t_scale T + t_scale] (t_scale = 1: inside the domain)."""
    n = draw(st.integers(1, 6))
    t_max = draw(st.integers(0, 1 << draw(st.integers(0, t_bits_max))))
    lim = t_max if t_scale == 1 else t_scale * t_max + t_scale
    ts = draw(st.lists(ints(-lim, lim), min_size=n, max_size=n))
    shift = draw(st.one_of(st.just(0), st.integers(0, shift_max)))
    coeffs = []
    for _ in range(draw(st.integers(0, degree_max)) + 1):
        cb = draw(st.integers(0, coef_bits_max))
        if draw(st.booleans()):
            coeffs.append(draw(st.lists(ints(-(1 << cb), 1 << cb), min_size=n, max_size=n)))
        else:
            coeffs.append(draw(ints(-(1 << cb), 1 << cb)))
    return ts, coeffs, t_max, shift


def _horner_args(coeffs):
    call = [t64(c) if isinstance(c, list) else c for c in coeffs]
    c_max = [max(abs(v) for v in c) if isinstance(c, list) else abs(c) for c in coeffs]
    return call, c_max


def _element_coeffs(coeffs, i):
    return [c[i] if isinstance(c, list) else c for c in coeffs]


@HYP
@given(case=horner_cases())
def test_horner_matches_reference_and_fits_declared_widths(case):
    """Inside the domain: horner_bits equals the documented bound; horner equals the
    Python-int recurrence exactly (scalar and per-element coefficients, shift 0 and
    > 0); every true product fits its own width; under overflow_checks the declared
    widths are the bounds and every observed magnitude fits its declared width.
    If a bound exceeds 64 bits, horner raises IntegerOverflowError even unchecked."""
    ts, coeffs, t_max, shift = case
    call, c_max = _horner_args(coeffs)
    widths = ref_horner_bits(c_max, t_max, shift)
    assert horner_bits(call, t_max, shift) == widths
    if max(widths) > 64:
        with pytest.raises(IntegerOverflowError):
            horner(t64(ts), call, t_max, shift=shift)
        return
    refs = [ref_horner(t, _element_coeffs(coeffs, i), shift) for i, t in enumerate(ts)]
    for value, products in refs:  # the theory: every true intermediate fits its bound
        assert all(fits(p, w) for p, w in zip(products, widths))
        assert fits(value, widths[-1])
    with overflow_checks() as log:
        got = horner(t64(ts), call, t_max, what="h", shift=shift)
    assert_exact(got, [value for value, _ in refs])
    assert log.declared["h.t"] == ref_signed_bits(t_max)
    assert log.declared["h.sum"] == widths[-1]
    if len(coeffs) > 1:
        assert log.declared["h.product"] == max(widths[:-1])
    else:
        assert "h.product" not in log.declared
    for label, bits in log.declared.items():
        assert ref_signed_bits(log.observed[label]) <= bits, label


@HYP
@given(ts=int_lists(-1000, 1000), coeffs=st.lists(ints(-(1 << 10), 1 << 10), min_size=1,
                                                  max_size=5))
def test_horner_shift_zero_is_the_plain_polynomial(ts, coeffs):
    """With shift 0, horner(t) = sum_k c_k t^k exactly."""
    got = horner(t64(ts), coeffs, 1000)
    assert_exact(got, [sum(c * t ** k for k, c in enumerate(coeffs)) for t in ts])


def test_horner_known_values_and_tensor_coefficients():
    """1 + 2t + 3t^2 on a few points; a 2-D t with a per-element coefficient tensor;
    a shift-4 fixed-point evaluation."""
    assert_exact(horner(t64([0, 1, 2, -3]), [1, 2, 3], 3), [1, 6, 17, 22])
    t = t64([[1, 2], [3, -4]])
    c1 = t64([[1, -1], [2, 5]])
    assert_exact(horner(t, [c1, 3], 4), [[4, 5], [11, -7]])
    # acc = floor(5 * t / 16) + 7  for t = 0, 1, 15, -1, -16
    assert_exact(horner(t64([0, 1, 15, -1, -16]), [7, 5], 16, shift=4), [7, 7, 11, 6, 2])


@pytest.mark.parametrize("coeffs, t_max", [
    ([3, 5, 7], 100), ([1, 1, 1, 1, 1], 1 << 12), ([0, (1 << 31) - 1], 1 << 31),
    ([2, 9], 1), ([7], 0), ([1 << 20, 1 << 10, 1], (1 << 12) - 1),
])
def test_horner_widths_are_tight(coeffs, t_max):
    """Shift 0, positive maximal coefficients, t = T: every accumulator reaches its
    bound, so the declared widths are exactly the observed widths (not wider)."""
    with overflow_checks() as log:
        horner(t64([t_max, 0, -t_max]), coeffs, t_max, what="h")
    for label, bits in log.declared.items():
        assert ref_signed_bits(log.observed[label]) == bits, label


@HYP
@given(case=horner_cases(degree_max=3, t_bits_max=10, coef_bits_max=14, t_scale=4))
def test_horner_outside_domain_raises_iff_a_bound_is_exceeded(case):
    """With t up to 4T + 4 (products kept far from 2^63 so nothing wraps): inside
    overflow_checks horner raises IntegerOverflowError exactly when |t| > T or a true
    intermediate leaves its declared width, and otherwise returns the exact value."""
    ts, coeffs, t_max, shift = case
    call, c_max = _horner_args(coeffs)
    widths = ref_horner_bits(c_max, t_max, shift)
    assume(max(widths) <= 64)
    refs = [ref_horner(t, _element_coeffs(coeffs, i), shift) for i, t in enumerate(ts)]
    assume(all(abs(p) < 1 << 62 for _, products in refs for p in products))
    should_raise = any(abs(t) > t_max for t in ts) or any(
        not all(fits(p, w) for p, w in zip(products, widths)) or not fits(v, widths[-1])
        for v, products in refs)
    with overflow_checks():
        if should_raise:
            with pytest.raises(IntegerOverflowError):
                horner(t64(ts), call, t_max, shift=shift)
        else:
            assert_exact(horner(t64(ts), call, t_max, shift=shift), [v for v, _ in refs])


@pytest.mark.parametrize("coeffs, t_max, shift", [
    ([1, 2, 3], 100, 0), ([0, 1], 5, 0), ([5, -3, 1 << 10], 1 << 12, 8), ([7], 3, 0),
    ([1, 1], 0, 0), ([0, 1 << 20], (1 << 31) - 1, 4),
])
def test_horner_t_outside_domain_raises_only_when_checked(coeffs, t_max, shift):
    """t = +-(T + 1) (just outside the stated domain, still inside the width of t) and
    t = +-2^(w-1) (w = signed_bits(T)) raise IntegerOverflowError inside
    overflow_checks, even among in-domain values; outside it the exact value is
    returned."""
    w = ref_signed_bits(t_max)
    for t in (t_max + 1, -t_max - 1, 1 << (w - 1), -(1 << (w - 1)) - 1):
        with overflow_checks(), pytest.raises(IntegerOverflowError):
            horner(t64([0, t]), coeffs, t_max, shift=shift)
        assert_exact(horner(t64([t]), coeffs, t_max, shift=shift),
                     [ref_horner(t, coeffs, shift)[0]])


def test_horner_outside_domain_never_wraps_silently():
    """t = 2^32 - 1 > T = 2^31 with c_1 = 2^32 - 1: the true product (2^32 - 1)^2
    exceeds int64, so overflow_checks must raise (or the value must be exact).
    Regression: t was only checked against signed_bits(T), and a product declared
    64 bits wide cannot reveal an int64 wrap."""
    t, coeffs, t_max = (1 << 32) - 1, [0, (1 << 32) - 1], 1 << 31
    exact = ref_horner(t, coeffs, 0)[0]
    with overflow_checks():
        try:
            got = horner(t64([t]), coeffs, t_max)
        except IntegerOverflowError:
            return
    assert int(got) == exact


def test_horner_rejects_empty_coefficients():
    """A polynomial needs at least one coefficient: ValueError."""
    with pytest.raises(ValueError):
        horner(t64([1]), [], 1)


# ----------------------------------------------------------------------------------
# width.py: signed_bits, declare, overflow_checks, record_widths, WidthLog
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_abs, bits", [
    (0, 1), (1, 2), (2, 3), (3, 3), (4, 4), (127, 8), (128, 9), (255, 9),
    (INT32_MAX, 32), (1 << 31, 33), (INT64_MAX, 64), (1 << 63, 65),
])
def test_signed_bits_values(max_abs, bits):
    """Known widths (sign included) holding [-max_abs, max_abs]."""
    assert signed_bits(max_abs) == bits


@HYP
@given(n=st.one_of(st.integers(0, 1 << 70), st.sampled_from(edges(0, INT64_MAX))))
def test_signed_bits_is_minimal(n):
    """signed_bits(n) holds -n and n, and one bit fewer does not hold n."""
    b = signed_bits(n)
    assert fits(n, b) and fits(-n, b)
    assert b == 1 or not fits(n, b - 1)


@pytest.mark.parametrize("max_abs", [-1, -128, INT64_MIN])
def test_signed_bits_rejects_negative(max_abs):
    """A negative bound raises ValueError."""
    with pytest.raises(ValueError):
        signed_bits(max_abs)


@HYP
@given(bits=st.integers(1, 64), xs=int_lists(INT64_MIN, INT64_MAX, max_size=4))
def test_declare_checks_exactly_the_declared_range(bits, xs):
    """Inside overflow_checks declare raises iff some value leaves
    [-2^(b-1), 2^(b-1) - 1]; outside it never raises. Both return t itself."""
    t = t64(xs)
    outside = not all(fits(x, bits) for x in xs)
    with overflow_checks():
        if outside:
            with pytest.raises(IntegerOverflowError):
                declare(t, bits, "x")
        else:
            assert declare(t, bits, "x") is t
    assert declare(t, bits, "x") is t


@HYP
@given(bits=st.integers(1, 64), max_abs=st.one_of(st.integers(0, 1 << 64), ints(0, INT64_MAX)),
       xs=int_lists(INT64_MIN, INT64_MAX, max_size=4))
def test_declare_with_max_abs_checks_the_tighter_range(bits, max_abs, xs):
    """With max_abs, declare raises inside overflow_checks iff a value leaves the b-bit
    range or |x| > max_abs; it never raises outside, and max_abs never widens."""
    bad = any(not fits(x, bits) or abs(x) > max_abs for x in xs)
    with overflow_checks():
        if bad:
            with pytest.raises(IntegerOverflowError):
                declare(t64(xs), bits, "x", max_abs=max_abs)
        else:
            declare(t64(xs), bits, "x", max_abs=max_abs)
    declare(t64(xs), bits, "x", max_abs=max_abs)


def test_declare_max_abs_boundaries():
    """max_abs = 5 in 8 bits: +-5 pass, +-6 raise; the log keeps the bit width."""
    with overflow_checks() as log:
        declare(t64([-5, 5]), 8, "x", max_abs=5)
        for bad in (6, -6):
            with pytest.raises(IntegerOverflowError):
                declare(t64([0, bad]), 8, "x", max_abs=5)
    assert log.declared == {"x": 8}
    assert log.observed == {"x": 5}


@pytest.mark.parametrize("bits", [1, 2, 8, 16, 32, 63, 64])
def test_declare_boundaries(bits):
    """The two range ends pass, one past either end raises (inside checks only)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    with overflow_checks():
        declare(t64([lo, hi]), bits, "ok")
        if bits < 64:
            for bad in (lo - 1, hi + 1):
                with pytest.raises(IntegerOverflowError):
                    declare(t64([0, bad]), bits, "bad")
    declare(t64([lo - 1 if bits < 64 else lo]), bits, "unchecked")


@pytest.mark.parametrize("bits", [65, 66, 100, 128])
def test_declare_wider_than_int64_always_raises(bits):
    """A declared width above 64 bits raises with and without checks, even for
    empty or in-range tensors."""
    with pytest.raises(IntegerOverflowError):
        declare(t64([0]), bits, "wide")
    with pytest.raises(IntegerOverflowError):
        declare(torch.empty(0, dtype=torch.int64), bits, "wide")
    with overflow_checks(), pytest.raises(IntegerOverflowError):
        declare(t64([1]), bits, "wide")


def test_declare_empty_tensor_inside_checks():
    """An empty tensor passes any width; its width is declared, nothing observed."""
    with overflow_checks() as log:
        declare(torch.empty(0, dtype=torch.int64), 2, "empty")
    assert log.declared == {"empty": 2}
    assert log.observed == {}


def test_overflow_checks_ends_with_its_block():
    """After the block (normally or by an exception) declare no longer checks."""
    big = t64([1000])
    with pytest.raises(IntegerOverflowError):
        with overflow_checks():
            declare(big, 8, "x")
    assert declare(big, 8, "x") is big
    with overflow_checks():
        pass
    assert declare(big, 8, "x") is big


def test_overflow_checks_nesting():
    """An inner block's exit keeps the outer block checking; record_widths inside
    overflow_checks does not switch checks off; checks inside record_widths end
    with their block."""
    big = t64([1000])
    with overflow_checks() as outer:
        with overflow_checks() as inner:
            declare(t64([5]), 8, "a")
        with pytest.raises(IntegerOverflowError):
            declare(big, 8, "b")
        with record_widths():
            with pytest.raises(IntegerOverflowError):
                declare(big, 8, "c")
    assert inner.declared == {"a": 8} and "a" in outer.declared
    with record_widths():
        with overflow_checks():
            with pytest.raises(IntegerOverflowError):
                declare(big, 8, "d")
        declare(big, 8, "e")  # checking is off again


def test_overflow_checks_uses_the_given_log():
    """overflow_checks(log) yields that log and records max width and max |value|."""
    log = WidthLog()
    with overflow_checks(log) as got:
        assert got is log
        declare(t64([3, -100]), 9, "v")
        declare(t64([50]), 12, "v")
        declare(t64([-7]), 8, "v")
        declare(t64([INT64_MAX, 0]), 64, "w")
    assert log.declared == {"v": 12, "w": 64}
    assert log.observed == {"v": 100, "w": INT64_MAX}


def test_widthlog_observes_int64_min():
    """The observed magnitude of -2^63 is 2^63 (regression: t.abs() wrapped to -2^63
    and was recorded as 0)."""
    with overflow_checks() as log:
        declare(t64([INT64_MIN]), 64, "w")
    assert log.observed == {"w": 1 << 63}


def test_record_widths_records_without_checking():
    """record_widths logs declared widths only and never raises for large values."""
    with record_widths() as log:
        out = declare(t64([1 << 40]), 8, "x")
        declare(t64([1]), 16, "x")
        declare(t64([1]), 4, "y.requant")
    assert int(out) == 1 << 40
    assert log.declared == {"x": 16, "y.requant": 4}
    assert log.observed == {}
    declare(t64([1]), 20, "after")  # the log is detached after the block
    assert "after" not in log.declared


def test_widthlog_widest_and_requant():
    """widest excludes labels ending in '.requant'; requant reports only those."""
    log = WidthLog(declared={"a.sum": 20, "b.requant": 63, "c.product": 34,
                             "d.requant.in": 40, "e.requant": 50})
    assert log.widest == 40
    assert log.requant == 63
    bare = WidthLog(declared={"requant": 45, "x.requant": 30, "a.sum": 20})
    assert bare.widest == 45  # only labels ending in '.requant' are excluded
    assert bare.requant == 30
    only_requant = WidthLog(declared={"x.requant": 45})
    assert only_requant.widest == 0 and only_requant.requant == 45
    empty = WidthLog()
    assert empty.widest == 0 and empty.requant == 0


def test_widthlog_from_kernels():
    """A requantize and a horner under one log: widest is the horner's widest width,
    requant is the requantization product's width."""
    with overflow_checks() as log:
        horner(t64([3, -3]), [1, 2, 3], 3, what="p")
        requantize(t64([5]), 1 << 20, 4, x_bits=16, what="q")
    assert log.requant == ref_signed_bits((1 << 20) << 15)
    assert log.widest == max(b for k, b in log.declared.items() if not k.endswith(".requant"))
    assert log.widest == 16  # 'q.in' (x_bits) beats the horner's widths
    assert set(log.declared) == {"p.t", "p.product", "p.sum", "q.in", "q.requant"}
