"""TVM backend: compiled integer ONNX graphs equal an exact reference bit for bit.

Small graphs built with ``onnx.helper`` cover every op the integer exporter emits, in the
exporter's spellings (``MatMulInteger`` as int8 x int8, and uint8 x uint8 with the right
zero point 128); each is compiled once (about a second each) and checked with
``np.array_equal`` against ``onnx.reference`` (numpy, exact integer products) at two or
more batch sizes. The tensorized VNNI kernels run only on a CPU with AVX-512 VNNI; on
other CPUs the same rewrite is checked with its tiles as plain int32 loops.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

from onnx.reference import ReferenceEvaluator

tvm = pytest.importorskip("tvm")

from intvit.engine import tvm as intvit_tvm  # noqa: E402
from intvit.engine.tvm import TvmModule, tvm_available  # noqa: E402

HOST_VNNI = intvit_tvm.has_vnni(tvm.target.Target(intvit_tvm.host_target()))
C, H, W = 3, 4, 4  # images are (batch, 3, 4, 4): 6 tokens of 8 features
T, K, N = 6, 8, 16


def _const(name: str, value, dtype=None) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _images(batch: str | int = "batch"):
    return [oh.make_tensor_value_info("images", TP.FLOAT, [batch, C, H, W])]


def all_ops_model() -> onnx.ModelProto:
    """Input quantization, an int8 x int8 MatMulInteger, int32 and int64 arithmetic past
    2^32, floor shifts of negative values, tables, reductions, comparisons, layout ops and
    the dequantizing float Mul."""
    rng = np.random.default_rng(0)
    i64 = np.int64
    inits = [
        _const("scale", 0.05, np.float32), _const("half", 0.5, np.float32),
        _const("fmin", -128, np.float32), _const("fmax", 127, np.float32),
        _const("W", rng.integers(-128, 128, (K, N)), np.int8),
        _const("bias32", rng.integers(-1000, 1000, (N,)), np.int32), _const("m32", 3, np.int32),
        _const("big", (3 << 20) + 12345, i64), _const("p2k", 1 << 12, i64),
        _const("idx0", 0, i64), _const("tail", [T, K], i64),
        _const("lo", 0, i64), _const("hi", 255, i64),
        _const("table", rng.integers(-2**40, 2**40, (256,)), i64),
        _const("axes_last", [-1], i64), _const("zero", 0, i64), _const("one", 1, i64),
        _const("seven", 7, i64), _const("negten", -10, i64),
        _const("pads", [0, 1, 0, 0, 2, 0], i64), _const("padval", -5, i64),
        _const("sl_st", [1], i64), _const("sl_en", [5], i64), _const("sl_ax", [1], i64),
        _const("ax0", [0], i64), _const("s0", [0], i64), _const("s1", [1], i64),
        _const("cls_tail", [1, 4], i64),
        _const("cls", rng.integers(-2**40, 2**40, (1, 1, 4)), i64),
        _const("outscale", 2.0 ** -20, np.float32),
    ]
    n = oh.make_node
    nodes = [
        # input quantization (float32)
        n("Div", ["images", "scale"], ["q0"]), n("Add", ["q0", "half"], ["q1"]),
        n("Floor", ["q1"], ["q2"]), n("Clip", ["q2", "fmin", "fmax"], ["q3"]),
        n("Cast", ["q3"], ["q4"], to=TP.INT64),
        # (B, C, H, W) -> (B, T, K) with a runtime batch: Shape, scalar Gather, Unsqueeze
        n("Shape", ["images"], ["shp"]), n("Gather", ["shp", "idx0"], ["bdim"], axis=0),
        n("Unsqueeze", ["bdim", "ax0"], ["bdim1"]),
        n("Concat", ["bdim1", "tail"], ["newshape"], axis=0),
        n("Reshape", ["q4", "newshape"], ["x64"]),
        # signed 8-bit activations: int8 x int8
        n("Cast", ["x64"], ["x8"], to=TP.INT8), n("MatMulInteger", ["x8", "W"], ["acc"]),
        # int32 arithmetic
        n("Add", ["acc", "bias32"], ["a1"]), n("Mul", ["a1", "m32"], ["a2"]),
        n("Sub", ["a2", "bias32"], ["a3"]), n("Cast", ["a3"], ["y"], to=TP.INT64),
        # int64 past 2^32, then floor(t / 2^12) = (t - Mod(t, 2^12)) / 2^12 on negatives too
        n("Mul", ["y", "big"], ["yb"]), n("Mod", ["yb", "p2k"], ["ym"], fmod=0),
        n("Sub", ["yb", "ym"], ["yd"]), n("Div", ["yd", "p2k"], ["ys"]),
        # table lookup with a clipped index
        n("Clip", ["ys", "lo", "hi"], ["yc"]), n("Gather", ["table", "yc"], ["g"], axis=0),
        # Max/Min clamp and a truncating Div of non-negative values
        n("Max", ["ys", "zero"], ["ypos"]), n("Min", ["ypos", "big"], ["ypos2"]),
        n("Div", ["ypos2", "seven"], ["ydiv"]),
        # reductions (ReduceMax: axes attribute in opset 17; ReduceSum: axes input)
        n("ReduceMax", ["g"], ["rmax"], axes=[-1], keepdims=1),
        n("ReduceSum", ["g", "axes_last"], ["rsum"], keepdims=1),
        n("Sub", ["g", "rmax"], ["gm"]), n("Add", ["gm", "rsum"], ["gs"]),
        # comparisons and Where
        n("Less", ["ys", "negten"], ["lt"]), n("Greater", ["ys", "seven"], ["gt"]),
        n("GreaterOrEqual", ["ydiv", "one"], ["ge"]), n("Equal", ["ym", "zero"], ["eq"]),
        n("Where", ["lt", "gs", "ydiv"], ["w1"]), n("Where", ["gt", "w1", "ys"], ["w2"]),
        n("Where", ["ge", "w2", "yb"], ["w3"]), n("Where", ["eq", "w3", "ym"], ["w4"]),
        # layout ops
        n("Transpose", ["w4"], ["tr"], perm=[0, 2, 1]),                 # (B, N, T)
        n("Pad", ["tr", "pads", "padval"], ["pd"], mode="constant"),    # (B, N+1, T+2)
        n("Slice", ["pd", "sl_st", "sl_en", "sl_ax"], ["sl"]),          # (B, 4, T+2)
        n("Unsqueeze", ["sl", "ax0"], ["us"]), n("Squeeze", ["us", "ax0"], ["sq"]),
        n("ReduceSum", ["sq", "axes_last"], ["sqs"], keepdims=1),       # (B, 4, 1)
        n("Transpose", ["sqs"], ["sqt"], perm=[0, 2, 1]),               # (B, 1, 4)
        # the exporter's class-token broadcast: Expand to Concat(Slice(Shape(x)), rest)
        n("Shape", ["sqt"], ["shp2"]), n("Slice", ["shp2", "s0", "s1"], ["batch1"]),
        n("Concat", ["batch1", "cls_tail"], ["exshape"], axis=0),
        n("Expand", ["cls", "exshape"], ["ex"]),                          # (B, 1, 4)
        n("Concat", ["ex", "sqt"], ["cat"], axis=1),                      # (B, 2, 4)
        # output dequantization
        n("Cast", ["cat"], ["catf"], to=TP.FLOAT), n("Mul", ["catf", "outscale"], ["out"]),
        n("Identity", ["cat"], ["logits"]),
    ]
    outputs = [oh.make_tensor_value_info("out", TP.FLOAT, ["batch", 2, 4]),
               oh.make_tensor_value_info("logits", TP.INT64, ["batch", 2, 4]),
               oh.make_tensor_value_info("acc", TP.INT32, ["batch", T, N]),
               oh.make_tensor_value_info("yb", TP.INT64, ["batch", T, N]),
               oh.make_tensor_value_info("ys", TP.INT64, ["batch", T, N])]
    return _model(nodes, _images(), outputs, inits)


def matmul_model(m: int = 197, k: int = 192, n: int = 576) -> onnx.ModelProto:
    """MatMulIntegers in every spelling the VNNI path handles: int8 x int8 (a weight layer,
    and attention-like batched activation-by-activation products with odd sizes: K not a
    multiple of 4, N not a multiple of 16, reached through Reshape with -1 and 0), uint8 x
    uint8 with the right zero point 128 (probabilities times values, and a 4-D activation
    times a 2-D weight), and uint8 x int8 with a left zero point 77."""
    rng = np.random.default_rng(1)
    heads, tokens, dim = 2, 13, 6
    n_ = oh.make_node
    inits = [
        _const("W", rng.integers(-128, 128, (k, n)), np.int8),
        _const("zp0", 0, np.uint8), _const("zp128", 128, np.uint8), _const("zp77", 77, np.uint8),
        _const("c128", 128, np.int64),
        _const("lo", -128, np.int64), _const("hi", 127, np.int64),
        _const("qshape", [-1, tokens, heads, dim], np.int64),
        _const("kshape", [0, tokens, heads, dim], np.int64),
        _const("Wq", rng.integers(-128, 128, (k, heads * dim)), np.int8),
        _const("Wk", rng.integers(-128, 128, (k, heads * dim)), np.int8),
        _const("st", [0], np.int64), _const("en", [tokens], np.int64), _const("ax", [1], np.int64),
        _const("shift", 1 << 10, np.int64), _const("zero", 0, np.int64),
        _const("p255", 255, np.int64),
        _const("Wu", rng.integers(0, 256, (tokens, 24)), np.uint8),
        _const("Ws", rng.integers(-128, 128, (tokens, 20)), np.int8),
    ]
    nodes = [
        n_("MatMulInteger", ["a", "W"], ["dense"]),
        # q, k: (B, tokens, heads*dim) -> (B, heads, tokens, dim) via Reshape with -1 and 0
        n_("Slice", ["a", "st", "en", "ax"], ["a13"]),
        n_("MatMulInteger", ["a13", "Wq"], ["q32"]),
        n_("MatMulInteger", ["a13", "Wk"], ["k32"]),
        n_("Cast", ["q32"], ["q64"], to=TP.INT64), n_("Cast", ["k32"], ["k64"], to=TP.INT64),
        n_("Div", ["q64", "shift"], ["qd"]), n_("Div", ["k64", "shift"], ["kd"]),
        n_("Clip", ["qd", "lo", "hi"], ["qc"]), n_("Clip", ["kd", "lo", "hi"], ["kc"]),
        n_("Reshape", ["qc", "qshape"], ["qr"]), n_("Reshape", ["kc", "kshape"], ["kr"]),
        n_("Transpose", ["qr"], ["qt"], perm=[0, 2, 1, 3]),     # (B, heads, tokens, dim)
        n_("Transpose", ["kr"], ["kt"], perm=[0, 2, 3, 1]),     # (B, heads, dim, tokens)
        n_("Cast", ["qt"], ["qi8"], to=TP.INT8), n_("Cast", ["kt"], ["ki8"], to=TP.INT8),
        n_("MatMulInteger", ["qi8", "ki8"], ["scores"]),         # K = 6, N = 13
        # unsigned "probabilities" times values + 128 with the right zero point 128
        n_("Cast", ["scores"], ["s64"], to=TP.INT64), n_("Max", ["s64", "zero"], ["sp"]),
        n_("Min", ["sp", "p255"], ["sc"]), n_("Cast", ["sc"], ["pu8"], to=TP.UINT8),
        n_("Transpose", ["kt"], ["v"], perm=[0, 1, 3, 2]),        # (B, heads, tokens, dim)
        n_("Add", ["v", "c128"], ["vu"]), n_("Cast", ["vu"], ["vu8"], to=TP.UINT8),
        n_("MatMulInteger", ["pu8", "vu8", "zp0", "zp128"], ["ctx"]),  # K = 13, N = 6
        # a 4-D activation times a 2-D weight: uint8 x uint8, and uint8 x int8 with za = 77
        n_("MatMulInteger", ["pu8", "Wu", "zp0", "zp128"], ["proj"]),
        n_("MatMulInteger", ["pu8", "Ws", "zp77"], ["legacy"]),
    ]
    inputs = [oh.make_tensor_value_info("a", TP.INT8, ["batch", m, k])]
    outputs = [oh.make_tensor_value_info("dense", TP.INT32, ["batch", m, n]),
               oh.make_tensor_value_info("scores", TP.INT32, ["batch", heads, tokens, tokens]),
               oh.make_tensor_value_info("ctx", TP.INT32, ["batch", heads, tokens, dim]),
               oh.make_tensor_value_info("proj", TP.INT32, ["batch", heads, tokens, 24]),
               oh.make_tensor_value_info("legacy", TP.INT32, ["batch", heads, tokens, 20])]
    return _model(nodes, inputs, outputs, inits)


MATMULS = 7  # MatMulIntegers in matmul_model
MATMUL_OUTPUTS = ("dense", "scores", "ctx", "proj", "legacy")


def _reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(model)


def _assert_equal(module: TvmModule, reference: ReferenceEvaluator, *inputs: np.ndarray):
    expected = reference.run(None, dict(zip(reference.input_names, inputs)))
    got = module(*inputs)
    assert len(got) == len(expected)
    for name, e, g in zip(module.output_names, expected, got):
        e = np.asarray(e)
        assert g.dtype == e.dtype and g.shape == e.shape, name
        assert np.array_equal(g, e), f"{name}: {np.count_nonzero(g != e)} entries differ"
    return expected


def _images_batch(batch: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, C, H, W)) * 4).astype(np.float32)


@pytest.fixture(scope="module")
def all_ops():
    model = all_ops_model()
    return model, TvmModule(model, threads=2), _reference(model)


@pytest.fixture(scope="module")
def matmuls():
    model = matmul_model()
    return model, TvmModule(model, threads=2), _reference(model)


def test_available():
    assert tvm_available()


def test_all_ops_match_the_reference_at_several_batch_sizes(all_ops):
    _, module, reference = all_ops
    assert module.dynamic, module.fallback_reason
    for batch, seed in [(1, 0), (3, 1), (2, 2), (3, 3)]:
        out, logits, acc, yb, ys = _assert_equal(module, reference, _images_batch(batch, seed))
        # the data exercise what the test is about
        assert np.abs(yb).max() > 2**32 and (yb < 0).any() and (ys < 0).any()
        assert np.any(yb % (1 << 12) != 0)  # the floor shift really rounds
        assert np.abs(logits).max() > 2**32


def _int8_operand(rng, batch: int, m: int = 197, k: int = 192) -> np.ndarray:
    a = rng.integers(-128, 128, (batch, m, k), dtype=np.int8)
    a[0, 0] = -128  # the extremes, where a saturating kernel would be wrong
    a[0, 1] = 127
    return a


def _check_matmuls(module, reference, rng, m: int = 197, k: int = 192) -> None:
    for batch in (1, 2):
        dense, scores, ctx, proj, legacy = _assert_equal(
            module, reference, _int8_operand(rng, batch, m, k))
        # the data exercise what the test is about
        assert np.abs(dense).max() > 2**15 and (dense < 0).any() and (scores < 0).any()
        assert (ctx < 0).any() and (proj < 0).any() and (legacy < 0).any()


def test_matmul_integer_matches_the_reference(matmuls):
    """TvmModule's own choice on this host: every matmul offloaded to the blocked kernels
    (tensorized on a VNNI CPU, plain int32 tiles elsewhere)."""
    _, module, reference = matmuls
    assert module.dynamic, module.fallback_reason
    assert module.offloaded_matmuls == MATMULS
    _check_matmuls(module, reference, np.random.default_rng(2))


@pytest.mark.skipif(not HOST_VNNI, reason="this CPU has no AVX-512 VNNI: the tensorized kernels (vpdpbusd) run only there")
def test_vnni_kernels_offload_every_spelling(matmuls):
    _, module, reference = matmuls
    assert module.offloaded_matmuls == MATMULS
    _check_matmuls(module, reference, np.random.default_rng(5))


def test_offload_rewrite_is_exact_with_plain_tiles():
    """The VNNI rewrite (operand shifts to u8 x s8, packing, column sums) on any CPU: the
    kernels keep their 16x4 tiles as plain int32 loops instead of ``vpdpbusd``."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = matmul_model(m=16, k=12, n=20)
    target = tvm.target.Target({"kind": "llvm"})
    mod, count = intvit_tvm.offload_matmul_integer(
        from_onnx(model, keep_params_in_input=False), target, tensorize=False)
    assert count == MATMULS
    executable = tvm.compile(mod, target=target,
                             relax_pipeline=intvit_tvm.cpu_pipeline(target))
    main = relax.VirtualMachine(executable, tvm.cpu())["main"]
    reference = _reference(model)
    rng = np.random.default_rng(6)
    for batch in (1, 3):
        a = _int8_operand(rng, batch, 16, 12)
        got = main(tvm.runtime.tensor(a, tvm.cpu()))
        expected = reference.run(None, {"a": a})
        for name, g, e in zip(MATMUL_OUTPUTS, got, expected):
            assert np.array_equal(g.numpy(), e), name


