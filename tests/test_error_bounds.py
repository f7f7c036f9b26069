"""Errors against the exact float function, bounded so that a change that makes an
approximation worse fails. Bounds are the measured errors (docs/analysis) plus about
10%; the `float` variant is bounded by its output rounding alone."""

import pytest

from intvit.analysis.domains import Domain
from intvit.analysis.errors import analyze

# (op, bits, variant) -> (max abs error, mean abs error), real units.
BOUNDS = {
    ("gelu", 8, "ivit"): (0.21, 0.058),
    ("gelu", 8, "ibert"): (0.053, 0.0078),
    ("gelu", 8, "ppoly"): (0.037, 0.0071),
    ("gelu", 8, "ppoly_bounds_opt"): (0.034, 0.0071),
    ("exp", 8, "ivit"): (0.069, 0.0060),
    ("exp", 8, "ibert"): (0.031, 0.0083),
    ("exp", 8, "ppoly"): (0.0043, 0.0012),
    ("softmax", 8, "ivit"): (0.029, 0.00080),
    ("softmax", 8, "ibert"): (0.10, 0.0011),
    ("softmax", 8, "ppoly"): (0.0043, 0.00071),
    ("layernorm", 8, "ivit"): (0.35, 0.077),
    ("layernorm", 8, "ibert"): (0.35, 0.077),
    ("gelu", 16, "ibert"): (0.021, 0.0037),
    ("gelu", 16, "ppoly"): (0.0063, 0.00042),
    ("gelu", 16, "ppoly_bounds_opt"): (0.00062, 0.000069),
    ("exp", 16, "ivit"): (0.049, 0.0060),
    ("exp", 16, "ibert_n_27"): (0.0028, 0.00026),
    ("exp", 16, "ppoly_bounds_opt"): (0.000063, 0.000017),
    ("softmax", 16, "ibert_n_27"): (0.00054, 0.000012),
    ("softmax", 16, "ppoly"): (0.0038, 0.000046),
    ("layernorm", 16, "ivit"): (0.0016, 0.00035),
    ("layernorm", 16, "ibert"): (0.085, 0.019),
}


def _analysis(op, bits, names):
    return analyze(op, ["float", *names], Domain(op, bits=bits, rows=64), bits,
                   progress=False)


@pytest.mark.parametrize("op,bits", sorted({(op, bits) for op, bits, _ in BOUNDS}))
def test_error_bounds(op, bits):
    names = [name for (o, b, name) in BOUNDS if (o, b) == (op, bits)]
    analysis = _analysis(op, bits, names)
    # exp and softmax saturate 1.0 to 1 - LSB (ops.py): one LSB there, half elsewhere.
    rounding = analysis.lsb if op in ("exp", "softmax") else analysis.lsb / 2
    assert analysis.variants["float"].max_abs_error <= rounding * (1 + 1e-9)
    for name in names:
        result = analysis.variants[name]
        assert result.error is None, result.error
        max_bound, mean_bound = BOUNDS[(op, bits, name)]
        assert result.max_abs_error <= max_bound, (name, result.max_abs_error)
        assert result.mean_abs_error <= mean_bound, (name, result.mean_abs_error)


def test_ppoly_integer_matches_its_float_backend_to_one_lsb():
    """Rounding the coefficients to integers costs at most one output LSB."""
    analysis = _analysis("gelu", 8, ["ppoly", "ppoly_backend_float"])
    diff = (analysis.variants["ppoly"].output
            - analysis.variants["ppoly_backend_float"].output).abs()
    assert float(diff.max()) <= analysis.lsb * (1 + 1e-9)


def test_ibert_gelu_with_ibert_shift_loses_the_erf_at_8_bits():
    """I-BERT's n=14 was made for 32-bit inputs: at 8 bits it flattens the erf term,
    which is why n=auto is the default (docs/arithmetic.md)."""
    analysis = _analysis("gelu", 8, ["ibert", "ibert_n_14"])
    assert analysis.variants["ibert_n_14"].max_abs_error > 4 * analysis.variants["ibert"].max_abs_error
