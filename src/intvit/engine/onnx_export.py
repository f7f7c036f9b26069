"""An :class:`IntProgram` as an ONNX graph (opset 17) whose body is integer-only.

Between the input quantization (float ``Div``/``Add``/``Floor``/``Clip``/``Cast``) and
the output dequantization (``Cast`` and float ``Mul``), every value is an integer. The
values passed between program nodes are int32 (the runtime's debug mode proves that
every node output fits), except the output of a node declared wider than 32 bits (a wide
sum), which stays int64; inside a node, a step that needs more (a requantization
product, a wide variance) widens to int64 and the node's result narrows back. How each
program op maps to ONNX, given ONNX Runtime's kernels:

* **linear / matmul**: ``MatMulInteger``, in the two spellings that ONNX Runtime
  computes exactly on every CPU: int8 x int8 for a signed 8-bit activation, and
  uint8 x uint8 for an unsigned one (softmax probabilities ``0..255``), whose signed
  right operand ``b`` enters as ``b + 128`` with zero point 128. The uint8 x int8
  spelling is avoided: on x86 CPUs without VNNI its kernel sums pairs of products in
  saturating int16 (``vpmaddubsw``), which is not exact for full-range operands. Operands
  wider than 8 bits use an int64 ``MatMul`` instead. The int32 product widens to int64.
* **floor division by ``2^k``** (requantization, variance shift): ``BitShift`` is
  unsigned-only and integer ``Div`` truncates toward zero. Every value shifted here lies
  in ``[-2^62, 2^63 - 2^62)`` (a requantization product is at most 63 signed bits, plus
  its rounding constant), so with ``B = 2^62``

      floor(t / 2^k) = uint64(t + B) >> k  -  B / 2^k        (0 <= k <= 62)

  where ``t + B`` is formed in uint64 (the cast wraps a negative ``t`` to ``t + 2^64``,
  and the add wraps it back into ``[0, 2^64)``), the shift is a logical one, and
  ``B / 2^k`` is an exact integer. For a requantization the rounding constant
  ``2^(k-1)`` joins ``B`` in the same add. A per-channel shift may mix 0 with positive
  amounts (the identity holds at ``k = 0``); a shift by 0 everywhere is the identity.
  Divisions of non-negative values (row sums, Newton steps) use ``Div`` directly.
* **tables** (GELU, the softmax exponentials, powers of two): ``Gather``.
* **isqrt** (LayerNorm): the bit length as the count of powers of two not above the
  value (one broadcast comparison and a sum), the start ``2^ceil(n/2)`` by ``Gather``,
  then ``newton_steps(B)`` unrolled Newton steps ``r = min(r, (r + v / r) / 2)`` for the
  ``B``-bit variance bound the kernel declares (:func:`intvit.arith.isqrt.newton_steps`):
  the steps :func:`intvit.arith.isqrt` runs compiled; its eager loop stops early at the
  same root.

Outputs: ``logits`` (int64, the integer logits) and ``logits_float`` (float32).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..approx.rows import NUMERATOR_IVIT, variance_max
from ..arith.isqrt import newton_steps
from .program import IntProgram, Node, ProgramError

OPSET = 17
INT32, INT64 = TensorProto.INT32, TensorProto.INT64


class GraphWriter:
    """Accumulates ONNX nodes and initializers with unique names, tracking each value's
    element type so that constants and casts match (ONNX does not promote types)."""

    def __init__(self, program: IntProgram) -> None:
        self.program = program
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.types: dict[str, int] = {}
        self.count = 0
        self.prefix = ""

    def name(self, hint: str = "t") -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def _init(self, name: str, array: np.ndarray) -> str:
        self.inits[name] = numpy_helper.from_array(array, name)
        self.types[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        return name

    def const(self, value, dtype=np.int64, hint: str = "c", like: str | None = None) -> str:
        """A constant; ``like`` gives it the element type of that value."""
        if like is not None:
            dtype = helper.tensor_dtype_to_np_dtype(self.types[like])
        return self._init(self.name(hint), np.asarray(value, dtype=dtype))

    def tensor(self, name: str, dtype: int | None = None) -> str:
        """A program tensor as an initializer: integers as int32 where they fit (else
        int64), or as ``dtype``; bools and floats as they are."""
        t = self.program.tensors[name]
        if t.dtype == torch.bool or t.dtype.is_floating_point:
            key, array = name, t.numpy() if t.dtype == torch.bool else t.to(torch.float32).numpy()
        else:
            if dtype is None:
                fits = not t.numel() or int(t.abs().max()) <= torch.iinfo(torch.int32).max
                dtype = INT32 if fits else INT64
            key = f"{name}.{TensorProto.DataType.Name(dtype).lower()}"
            array = t.to(torch.int32 if dtype == INT32 else torch.int64).numpy()
        return key if key in self.inits else self._init(key, array)

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        if op_type == "Cast":
            self.types[out] = attrs["to"]
        elif op_type in ("MatMulInteger",):
            self.types[out] = INT32
        elif op_type == "Shape":
            self.types[out] = INT64
        elif op_type in ("GreaterOrEqual", "Greater", "Less", "Equal"):
            self.types[out] = TensorProto.BOOL
        elif op_type == "Where":
            self.types[out] = self.types[inputs[1]]
        else:
            self.types[out] = self.types[inputs[0]]
        return out

    def cast(self, x: str, to: int) -> str:
        return x if self.types[x] == to else self.op("Cast", [x], to=to)

    # --- integer helpers -----------------------------------------------------------------
    def floor_shift(self, t: str, shift: torch.Tensor | int, add: torch.Tensor | int = 0
                    ) -> str:
        """``floor((t + add) / 2^shift)`` in int64 (``shift`` scalar or per channel, in
        [0, 62]), exact for negative ``t`` (see the module docstring)."""
        t = self.cast(t, INT64)
        shift = torch.as_tensor(shift, dtype=torch.int64)
        add = torch.as_tensor(add, dtype=torch.int64)
        if bool((shift == 0).all()):
            return self.op("Add", [t, self.const(add.numpy())]) if bool(add.any()) else t
        bias = 1 << 62
        wrapped = self.op("Cast", [t], to=TensorProto.UINT64)
        offset = self.const((add + bias).numpy().astype(np.uint64), np.uint64, "bias")
        shifted = self.op("BitShift", [self.op("Add", [wrapped, offset]),
                                       self.const(shift.numpy().astype(np.uint64), np.uint64,
                                                  "shift")], direction="RIGHT")
        return self.op("Sub", [self.op("Cast", [shifted], to=INT64),
                               self.const((bias >> shift).numpy(), hint="unbias")])

    def requantize(self, x: str, m_name: str, e_name: str) -> str:
        """``floor((x m + 2^(e-1)) / 2^e)`` in int64 with the program's (m, e) tensors."""
        m = self.program.tensors[m_name].to(torch.int64)
        e = self.program.tensors[e_name].to(torch.int64)
        product = self.op("Mul", [self.cast(x, INT64), self.const(m.numpy(), hint="m")])
        return self.floor_shift(product, e, (torch.ones_like(e) << e) >> 1)

    def clip(self, x: str, lo: int, hi: int) -> str:
        return self.op("Clip", [x, self.const(lo, like=x), self.const(hi, like=x)])

    def int_matmul(self, a: str, b: str, a_bits: int, b_bits: int, a_unsigned: bool) -> str:
        """An exact integer product with an int32 result (the accumulators are declared
        32 bits wide)."""
        if b_bits > 8 or (a_bits > 8 and not (a_unsigned and a_bits <= 9)):
            return self.cast(self.op("MatMul", [self.cast(a, INT64), self.cast(b, INT64)]),
                             INT32)
        if not a_unsigned:
            return self.op("MatMulInteger", [self.cast(a, TensorProto.INT8),
                                             self.cast(b, TensorProto.INT8)])
        b8 = self.cast(self.op("Add", [b, self.const(128, like=b)]), TensorProto.UINT8)
        return self.op("MatMulInteger", [self.cast(a, TensorProto.UINT8), b8,
                                         self.const(0, np.uint8, "zp"),
                                         self.const(128, np.uint8, "zp")])

    def weight(self, name: str) -> str:
        """A (out, in) weight as the (in, out) right operand of MatMulInteger (int8) or
        of an int64 MatMul."""
        key = f"{name}.T"
        if key in self.inits:
            return key
        t = self.program.tensors[name]
        dtype = np.int8 if t.dtype == torch.int8 else np.int64
        return self._init(key, np.ascontiguousarray(t.numpy().T.astype(dtype)))

    def isqrt(self, v: str, bits: int | None = None) -> str:
        """``floor(sqrt(v))`` in ``v``'s type (int32 or int64, ``0 <= v < 2^bits``; the
        type's width by default): :func:`~intvit.arith.isqrt.newton_steps` steps."""
        width = 31 if self.types[v] == INT32 else 63
        powers = self.const([1 << k for k in range(width)], hint="pow2_table", like=v)
        length = self.op("ReduceSum", [self.cast(self.op("GreaterOrEqual", [
            self.op("Unsqueeze", [v, self.const([-1])]), powers]), self.types[v]),
            self.const([-1])], keepdims=0)
        one, two = self.const(1, like=v), self.const(2, like=v)
        root = self.op("Gather", [powers, self.op("Div", [self.op("Add", [length, one]), two])])
        for _ in range(newton_steps(width if bits is None else bits)):
            quotient = self.op("Div", [v, self.op("Max", [root, one])])
            step = self.op("Div", [self.op("Add", [root, quotient]), two])
            root = self.op("Min", [root, step])
        return root


LOWER: dict[str, Callable[[GraphWriter, Node, list[str]], str]] = {}


def onnx_op(name: str):
    def register(fn):
        LOWER[name] = fn
        return fn
    return register


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