@pytest.mark.parametrize("before", [None, "7"])
def test_the_process_environment_is_left_as_it_was(matmuls, monkeypatch, before):
    """TVM_NUM_THREADS is set only while a module runs (its pool reads it then)."""
    _, module, _ = matmuls
    if before is None:
        monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("TVM_NUM_THREADS", before)
    seen = []
    real = module._main_for

    def recording(arrays):
        main = real(arrays)

        def run(*args):
            seen.append(os.environ.get("TVM_NUM_THREADS"))
            return main(*args)
        return run

    monkeypatch.setattr(module, "_main_for", recording)
    module(*[np.zeros([1 if d is None else d for d in dims], dtype)
             for dims, dtype in zip(module._dims, module._dtypes)])
    assert seen == [str(module.threads)]
    assert os.environ.get("TVM_NUM_THREADS") == before


def test_a_target_without_vnni_takes_the_plain_tile_kernels():
    """A plain ``llvm`` target (no AVX-512 VNNI): every matmul still offloaded, to the
    blocked kernels with plain int32 tiles (TVM's own lowering of MatMulInteger is a
    single-threaded triple loop, 10x slower on deit_tiny)."""
    model = matmul_model(m=16, k=12, n=20)
    module = TvmModule(model, threads=2, target={"kind": "llvm"})
    assert module.offloaded_matmuls == MATMULS
    _check_matmuls(module, _reference(model), np.random.default_rng(3), 16, 12)


