"""The ONNX graph builder of :mod:`.onnx_export`: :class:`GraphWriter` names nodes and
initializers, tracks each value's element type (ONNX does not promote types), and
spells the integer arithmetic that ONNX Runtime (opset 17) lacks or computes inexactly:

* **exact integer products** (:meth:`GraphWriter.int_matmul`): ``MatMulInteger``, in the
  two spellings that ONNX Runtime computes exactly on every CPU: int8 x int8 for a
  signed 8-bit activation, and uint8 x uint8 for an unsigned one (softmax probabilities
  ``0..255``), whose signed right operand ``b`` enters as ``b + 128`` with zero point
  128. The uint8 x int8 spelling is avoided: on x86 CPUs without VNNI its kernel sums
  pairs of products in saturating int16 (``vpmaddubsw``), which is not exact for
  full-range operands. Operands wider than 8 bits use an int64 ``MatMul`` instead. The
  int32 product widens to int64.
* **floor division by ``2^k``** (:meth:`GraphWriter.floor_shift`: requantization,
  variance shift): ``BitShift`` is unsigned-only and integer ``Div`` truncates toward
  zero. Every value shifted here lies in ``[-2^62, 2^63 - 2^62)`` (a requantization
  product is at most 63 signed bits, plus its rounding constant), so with ``B = 2^62``

      floor(t / 2^k) = uint64(t + B) >> k  -  B / 2^k        (0 <= k <= 62)

  where ``t + B`` is formed in uint64 (the cast wraps a negative ``t`` to ``t + 2^64``,
  and the add wraps it back into ``[0, 2^64)``), the shift is a logical one, and
  ``B / 2^k`` is an exact integer. For a requantization the rounding constant
  ``2^(k-1)`` joins ``B`` in the same add. A per-channel shift may mix 0 with positive
  amounts (the identity holds at ``k = 0``); a shift by 0 everywhere is the identity.
  Divisions of non-negative values (row sums, Newton steps) use ``Div`` directly.
* **isqrt** (:meth:`GraphWriter.isqrt`, LayerNorm): the bit length as the count of
  powers of two not above the value (one broadcast comparison and a sum), the start
  ``2^ceil(n/2)`` by ``Gather``, then ``newton_steps(B)`` unrolled Newton steps
  ``r = min(r, (r + v / r) / 2)`` for the ``B``-bit variance bound the kernel declares
  (:func:`intvit.arith.isqrt.newton_steps`): the steps :func:`intvit.arith.isqrt` runs
  compiled; its eager loop stops early at the same root.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..arith.isqrt import newton_steps
from .program import IntProgram

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
