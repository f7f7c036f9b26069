"""What every prepared kernel promises: integer in, integer out, inside the output
range, clear errors for bad inputs, and no intermediate wider than declared over the
whole documented input domain."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intvit.approx import REGISTRY, build
from intvit.arith import IntegerOverflowError, overflow_checks, qrange

VARIANTS = [(op, family) for op in REGISTRY for family in REGISTRY[op]]
INTEGER_VARIANTS = [(op, f) for op, f in VARIANTS if f != "float"]


def prepare(op, name, scale=0.0625, bits=8, out_bits=8, dim=16):
    extra = {"dim": dim} if op == "layernorm" else {}
    return build(op, name).prepare(scale, bits, out_bits, **extra)


def domain_rows(op, bits, rows=8, length=16, seed=0):
    lo, hi = qrange(bits)
    gen = torch.Generator().manual_seed(seed)
    if op == "gelu":
        return torch.arange(lo, hi + 1)
    if op == "exp":
        return torch.arange(lo, 1)
    return torch.randint(lo, hi + 1, (rows, length), generator=gen)


@pytest.mark.parametrize("op,family", VARIANTS)
def test_output_is_int64_in_range_and_shape(op, family):
    kernel = prepare(op, family)
    q = domain_rows(op, 8)
    out = kernel(q)
    lo, hi = kernel.out_range
    assert out.dtype == torch.int64 and out.shape == q.shape
    assert int(out.min()) >= lo and int(out.max()) <= hi


@pytest.mark.parametrize("op,family", VARIANTS)
def test_accepts_any_integer_dtype(op, family):
    kernel = prepare(op, family)
    q = domain_rows(op, 8)
    assert torch.equal(kernel(q.to(torch.int8)), kernel(q))
    assert torch.equal(kernel(q.to(torch.int32)), kernel(q))


@pytest.mark.parametrize("op,family", VARIANTS)
def test_rejects_floats_and_out_of_domain_inputs(op, family):
    kernel = prepare(op, family)
    q = domain_rows(op, 8)
    with pytest.raises(TypeError, match="integer tensors"):
        kernel(q.float())
    with pytest.raises(ValueError, match="outside its 8-bit domain"):
        kernel(q + 1000)


@pytest.mark.parametrize("op", ["softmax", "layernorm"])
def test_row_ops_reject_empty_rows(op):
    with pytest.raises(ValueError, match="rows"):
        prepare(op, "ivit")(torch.zeros(3, 0, dtype=torch.int64))


def test_layernorm_checks_row_length_and_affine_shape():
    with pytest.raises(ValueError, match="rows of 16"):
        prepare("layernorm", "ivit")(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"weight must have shape \(16,\)"):
        build("layernorm", "ivit").prepare(0.1, dim=16, weight=torch.ones(8))


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_bad_scales_are_rejected(scale):
    with pytest.raises(ValueError, match="in_scale must be a positive finite number"):
        build("gelu", "ivit").prepare(scale)


@pytest.mark.parametrize("bits", [1, 33])
def test_bad_bit_widths_are_rejected(bits):
    with pytest.raises(ValueError, match="bit-width"):
        build("gelu", "ppoly").prepare(0.1, in_bits=bits)


@pytest.mark.parametrize("op,family", INTEGER_VARIANTS)
@pytest.mark.parametrize("bits", [8, 16])
@settings(max_examples=15, deadline=None)
@given(log2_scale=st.floats(-7.0, 1.0), seed=st.integers(0, 2**16))
def test_declared_widths_hold_on_the_whole_domain(op, family, bits, log2_scale, seed):
    """Within overflow_checks, a value outside its declared width raises; so this run
    proves every intermediate fits for every input of the domain (elementwise ops are
    swept exhaustively, row ops on random rows plus the two extreme rows)."""
    scale = 2.0 ** (log2_scale - (bits - 8))
    try:
        kernel = prepare(op, family, scale=scale, bits=bits, out_bits=bits)
        q = domain_rows(op, bits, seed=seed)
        kernel(q[:1])
    except ValueError as err:  # a constant that cannot fit: must say what to change
        assert "use n <=" in str(err) or "no n fits" in str(err)
        return
    if q.dim() == 2:
        lo, hi = qrange(bits)
        q = torch.cat([q, torch.full((1, 16), lo), torch.full((1, 16), hi),
                       torch.tensor([[lo, hi] * 8])])
    with overflow_checks() as log:
        kernel(q)
    for what, bits in log.declared.items():
        assert log.observed.get(what, 0) < 1 << (bits - 1), what
    assert kernel.cost(16).widest_bits == log.widest


@pytest.mark.parametrize("op,family", [("gelu", "ivit"), ("gelu", "ibert"), ("gelu", "ppoly"),
                                       ("softmax", "ppoly"), ("layernorm", "ivit"),
                                       ("layernorm", "ibert"), ("exp", "ivit"),
                                       ("exp", "ppoly")])
def test_widest_intermediate_fits_int32_at_8_bits(op, family):
    """The 8-bit configurations that I-ViT and the extension run are truly 32-bit."""
    assert prepare(op, family).cost(197 if op == "softmax" else 16).widest_bits <= 32


def test_ibert_exp_declares_int64():
    """I-BERT's n=30 needs more than 32 bits; the cost says so instead of hiding it."""
    assert prepare("exp", "ibert").cost().widest_bits > 32
    assert prepare("exp", "ibert_n_15").cost().widest_bits <= 32