def test_per_shape_fallback_when_tvm_cannot_keep_the_batch_symbolic():
    """TVM 0.27's ONNX importer cannot ``Expand`` a symbolic-batch tensor to a constant shape:
    the module compiles one executable per input shape instead."""
    nodes = [oh.make_node("Floor", ["images"], ["f"]),
             oh.make_node("Cast", ["f"], ["i"], to=TP.INT64),
             oh.make_node("Expand", ["i", "shape"], ["out"])]
    model = _model(nodes, _images(), [oh.make_tensor_value_info("out", TP.INT64,
                                                                ["batch", C, H, W])],
                   [_const("shape", [1, 1, 1, W], np.int64)])
    module = TvmModule(model)
    reference = _reference(model)
    for batch in (2, 1, 2):
        _assert_equal(module, reference, _images_batch(batch, batch))
    assert not module.dynamic and module.fallback_reason
    assert len(module._per_shape) == 2


def test_fixed_batch_graph(all_ops):
    model = all_ops_model()
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 2
    for out in model.graph.output:
        d = out.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = 2
    module = TvmModule(model)
    assert module.dynamic
    _assert_equal(module, _reference(model), _images_batch(2, 5))
    with pytest.raises(ValueError, match="shape"):
        module(_images_batch(3, 5))


