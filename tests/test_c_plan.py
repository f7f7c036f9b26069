"""The C plan's range helpers against plain int64 references: a constant's range, the
row sums of |W| that bound a linear layer's accumulator, and the emitter's refusal of a
constant that does not fit its C type."""

import pytest
import torch

from intvit.engine import ProgramError
from intvit.engine.c.emit import Emitter
from intvit.engine.c.plan import Plan, Value, abs_row_sums, value_range


@pytest.mark.parametrize("t", [torch.tensor([-128, 127, 3], dtype=torch.int8),
                               torch.tensor([[255, 0], [7, 9]], dtype=torch.uint8),
                               torch.tensor([-(1 << 31), (1 << 31) - 1], dtype=torch.int32),
                               torch.tensor([-(1 << 62), 5]), torch.tensor(-9),
                               torch.tensor([True, True]), torch.tensor([False])])
def test_value_range_is_min_and_max(t):
    wide = t.to(torch.int64)
    assert value_range(t) == (int(wide.min()), int(wide.max()))


def test_value_range_of_an_empty_tensor_is_zero():
    assert value_range(torch.zeros(0, 3, dtype=torch.int8)) == (0, 0)


def reference_abs_row_sums(w: torch.Tensor) -> torch.Tensor:
    return w.to(torch.int64).abs().sum(dim=1)


@pytest.mark.parametrize("w", [
    torch.tensor([[-128, -128, 127], [0, 1, -1]], dtype=torch.int8),
    torch.randint(-128, 128, (17, 3072), dtype=torch.int8,
                  generator=torch.Generator().manual_seed(0)),
    torch.tensor([[-(1 << 31), (1 << 31) - 1, -1]], dtype=torch.int32),
    torch.tensor([[(1 << 60) + 1, -(1 << 60), 3]]),  # int64 weights, sums past 2^53
    torch.tensor([[200, 0], [255, 255]], dtype=torch.uint8),
])
def test_abs_row_sums_are_exact(w):
    got = abs_row_sums(w)
    assert got.dtype == torch.int64
    assert torch.equal(got, reference_abs_row_sums(w))


def emitter_with(lo: int, hi: int) -> Emitter:
    return Emitter(Plan(program=None, values={"t": Value("t", (2,), lo, hi, kind="const")}))


@pytest.mark.parametrize("ctype,lo,hi", [("int8_t", -129, 0), ("uint8_t", -1, 3),
                                         ("int16_t", 0, 1 << 15)])
def test_a_constant_past_its_c_type_is_refused(ctype, lo, hi):
    with pytest.raises(ProgramError, match=f"does not fit {ctype}"):
        emitter_with(lo, hi).const("t", ctype)


def test_a_constant_that_fits_is_named_once():
    e = emitter_with(-128, 127)
    assert e.const("t", "int8_t") == e.const("t", "int8_t") == "intvit_c0"
    assert e.const("t", "int16_t") == "intvit_c1"
