"""Every step that the ONNX exporter spells differently from the program's arithmetic,
run in ONNX Runtime and compared, ``torch.equal``, with the function it replaces: over
the whole input domain where that is small (every 8- and 16-bit input of a table, every
pair of 8-bit matmul operands), else over the domain's extremes and edges plus random
values. (The requantization's product shift and per-channel shifts with zeros are in
``tests/test_engine.py`` and ``tests/test_reliability.py``.)"""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from intvit.approx import build
from intvit.arith import floor_shift, isqrt, round_div
from intvit.engine.onnx_export import LOWER, OPSET, GraphWriter, _round_div
from intvit.engine.ops import OPS
from intvit.engine.program import IntProgram, Node
from intvit.quant.frozen import KERNEL_OPS, freeze_kernel
from intvit.quant.integer import matmul_int, quantize_input

TYPES = {torch.int32: TensorProto.INT32, torch.int64: TensorProto.INT64,
         torch.float32: TensorProto.FLOAT}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(build_graph, inputs: dict[str, torch.Tensor],
        tensors: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``build_graph(writer, *input names) -> output name`` over a program holding
    ``tensors``, run in ONNX Runtime on ``inputs``."""
    w = GraphWriter(IntProgram([], tensors or {}, {}))
    for name, t in inputs.items():
        w.types[name] = TYPES[t.dtype]
    out = build_graph(w, *inputs)
    graph = helper.make_graph(
        w.nodes, "spelling",
        [helper.make_tensor_value_info(n, TYPES[t.dtype], list(t.shape))
         for n, t in inputs.items()],
        [helper.make_tensor_value_info(out, w.types[out], None)], list(w.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {n: t.numpy() for n, t in inputs.items()})[0])


def run_node(op: str, x: torch.Tensor, data: dict[str, torch.Tensor], **attrs) -> torch.Tensor:
    """One program node of ``op`` on ``x`` (int32, as between program nodes)."""
    node = Node(op, ["x"], "y", attrs, {role: role for role in data})
    return run(lambda w, name: LOWER[op](w, node, [name]), {"x": x.to(torch.int32)}, data)


def assert_exact(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    diff = got.to(torch.int64) != expected.to(torch.int64)
    assert not diff.any(), f"{int(diff.sum())} differ, first at {diff.nonzero()[0].tolist()}"


def edges(top: int, every: int = 1) -> list[int]:
    """Powers of two and their neighbours up to ``top``, both signs."""
    out = {0, 1, -1, top, -top - 1, top - 1}
    for k in range(0, top.bit_length(), every):
        out |= {(1 << k) + d for d in (-1, 0, 1)} | {-(1 << k) + d for d in (-1, 0, 1)}
    return sorted(v for v in out if -top - 1 <= v <= top)


def test_floor_shift_over_its_domain_for_every_shift():
    """``floor(t / 2^k)`` for t in the documented domain [-2^62, 2^63 - 2^62), k = 0..62."""
    lo, hi = -(1 << 62), (1 << 63) - (1 << 62) - 1
    values = [v for v in edges((1 << 63) - 1) if lo <= v <= hi] + [lo, lo + 1, hi - 1, hi]
    rand = torch.randint(lo, hi, (2000,), generator=seeded())
    t = torch.cat([torch.tensor(values), rand])[:, None]
    shifts = torch.arange(63)
    got = run(lambda w, x: w.floor_shift(x, shifts), {"t": t})
    assert_exact(got, floor_shift(t, shifts[None, :]))


@pytest.mark.parametrize("d", [1, 2, 3, 4, 7, 16, 49, 192, 197, 384, 768, 1024])
def test_rounding_division_is_round_half_up(d):
    """``floor(x / d + 1/2)`` (LayerNorm's mean): every x in [-2^16, 2^16], each multiple
    of ``d`` and its neighbours near the int32 ends, random int32 values."""
    top = (1 << 31) - 1 - d
    near_ends = [q * d + r for q in (top // d, -(top // d)) for r in range(-d, d + 1)]
    x = torch.cat([torch.arange(-(1 << 16), (1 << 16) + 1),
                   torch.tensor([v for v in near_ends if abs(v) <= top] + [top, -top]),
                   torch.randint(-top, top, (5000,), generator=seeded(d))]).to(torch.int32)
    got = run(lambda w, name: _round_div(w, name, d), {"x": x})
    assert_exact(got, round_div(x.to(torch.int64), d))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_isqrt_is_floor_sqrt(dtype):
    """Every value below 2^16, each square and its neighbours up to the type's top
    (all of them for int32), powers of two and their neighbours, random values."""
    top, g = torch.iinfo(dtype).max, seeded()
    roots = torch.arange(0, math.isqrt(top) + 1) if dtype == torch.int32 else \
        torch.cat([torch.arange(0, 4096), torch.randint(0, math.isqrt(top), (20000,),
                                                        generator=g)])
    squares = roots * roots
    v = torch.cat([torch.arange(0, 1 << 16), squares, squares + 1, (squares - 1).clamp_min(0),
                   torch.tensor([e for e in edges(top) if e >= 0]),
                   torch.randint(0, top, (20000,), generator=g)])
    v = v[v <= top].to(dtype)
    got = run(lambda w, name: w.isqrt(name), {"v": v})
    assert got.dtype == {torch.int32: torch.int32, torch.int64: torch.int64}[dtype]
    assert_exact(got, isqrt(v.to(torch.int64)))


def all_values(bits: int, unsigned: bool = False) -> torch.Tensor:
    return torch.arange(0, 1 << bits) if unsigned else \
        torch.arange(-(1 << (bits - 1)), 1 << (bits - 1))


@pytest.mark.parametrize("a_bits,b_bits,a_unsigned", [
    (8, 8, False),   # int8 x int8 MatMulInteger
    (9, 8, True),    # uint8 probabilities x (b + 128) with zero point 128
    (16, 16, False), # wider operands: int64 MatMul
])
def test_integer_matmul_spellings(a_bits, b_bits, a_unsigned):
    """Every pair of 8-bit operands (an outer product), the extremes accumulated over
    long rows (the int16 pair-sum trap of x86's uint8 x int8), random operands; 16-bit
    operands at their edges, as far as the int32 accumulator they are declared to fit."""
    a_vals = all_values(a_bits - 1 if a_unsigned else a_bits, a_unsigned)
    b_vals = all_values(b_bits)
    if a_bits > 9:
        a_vals, b_vals = (torch.tensor(edges(int(v.max()))) for v in (a_vals, b_vals))
    cases = [(a_vals[:, None], b_vals[None, :])]
    long = 512 if a_bits <= 9 else 1
    for ea in (a_vals.min(), a_vals.max()):
        for eb in (b_vals.min(), b_vals.max()):
            cases.append((torch.full((3, long), int(ea)), torch.full((long, 5), int(eb))))
    g, k, low = seeded(), 64, 1 << 12  # 64 products of 2^12-bounded 16-bit operands fit
    pick = lambda vals, shape: vals[torch.randint(0, len(vals), shape, generator=g)]
    if a_bits > 9:
        a_vals, b_vals = (torch.arange(-low, low) for _ in range(2))
    cases.append((pick(a_vals, (2, 7, k)), pick(b_vals, (2, k, 9))))
    for a, b in cases:
        got = run(lambda w, x, y: w.int_matmul(x, y, a_bits, b_bits, a_unsigned),
                  {"a": a.to(torch.int32), "b": b.to(torch.int32)})
        assert_exact(got, matmul_int(a, b, a_bits, b_bits, a_unsigned))


@pytest.mark.parametrize("approx", ["ivit", "ibert", "ppoly"])
@pytest.mark.parametrize("bits", [8, 16])
def test_gelu_table_over_every_input(approx, bits):
    frozen = freeze_kernel(build("gelu", approx).prepare(0.05, bits, bits))
    x = all_values(bits)
    got = run_node("lookup", x, frozen.tensors, **frozen.attrs)
    assert_exact(got, KERNEL_OPS["lookup"](x, **frozen.tensors, **frozen.attrs))


def row_cases(bits: int, length: int) -> torch.Tensor:
    """(rows, 1, length) signed ``bits``-bit integers: constant rows at the ends and
    zero, the two ends alternating, one end among the other, a few values above the
    bottom (a masked row), narrow and full-range random rows."""
    bottom, top, g = -(1 << (bits - 1)), (1 << (bits - 1)) - 1, seeded(length)
    rows = [torch.full((length,), v) for v in (bottom, -1, 0, 1, top)]
    rows.append(torch.tensor([bottom, top] * (length // 2) + [bottom] * (length % 2)))
    for a, b in ((bottom, top), (top, bottom), (0, top), (0, bottom)):
        rows.append(torch.tensor([b] + [a] * (length - 1)))
    masked = torch.full((length,), bottom)
    masked[::7] = torch.randint(bottom // 256, top // 256 + 1, masked[::7].shape, generator=g)
    rows.append(masked)
    rows += list(torch.randint(bottom, top + 1, (40, length), generator=g))
    rows += list(torch.randint(-3, 4, (10, length), generator=g))
    return torch.stack(rows)[:, None]


@pytest.mark.parametrize("approx", ["ivit", "ibert", "ppoly_seg_8"])
@pytest.mark.parametrize("bits", [8, 16])
def test_softmax_rows(approx, bits):
    frozen = freeze_kernel(build("softmax", approx).prepare(0.05, bits, 8))
    x = row_cases(bits, 49)
    got = run_node("softmax", x, frozen.tensors, **frozen.attrs)
    assert_exact(got, KERNEL_OPS["softmax"](x, **frozen.tensors, **frozen.attrs))


@pytest.mark.parametrize("approx", ["ivit", "ibert"])
@pytest.mark.parametrize("bits,length", [(8, 32), (8, 197), (16, 192), (16, 768)])
def test_layernorm_rows(approx, bits, length):
    """Zero variance, the largest variance, outliers, random rows; with and without a
    variance shift, with an int32 and an int64 variance."""
    g = torch.Generator().manual_seed(length)
    kernel = build("layernorm", approx).prepare(
        0.05, bits, 8, out_scale=0.04, dim=length,
        weight=1 + 0.2 * torch.randn(length, generator=g), bias=0.1 * torch.randn(length, generator=g))
    frozen = freeze_kernel(kernel)
    x = row_cases(bits, length)
    got = run_node("layernorm", x, frozen.tensors, **frozen.attrs)
    assert_exact(got, KERNEL_OPS["layernorm"](x, **frozen.tensors, **frozen.attrs))


def test_input_quantization_rounds_half_up_and_saturates():
    """The one float step: ties of the grid (both signs), values past the ends, tiny and
    huge magnitudes, random values."""
    scale = torch.tensor(0.0173, dtype=torch.float32)
    ks = torch.arange(-200, 201, dtype=torch.float32)
    x = torch.cat([(ks + 0.5) * scale, (ks - 0.5) * scale, ks * scale,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 3.4e38, -3.4e38]),
                   torch.randn(5000, generator=seeded()) * 3]).to(torch.float32)
    node = Node("quantize", ["x"], "y", {"lo": -128, "hi": 127}, {"scale": "scale"})
    got = run(lambda w, name: LOWER["quantize"](w, node, [name]), {"x": x}, {"scale": scale})
    assert_exact(got, quantize_input(x, scale, -128, 127))


def test_roll_is_torch_roll_for_every_shift():
    x = torch.arange(2 * 5 * 7 * 3).reshape(2, 5, 7, 3)
    for s0 in range(-10, 11):
        for s1 in (-14, -8, -7, -3, 0, 1, 3, 6, 7, 13):
            attrs = dict(shifts=[s0, s1], dims=[1, 2], sizes=[5, 7])
            got = run_node("roll", x, {}, **attrs)
            assert_exact(got, OPS["roll"](x, **attrs))