def test_bad_inputs_give_clear_errors(all_ops):
    _, module, _ = all_ops
    x = _images_batch(1, 0)
    with pytest.raises(ValueError, match=r"expected 1 input\(s\) \['images'\], got 0"):
        module()
    with pytest.raises(ValueError, match="expected 1 input"):
        module(x, x)
    with pytest.raises(TypeError, match="'images' must be float32, got float64"):
        module(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"'images' must have shape \('\?', 3, 4, 4\)"):
        module(x[:, :, :2])
    with pytest.raises(ValueError, match="must have shape"):
        module(x[0])


def test_missing_tvm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tvm", None)
    assert not tvm_available()
    with pytest.raises(ImportError, match=r"pip install intvit\[tvm\]"):
        TvmModule(all_ops_model())


def newton_model(iterations: int = 8) -> onnx.ModelProto:
    """An elementwise requantization chain big enough to run in parallel, a row reduction,
    and an integer square root by unrolled Newton steps with two-input Max/Min (which TVM's
    importer spells as a reduction over a stack, and whose inlined values each consumer
    reads several times)."""
    i64 = np.int64
    inits = [_const("c3", 3, i64), _const("c5", -5000, i64), _const("lo", -100000, i64),
             _const("hi", 100000, i64), _const("seven", 7, i64), _const("one", 1, i64),
             _const("two", 2, i64), _const("axes", [-1], i64)]
    n = oh.make_node
    nodes = [n("Cast", ["x"], ["x64"], to=TP.INT64), n("Mul", ["x64", "c3"], ["m"]),
             n("Add", ["m", "c5"], ["a"]), n("Clip", ["a", "lo", "hi"], ["c"]),
             n("Div", ["c", "seven"], ["d"]), n("Mul", ["d", "d"], ["sq"]),
             n("Max", ["sq", "one"], ["y0"])]
    for i in range(iterations):
        y = f"y{i}"
        nodes += [n("Max", [y, "one"], [f"p{i}"]), n("Div", ["sq", f"p{i}"], [f"q{i}"]),
                  n("Add", [y, f"q{i}"], [f"s{i}"]), n("Div", [f"s{i}", "two"], [f"h{i}"]),
                  n("Min", [y, f"h{i}"], [f"y{i + 1}"])]
    nodes += [n("ReduceSum", [f"y{iterations}", "axes"], ["rs"], keepdims=1),
              n("Sub", [f"y{iterations}", "rs"], ["out"]),
              n("Cast", ["d"], ["d32"], to=TP.INT32)]
    shape = ["batch", 8, 600]
    outputs = [oh.make_tensor_value_info("out", TP.INT64, shape),
               oh.make_tensor_value_info("d32", TP.INT32, shape)]
    return _model(nodes, [oh.make_tensor_value_info("x", TP.INT32, shape)], outputs, inits)


