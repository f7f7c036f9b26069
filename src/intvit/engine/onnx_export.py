"""An :class:`IntProgram` as an ONNX graph (opset 17) whose body is integer-only.

Between the input quantization (float ``Div``/``Add``/``Floor``/``Clip``/``Cast``) and
the output dequantization (``Cast`` and float ``Mul``), every value is an integer. The
values passed between program nodes are int32 (the runtime's debug mode proves that
every node output fits), except the output of a node declared wider than 32 bits (a wide
sum), which stays int64; inside a node, a step that needs more (a requantization
product, a wide variance) widens to int64 and the node's result narrows back. How each
program op maps to ONNX, given ONNX Runtime's kernels:

* **linear / matmul**: :meth:`~.onnx_graph.GraphWriter.int_matmul`, ``MatMulInteger``
  where ONNX Runtime computes it exactly, an int64 ``MatMul`` otherwise.
* **requantization**: an int64 product and :meth:`~.onnx_graph.GraphWriter.floor_shift`
  (a biased logical ``BitShift``: ONNX has no arithmetic shift, and ``Div`` truncates).
* **tables** (GELU, the softmax exponentials, powers of two): ``Gather``.
* **layernorm**: the row mean by a rounding division, the variance, and
  :meth:`~.onnx_graph.GraphWriter.isqrt`.

The integer spellings themselves, with their proofs, are :mod:`.onnx_graph`'s.

Outputs: ``logits`` (int64, the integer logits) and ``logits_float`` (float32).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from ..approx.rows import NUMERATOR_IVIT, variance_max
from ..registries import registrar
from .onnx_graph import INT32, INT64, OPSET, GraphWriter
from .program import IntProgram, Node, ProgramError


LOWER: dict[str, Callable[[GraphWriter, Node, list[str]], str]] = {}


onnx_op = registrar(LOWER)


def _p(w: GraphWriter, node: Node, role: str, dtype: int | None = None) -> str:
    return w.tensor(node.params[role], dtype)


def _fits_int32(bound: int) -> bool:
    return bound <= torch.iinfo(torch.int32).max


@onnx_op("quantize")
def _quantize(w, node, x):
    scaled = w.op("Div", [x[0], _p(w, node, "scale")])
    rounded = w.op("Floor", [w.op("Add", [scaled, w.const(0.5, np.float32)])])
    a = node.attrs
    clipped = w.op("Clip", [rounded, w.const(float(a["lo"]), np.float32),
                            w.const(float(a["hi"]), np.float32)])
    return w.cast(clipped, INT32)


@onnx_op("linear")
def _linear(w, node, x):
    a = node.attrs
    acc = w.int_matmul(x[0], w.weight(node.params["weight"]), a["in_bits"], a["weight_bits"],
                       False)
    return w.op("Add", [acc, _p(w, node, "bias", INT32)]) if "bias" in node.params else acc


@onnx_op("matmul")
def _matmul(w, node, x):
    a = node.attrs
    return w.int_matmul(x[0], x[1], a["a_bits"], a["b_bits"], a.get("a_unsigned", False))


@onnx_op("requantize")
def _requantize(w, node, x):
    out = w.requantize(x[0], node.params["m"], node.params["e"])
    if len(x) > 1:
        out = w.op("Add", [out, w.requantize(x[1], node.params["residual_m"],
                                             node.params["residual_e"])])
    return w.clip(out, node.attrs["lo"], node.attrs["hi"])


@onnx_op("lookup")
def _lookup(w, node, x):
    index = w.op("Sub", [x[0], w.const(node.attrs["lo"], like=x[0])])
    return w.op("Gather", [_p(w, node, "table"), index])


@onnx_op("softmax")
def _softmax(w, node, x):
    a, axes = node.attrs, w.const([-1])
    d = w.op("Sub", [x[0], w.op("ReduceMax", [x[0]], axes=[-1], keepdims=1)])
    size = w.program.tensors[node.params["exp_table"]].shape[0]
    e = w.op("Gather", [_p(w, node, "exp_table"), w.op("Add", [d, w.const(size - 1, like=d)])])
    if not _fits_int32(a["numerator"]):
        e = w.cast(e, INT64)
    total = w.op("Max", [w.op("ReduceSum", [e, axes], keepdims=1), w.const(1, like=e)])
    factor = w.op("Div", [w.const(a["numerator"], like=e), total])
    p = w.op("Mul", [e, factor])
    return w.clip(w.requantize(p, node.params["m"], node.params["e"]), a["lo"], a["hi"])


@onnx_op("layernorm")
def _layernorm(w, node, x):
    a, axes = node.attrs, w.const([-1])
    length = w.program.tensors[node.params["beta"]].shape[0]
    total = w.op("ReduceSum", [x[0], axes], keepdims=1)
    y = w.op("Sub", [x[0], _round_div(w, total, length)])
    var_max = variance_max(a["in_bits"], a["var_shift"], length)
    if a["var_shift"]:
        y = w.cast(w.floor_shift(y, a["var_shift"]), INT32)
    if not _fits_int32(var_max):
        y = w.cast(y, INT64)
    var = w.op("ReduceSum", [w.op("Mul", [y, y]), axes], keepdims=1)
    std = w.op("Max", [w.isqrt(var, var_max.bit_length()), w.const(1, like=var)])
    factor = w.op("Div", [w.const(NUMERATOR_IVIT, like=std), std])
    z = w.floor_shift(w.op("Mul", [y, factor]), 1)
    out = w.op("Add", [w.requantize(z, node.params["m"], node.params["e"]),
                       _p(w, node, "beta", INT64)])
    return w.clip(out, a["lo"], a["hi"])


def _round_div(w: GraphWriter, x: str, d: int) -> str:
    """``floor(x / d + 1/2) = floor((x + floor(d/2)) / d)`` for integer ``x`` and ``d > 0``."""
    t = w.op("Add", [x, w.const(d // 2, like=x)])
    divisor = w.const(d, like=x)
    return w.op("Div", [w.op("Sub", [t, w.op("Mod", [t, divisor], fmod=0)]), divisor])


@onnx_op("sum")
def _sum(w, node, x):
    values = x[0] if node.attrs["bits"] <= 32 else w.cast(x[0], INT64)
    return w.op("ReduceSum", [values, w.const([node.attrs["axis"]])], keepdims=0)


@onnx_op("reshape")
def _reshape(w, node, x):
    return w.op("Reshape", [x[0], w.const(node.attrs["shape"])])


@onnx_op("transpose")
def _transpose(w, node, x):
    return w.op("Transpose", [x[0]], perm=node.attrs["perm"])


@onnx_op("take")
def _take(w, node, x):
    return w.op("Gather", [x[0], w.const(node.attrs["index"])], axis=node.attrs["axis"])


@onnx_op("slice")
def _slice(w, node, x):
    a = node.attrs
    return w.op("Slice", [x[0], w.const([a["start"]]), w.const([a["end"]]), w.const([a["axis"]])])


@onnx_op("concat")
def _concat(w, node, x):
    return w.op("Concat", [w.cast(v, INT32) for v in x], axis=node.attrs["axis"])


@onnx_op("broadcast")
def _broadcast(w, node, x):
    c_shape = list(w.program.tensors[node.inputs[0]].shape)
    batch = w.op("Slice", [w.op("Shape", [x[1]]), w.const([0]), w.const([1])])
    shape = w.op("Concat", [batch, w.const(c_shape[1:])], axis=0)
    return w.op("Expand", [x[0], shape])


@onnx_op("roll")
def _roll(w, node, x):
    out = x[0]
    for shift, dim, size in zip(node.attrs["shifts"], node.attrs["dims"], node.attrs["sizes"]):
        out = _roll_dim(w, out, shift, dim, size)
    return out


def _roll_dim(w: GraphWriter, x: str, shift: int, dim: int, size: int) -> str:
    """``torch.roll`` along one static dimension: the last ``shift`` entries move first."""
    shift %= size
    if shift == 0:
        return x
    tail = w.op("Slice", [x, w.const([size - shift]), w.const([size]), w.const([dim])])
    head = w.op("Slice", [x, w.const([0]), w.const([size - shift]), w.const([dim])])
    return w.op("Concat", [tail, head], axis=dim)


@onnx_op("pad")
def _pad(w, node, x):
    pads = node.attrs["pads"]
    flat = [before for before, _ in pads] + [after for _, after in pads]
    return w.op("Pad", [x[0], w.const(flat), w.const(0, like=x[0])], mode="constant")


@onnx_op("where")
def _where(w, node, x):
    return w.op("Where", [x[1], w.const(node.attrs["fill"], like=x[0]), x[0]])


@onnx_op("dequantize")
def _dequantize(w, node, x):
    return w.op("Mul", [w.cast(x[0], TensorProto.FLOAT), _p(w, node, "scale")])


def to_onnx(program: IntProgram) -> onnx.ModelProto:
    """The program as an ONNX model: input ``images`` (float32, batch symbolic),
    outputs ``logits`` (int64) and ``logits_float`` (float32)."""
    program.check()
    w = GraphWriter(program)
    env = {program.input: program.input}
    w.types[program.input] = TensorProto.FLOAT
    float_output = None
    for node in program.nodes:
        inputs = [env[i] if i in env else w.tensor(i) for i in node.inputs]
        w.prefix = f"{node.module or node.op}/"
        out = LOWER[node.op](w, node, inputs)
        if node.op == "dequantize":
            float_output = out
        elif w.types[out] != TensorProto.BOOL and node.attrs.get("bits", 32) <= 32:
            out = w.cast(out, INT32)  # values between nodes are int32, wide sums int64
        env[node.output] = out
    if float_output is None:
        raise ProgramError("the program has no dequantize node for its float logits")
    nodes = w.nodes + [
        helper.make_node("Cast", [env[program.output]], ["logits"], to=INT64,
                         name="output/logits"),
        helper.make_node("Identity", [float_output], ["logits_float"],
                         name="output/logits_float")]
    c, h, wd = program.input_shape
    classes = program.num_classes
    graph = helper.make_graph(
        nodes, "intvit",
        [helper.make_tensor_value_info(program.input, TensorProto.FLOAT, ["batch", c, h, wd])],
        [helper.make_tensor_value_info("logits", INT64, ["batch", classes]),
         helper.make_tensor_value_info("logits_float", TensorProto.FLOAT, ["batch", classes])],
        list(w.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="intvit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def op_types(model: onnx.ModelProto) -> list[tuple[str, str, list[str]]]:
    """Every node's name, op type and output element types (after shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: TensorProto.DataType.Name(v.type.tensor_type.elem_type)
             for v in [*inferred.graph.value_info, *inferred.graph.output,
                       *inferred.graph.input]}
    return [(n.name, n.op_type, [types.get(o, "?") for o in n.output])
            for n in inferred.graph.node]