def test_too_wide_constants_say_which_parameter_fits():
    with pytest.raises(ValueError, match="ivit_n_18"):
        build("gelu", "ivit").prepare(0.05 / 256, in_bits=16, out_bits=16)
    kernel = build("softmax", "ivit").prepare(0.05 / 256, in_bits=16, out_bits=16)
    with pytest.raises(ValueError, match="ivit_n_12"):
        kernel(torch.zeros(2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="ibert_n_27"):
        build("exp", "ibert").prepare(0.05 / 256, in_bits=16, out_bits=16)


def test_overflow_outside_the_domain_is_caught():
    """A kernel driven past its documented domain fails loudly under overflow_checks."""
    kernel = prepare("gelu", "ibert")
    kernel.in_bits = 4  # lie about the domain: declared widths now too small for 8-bit
    with pytest.raises(IntegerOverflowError):
        with overflow_checks():
            kernel.compute(torch.arange(-128, 128))


def _run_checked(op, name, scale, bits):
    kernel = prepare(op, name, scale=scale, bits=bits, out_bits=bits)
    q = domain_rows(op, bits, rows=4)
    with overflow_checks():
        out = kernel(q)
    lo, hi = kernel.out_range
    assert int(out.min()) >= lo and int(out.max()) <= hi


@pytest.mark.parametrize("op,family", INTEGER_VARIANTS)
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("scale", [2.0 ** -20, 2.0 ** -12, 2.0 ** 10])
def test_extreme_scales_run_or_name_a_parameter_that_does(op, family, bits, scale):
    """At the smallest and largest scales a kernel either runs with every declared
    width respected, or refuses with a message naming a variant that then runs."""
    try:
        _run_checked(op, family, scale, bits)
    except ValueError as err:
        match = re.search(r"'((?:ivit|ibert|ppoly)_[\w-]+)'", str(err))
        assert match, f"no suggested variant in: {err}"
        _run_checked(op, match.group(1), scale, bits)


@pytest.mark.parametrize("op,family", [v for v in INTEGER_VARIANTS if v[0] != "layernorm"])
@pytest.mark.parametrize("bits", [8, 16])
def test_tabulated_kernels_give_the_same_integers(op, family, bits):
    """Training answers from tables built by the kernel itself; every input of the
    domain (and random softmax rows with the extreme values) must agree exactly."""
    try:
        kernel = prepare(op, family, scale=2.0 ** (-4 - (bits - 8)), bits=bits, out_bits=bits)
        q = domain_rows(op, bits, rows=16, length=49)
        expected = kernel(q)
    except ValueError:
        return  # a 16-bit default that does not fit is tested elsewhere
    if q.dim() == 2:
        lo, hi = qrange(bits)
        q[0, :2] = torch.tensor([lo, hi])
        expected = kernel(q)
    assert torch.equal(kernel(q, tabulated=True), expected)