def test_scheduling_pass_parallelizes_fuses_and_stays_exact():
    from tvm import tirx
    from tvm.relax.frontend.onnx import from_onnx

    model = newton_model()
    mod, folded = intvit_tvm.fold_stacked_min_max(from_onnx(model, keep_params_in_input=False))
    assert folded == 17  # every two-input Max/Min became maximum/minimum
    target = tvm.target.Target(intvit_tvm.host_target(2))
    with target:
        scheduled = tvm.transform.Sequential(intvit_tvm.fusion_passes(target))(mod)
    funcs = {gv.name_hint: f for gv, f in scheduled.functions_items()
             if isinstance(f, tirx.PrimFunc)}
    assert funcs and all(bool(f.attrs["tirx.is_scheduled"]) for f in funcs.values())
    text = {name: f.script() for name, f in funcs.items()}
    # the requantization chain: one parallel loop nest, no intermediate buffers
    chain = [t for name, t in text.items() if "multiply_add" in name]
    assert chain and all("T.parallel" in t and "alloc_buffer" not in t for t in chain)
    # the row reduction runs in parallel over the rows
    assert any("T.parallel" in t and "T.axis.reduce" in t for t in text.values())
    # the Newton steps are fused into one kernel (not one or two per step), which keeps
    # as buffers the values that inlining would copy too often
    newton = [t for t in text.values() if t.count("T.sblock(") > 5]
    assert len(newton) == 1 and "T.parallel" in newton[0]
    assert len(funcs) <= 6, sorted(funcs)

    reference = _reference(model)
    module = TvmModule(model, threads=2)
    plain = TvmModule(model, threads=2, schedule=False)
    rng = np.random.default_rng(4)
    for batch in (1, 3):
        x = rng.integers(-40000, 40000, (batch, 8, 600), dtype=np.int32)
        expected = _assert_equal(module, reference, x)
        assert all(np.array_equal(a, b) for a, b in zip(plain(x), expected))
        assert expected[1].min() < 0 < expected[1].max() and np.abs(expected[0]).max() > 2**20


def test_builds_drop_tvms_lookup_warning_and_keep_other_output(capfd):
    import os

    with intvit_tvm.native_stderr_without():
        os.write(2, f"[x] Warning: {intvit_tvm.NOISE[0]}. Make sure...\n".encode())
        os.write(2, b"something else\n")
    TvmModule(all_ops_model())  # its Gather lookups would print the warning
    err = capfd.readouterr().err
    assert "something else" in err and intvit_tvm.NOISE[0] not in err
