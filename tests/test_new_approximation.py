"""A new approximation is written in one place, as docs/architecture.md ("Adding a new
approximation") says: a ``Kernel`` and an ``Approx`` registered with ``@register``.

The made-up GELU below exists only in this file. Once registered, its name is accepted
where every approximation's is (``build``, ``QuantConfig``), a model built with it
exports (its elementwise kernel is frozen as a table, no engine code knows it), and the
int and onnx engines give the integer logits of the model's ``forward_int``, bit for bit.
"""

import pytest
import torch
from conftest import SMALL, randomize

from intvit.approx import build
from intvit.approx.base import REQUANT_COST, Approx, Kernel, Param, plus, positive_int
from intvit.approx.registry import REGISTRY, UnknownApproximation, register
from intvit.engine import export_program
from intvit.engine.engines import make_engine
from intvit.models import build_quant_model, model_config
from intvit.quant import Mode, QuantConfig


class LeakyReluKernel(Kernel):
    """``q >= 0 ? q : floor(q / 2^shift)``, then the shared output stage (requantize to
    the output scale, saturate)."""

    def __init__(self, shift: int, in_scale: float, in_bits: int, out_bits: int,
                 out_scale: float | None) -> None:
        super().__init__("gelu", in_scale, in_bits, out_bits, out_scale)
        self.shift = shift
        self.m, self.e = self.output_multiplier(self.in_scale, in_bits)

    def compute(self, q: torch.Tensor) -> torch.Tensor:
        y = torch.where(q >= 0, q, q >> self.shift)
        return self.finish(y, self.in_bits, self.m, self.e)

    def counts(self) -> dict:
        return plus(dict(cmp=1, shift=1), REQUANT_COST)


class LeakyRelu(Approx):
    op = "gelu"
    family = "leaky"
    summary = "made-up: a leaky ReLU with slope 2^-shift below zero"
    params = {"shift": Param(3, positive_int, "right shift of negative inputs")}
    kernel = LeakyReluKernel


@pytest.fixture
def leaky():
    register(LeakyRelu)
    try:
        yield LeakyRelu
    finally:
        del REGISTRY["gelu"]["leaky"]


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_a_registered_approximation_is_chosen_by_name(leaky):
    variant = build("gelu", "leaky_shift_2")
    assert isinstance(variant, LeakyRelu) and variant.args == {"shift": 2}
    kernel = variant.prepare(0.05, 8, 8)
    q = torch.arange(-128, 128)
    expected = kernel.finish(torch.where(q >= 0, q, torch.div(q, 4, rounding_mode="floor")),
                             8, kernel.m, kernel.e)
    assert torch.equal(kernel(q), expected) and torch.equal(kernel(q, tabulated=True), expected)


def test_an_unregistered_name_is_refused():
    with pytest.raises(UnknownApproximation, match="unknown gelu approximation 'leaky'"):
        build("gelu", "leaky")


def test_a_model_with_the_new_approximation_exports_bit_exact_on_every_engine(leaky):
    torch.manual_seed(0)
    model = build_quant_model(model_config("custom", **SMALL), QuantConfig(gelu="leaky"))
    randomize(model)
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(images(16, seed=1))
    model.eval()
    program = export_program(model)
    assert any(n.op == "lookup" and n.module.endswith("mlp.act") for n in program.nodes)
    x = images(5, seed=3)
    expected = model.forward_int(x).value
    for kind in ("int", "onnx"):
        got = make_engine(kind, program)(x)
        assert got.dtype == torch.int64 and torch.equal(got, expected), kind
