"""The static plan of a program for C: every value's shape, proven integer range, C type
and storage, and the scratch buffer that holds the activations.

Shapes are those of one image (the C library runs batch 1; Swin's windows become the
leading dimension). Ranges are proven from the program, never observed: a requantizer,
LayerNorm or Softmax saturates to ``[lo, hi]``; a table look-up yields the table's
values; a linear layer's accumulator is bounded row by row by ``X * sum_k |W_nk| +
|b_n|`` (``X`` the largest input magnitude), an activation product by ``K * X_a * X_b``;
index moves keep their input's range. Each value gets the narrowest of ``int8_t``,
``uint8_t``, ``int16_t``, ``int32_t`` that holds its range; a range past 32 bits, or a
requantization product past 63, is an error, so the C code cannot overflow.

**Memory plan.** Reshapes, and takes and slices whose result is contiguous, are views
(no storage). Every other activation gets a region of the scratch buffer from the node
that writes it to the last node that reads it (or a view of it); a region is reused
once its value is dead (first fit, offsets aligned to 16 bytes). An activation product
reads its right operand in place, by strides (the kernels' ``sn``, ``sk``): as it is
stored (an attention head's ``v``), or, where it is a transpose of the last two axes
(``k^T``), as that transpose's input, which then lives to the product, and the transpose
itself runs in the debug build only.

**Fused requantization.** An 8-bit product whose int32 result only a requantize reads is
computed with it in one kernel call (:func:`fused_requantizations`): the requantized
output is written at the product, so it lives from there; the int32 result keeps its
region (the kernel's partial sums between K blocks, and the whole product in the builds
that requantize after it).

**Products that write a transposed layout.** Where a fused product's requantized output
is read only by a transpose (through reshapes), and that transpose's layout of it is that
of :class:`OutputLayout` for each of the product's matrices (:func:`output_layouts`; a
block of whole panels of 32 columns), the product writes the transpose's output directly
and the transpose has no code: the attention's q, k, v split into heads (ViT, and Swin's
windows), and each head's context into its columns of the merged heads. The requantized
output then has no storage of its own (kind ``layout``); the debug build shows it by
gathering it back from the transpose's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np
import torch

from ..program import IntProgram, ProgramError
from ..shapes import trace_shapes

ALIGN = 16
INT32_MAX = (1 << 31) - 1
# (C type, short name, lo, hi, type code of the debug dump)
CTYPES = [("int8_t", "s8", -128, 127, 0), ("uint8_t", "u8", 0, 255, 1),
          ("int16_t", "s16", -(1 << 15), (1 << 15) - 1, 2),
          ("int32_t", "s32", -(1 << 31), INT32_MAX, 3)]


def ctype_for(lo: int, hi: int, what: str) -> tuple[str, str, int]:
    for ctype, short, tlo, thi, code in CTYPES:
        if tlo <= lo and hi <= thi:
            return ctype, short, code
    raise ProgramError(f"{what}: its values can reach [{lo}, {hi}], past 32 bits; the C "
                       "export keeps every value within int32 (lower the bit-widths)")


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]
    lo: int
    hi: int
    kind: str = "scratch"       # scratch | const | view | input | output | layout
    base: str = ""              # views: the value whose storage they share; layout:
    #                             the transpose output that holds it
    offset: int = 0             # views: element offset into the base
    ctype: str = ""
    short: str = ""
    code: int = 0
    first: int = -1             # node that writes it
    last: int = -1              # last node that reads it (through views too)
    byte_offset: int = -1       # scratch: offset in the scratch buffer

    def __post_init__(self) -> None:
        self.ctype, self.short, self.code = ctype_for(self.lo, self.hi, self.name)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * CTYPE_SIZE[self.ctype]


CTYPE_SIZE = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "int32_t": 4}


@dataclass(frozen=True)
class OutputLayout:
    """Where a product writes its requantized output: into ``target`` (the output of
    transpose node ``transpose``), matrix ``l`` of the product from element ``bases[l]``,
    value ``(i, j)`` of a matrix at ``(i / row_block) * row_block_stride + (i % row_block)
    * ldy + (j / group) * group_stride + (j % group / block) * block_stride + j % block``
    (the kernel's ``intvit_y_row`` and ``intvit_y_col``)."""

    target: str
    transpose: int
    bases: tuple[int, ...]
    ldy: int
    row_block: int
    row_block_stride: int
    block: int
    block_stride: int
    group: int
    group_stride: int

    @property
    def ints(self) -> list[int]:
        """The kernel's ``layout`` array."""
        return [self.ldy, self.row_block, self.row_block_stride, self.block,
                self.block_stride, self.group, self.group_stride]


@dataclass
class Plan:
    program: IntProgram
    values: dict[str, Value]
    bt_sources: dict[int, str] = field(default_factory=dict)  # matmul index -> its b^T
    fused: dict[int, int] = field(default_factory=dict)  # product index -> its requantize
    layouts: dict[int, OutputLayout] = field(default_factory=dict)  # product -> its output's
    debug_only: set[int] = field(default_factory=set)  # nodes only the debug build runs
    scratch_bytes: int = 0
    logits: str = ""

    @property
    def input(self) -> Value:
        return self.values[self.program.nodes[0].output]

    def root(self, name: str) -> Value:
        value = self.values[name]
        while value.kind == "view":
            value = self.values[value.base]
        return value


def value_range(t: torch.Tensor) -> tuple[int, int]:
    """``(min, max)`` of an integer (or bool) tensor's values, ``(0, 0)`` when empty; read
    in its own type, by numpy (see :func:`abs_row_sums`)."""
    if not t.numel():
        return 0, 0
    a = t.numpy()
    return int(a.min()), int(a.max())


def _max_abs(v: Value) -> int:
    return max(-v.lo, v.hi)


def abs_row_sums(w: torch.Tensor) -> torch.Tensor:
    """``sum_k |w_nk|`` for every row ``n`` of ``w`` (int64), exact: the absolute values are
    taken one type wider than bytes (int8's -128 has none in int8), summed in int64. By
    numpy, whose passes run on one thread: PyTorch's int64 copy, abs and row sum of 48
    deit_base-sized int8 weights took 0.56 s on one thread and 1.6 s on two threads of a
    loaded 2-core host, numpy 0.04-0.06 s."""
    a = w.numpy()
    wide = np.int16 if a.itemsize == 1 else np.int64
    return torch.from_numpy(np.abs(a.astype(wide)).sum(axis=1, dtype=np.int64))


def strides(shape: tuple[int, ...]) -> list[int]:
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return out[::-1]


def _contiguous_part(shape: tuple[int, ...], axis: int) -> bool:
    """Whether fixing a range along ``axis`` leaves a contiguous block."""
    return all(s == 1 for s in shape[:axis])


def _check_requant(what: str, x: Value, m: torch.Tensor, e: torch.Tensor) -> None:
    m_max = int(m.to(torch.int64).abs().max()) if m.numel() else 0
    e_max = int(e.to(torch.int64).max()) if e.numel() else 0
    bound = _max_abs(x) * m_max + ((1 << e_max) >> 1)
    if bound >= 1 << 63:
        raise ProgramError(f"{what}: the requantization product can reach {bound}, past "
                           "int64; the C export cannot compute it")


def product_kernel(a: Value, b: Value) -> str:
    """The kernel of a product of ``a`` and ``b``: ``matmul8`` when both are bytes
    (``int8_t``/``uint8_t``: the 8-bit dot-product kernels, VNNI and AMX where the
    compiler targets them), else ``matmul`` (operands widened to int16)."""
    return "matmul8" if CTYPE_SIZE[a.ctype] == CTYPE_SIZE[b.ctype] == 1 else "matmul"


def make_plan(program: IntProgram) -> Plan:
    """Shapes, ranges, types and storage of every value, and the scratch layout."""
    program.check()
    nodes = program.nodes
    if not nodes or nodes[0].op != "quantize" or nodes[0].inputs != [program.input]:
        raise ProgramError("the C export needs a program whose first node quantizes the "
                           "images (every intvit export is one)")
    traced = trace_shapes(program)
    tensors = program.tensors
    values: dict[str, Value] = {}
    for name, t in tensors.items():
        if t.dtype.is_floating_point:
            continue
        lo, hi = value_range(t)
        values[name] = Value(name, tuple(t.shape), lo, hi, kind="const")
        if t.dtype == torch.bool:  # masks: read as bytes
            values[name].ctype, values[name].short, values[name].code = "uint8_t", "u8", 1
    for i, node in enumerate(nodes):
        if node.op == "dequantize":
            continue
        shape = traced[node.output]
        lo, hi, view = _derive(node, i, values, tensors, shape)
        value = Value(node.output, shape, lo, hi, first=i)
        if view is not None:
            value.kind, value.base, value.offset = "view", view[0], view[1]
        values[node.output] = value
    plan = Plan(program, values, logits=program.output)
    for i, node in enumerate(nodes):
        if node.op == "matmul":
            source = transposed_source(nodes, node.inputs[1])
            if source is not None:
                plan.bt_sources[i] = source
    readers = readers_of(nodes)
    plan.fused = fused_requantizations(nodes, values, readers)
    plan.debug_only = debug_only(nodes, plan.bt_sources, readers)
    for product, requantize in plan.fused.items():
        values[nodes[requantize].output].first = product
    plan.layouts = output_layouts(nodes, values, plan.fused, readers)
    for product, layout in plan.layouts.items():
        y = values[nodes[plan.fused[product]].output]
        y.kind, y.base = "layout", layout.target
        values[layout.target].first = product
    values[nodes[0].output].kind = "input"
    out = values[program.output]
    if out.kind == "scratch" and out.ctype == "int32_t":
        out.kind = "output"
    _lifetimes(plan)
    _allocate(plan)
    return plan


def readers_of(nodes) -> dict[str, list[int]]:
    """The nodes that read each value, in program order."""
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            readers.setdefault(name, []).append(i)
    return readers


def debug_only(nodes, bt_sources: dict[int, str], readers: dict[str, list[int]]) -> set[int]:
    """The transposes (``k^T``) whose every reader is a product that reads their input in
    their place (``bt_sources``): only the debug build, which shows every node's output,
    computes them."""
    return {i for i, node in enumerate(nodes) if node.op == "transpose"
            and (read_by := readers.get(node.output))
            and all(r in bt_sources and nodes[r].inputs[1] == node.output for r in read_by)}


def fused_requantizations(nodes, values: dict[str, Value], readers: dict[str, list[int]]
                          ) -> dict[int, int]:
    """{product node: requantize node} for every 8-bit product (``matmul8``) whose int32
    result only a plain requantize (no residual) reads: the C code computes both in one
    kernel call (``matmul8_rq``) at the product, whose output the requantize's output
    therefore lives from."""
    producer = {node.output: i for i, node in enumerate(nodes)}
    fused = {}
    for j, node in enumerate(nodes):
        i = producer.get(node.inputs[0], -1) if node.op == "requantize" else -1
        if i < 0 or len(node.inputs) != 1 or readers[node.inputs[0]] != [j] \
                or nodes[i].op not in ("linear", "matmul"):
            continue
        operands = [values[n] for n in nodes[i].inputs]
        if nodes[i].op == "linear":
            operands.append(values[nodes[i].params["weight"]])
        if product_kernel(operands[0], operands[-1]) == "matmul8" \
                and values[nodes[i].output].kind == "scratch":
            fused[i] = j
    return fused


def product_matrices(node, values: dict[str, Value]) -> tuple[int, int, int]:
    """(calls, rows, columns) of a product node's output: a linear layer is one matrix, a
    batched product one per leading index."""
    y = values[node.output]
    if node.op == "linear":
        n = values[node.params["weight"]].shape[0]
        return 1, y.numel // n, n
    return prod(y.shape[:-2]), y.shape[-2], y.shape[-1]


def output_layouts(nodes, values: dict[str, Value], fused: dict[int, int],
                   readers: dict[str, list[int]]) -> dict[int, OutputLayout]:
    """{product: OutputLayout} for every fused product whose requantized output only a
    transpose reads (through reshapes, each read by the next alone), where that
    transpose's layout of the product's matrices has the form of :class:`OutputLayout`
    with whole panels (a block of at least the columns, or a multiple of 32)."""
    layouts = {}
    for product, requantize in fused.items():
        name = nodes[requantize].output
        if values[name].kind != "scratch":
            continue
        while len(readers.get(name, [])) == 1 and nodes[readers[name][0]].op == "reshape":
            name = nodes[readers[name][0]].output
        read_by = readers.get(name, [])
        if len(read_by) != 1 or nodes[read_by[0]].op != "transpose":
            continue
        t = read_by[0]
        if values[nodes[t].output].kind != "scratch":
            continue
        layout = _fit_layout(product_matrices(nodes[product], values),
                             transposed_offsets(values[name].shape, nodes[t].attrs["perm"]))
        if layout is not None:
            layouts[product] = OutputLayout(nodes[t].output, t, *layout)
    return layouts


def transposed_offsets(shape: tuple[int, ...], perm) -> np.ndarray:
    """For each element of a contiguous array of ``shape`` (flat index), its element offset
    in that array transposed by ``perm``."""
    n = prod(shape)
    moved = np.arange(n, dtype=np.int64).reshape(shape).transpose(perm).reshape(-1)
    offsets = np.empty(n, dtype=np.int64)
    offsets[moved] = np.arange(n, dtype=np.int64)
    return offsets


def _blocks(steps: np.ndarray, unit: int) -> tuple[int, int, int]:
    """(stride, block, block stride) of offsets ``steps`` (from the first) that go up by
    the stride inside blocks of ``block`` and by the block stride from block to block (the
    stride ``unit`` where there is one step): the first block ends where they leave
    ``i * stride``; the caller checks the rest."""
    n = len(steps)
    stride = int(steps[1]) if n > 1 else unit
    leave = np.nonzero(steps != np.arange(n) * stride)[0]
    block = int(leave[0]) if leave.size else n
    return stride, block, int(steps[block]) if block < n else 0


def _fit_layout(matrices: tuple[int, int, int], offsets: np.ndarray) -> tuple | None:
    """(bases, then the layout's ldy .. group_stride) of an OutputLayout that puts each
    value of the matrices where ``offsets`` says, or None where none does (or its panels
    would not be whole)."""
    calls, rows, cols = matrices
    at = offsets.reshape(calls, rows, cols)
    bases = at[:, 0, 0]
    unit, block, block_stride = _blocks(at[0, 0] - bases[0], 1)
    _, blocks, group_stride = _blocks(at[0, 0, ::block] - bases[0], block_stride)
    group = blocks * block
    ldy, row_block, row_block_stride = _blocks(at[0, :, 0] - bases[0], cols)
    if unit != 1 or (block < cols and block % 32 != 0):
        return None
    i, j = np.arange(rows), np.arange(cols)
    want = (bases[:, None, None]
            + ((i // row_block) * row_block_stride + (i % row_block) * ldy)[None, :, None]
            + ((j // group) * group_stride + (j % group // block) * block_stride
               + j % block)[None, None, :])
    if not np.array_equal(want, at):
        return None
    return (tuple(int(b) for b in bases), ldy, row_block, row_block_stride, block,
            block_stride, group, group_stride)


def transposed_source(nodes, name: str) -> str | None:
    """The value whose layout is ``name`` with its last two axes swapped back, where
    ``name`` is the output of a transpose of exactly those two axes (the attention's
    ``k^T``): a product reads it as its ``b^T`` in place of a transposed copy."""
    producer = next((n for n in nodes if n.output == name), None)
    if producer is None or producer.op != "transpose":
        return None
    perm = list(producer.attrs["perm"])
    rank = len(perm)
    if rank < 2 or perm != list(range(rank - 2)) + [rank - 1, rank - 2]:
        return None
    return producer.inputs[0]


def _derive(node, i: int, values: dict[str, Value], tensors, shape):
    """(lo, hi, view) of a node's output; view = (base, element offset) or None."""
    op, label = node.op, f"node {i} ({node.op}, {node.module})"
    ins = [values[n] for n in node.inputs if n in values]
    a = node.attrs
    params = {role: tensors[name] for role, name in node.params.items()}
    if op == "quantize":
        return a["lo"], a["hi"], None
    if op == "linear":
        x = ins[0]
        row = abs_row_sums(params["weight"]) * _max_abs(x)
        if "bias" in params:
            row = row + params["bias"].to(torch.int64).abs()
        bound = int(row.max())
        if bound > INT32_MAX:
            raise ProgramError(f"{label}: its accumulator can reach {bound}, past int32")
        return -bound, bound, None
    if op == "matmul":
        x, y = ins
        bound = x.shape[-1] * _max_abs(x) * _max_abs(y)
        if bound > INT32_MAX:
            raise ProgramError(f"{label}: its accumulator can reach {bound}, past int32")
        return -bound, bound, None
    if op == "requantize":
        _check_requant(label, ins[0], params["m"], params["e"])
        if len(ins) > 1:
            _check_requant(label, ins[1], params["residual_m"], params["residual_e"])
        return a["lo"], a["hi"], None
    if op == "lookup":
        return (*value_range(params["table"]), None)
    if op == "softmax":
        if a["numerator"] * max(1, abs(int(params["m"]))) >= 1 << 63:
            raise ProgramError(f"{label}: the softmax requantization product passes int64")
        return a["lo"], a["hi"], None
    if op == "layernorm":
        return a["lo"], a["hi"], None
    if op == "sum":
        x = ins[0]
        n = x.shape[a["axis"]]
        lo, hi = x.lo * n, x.hi * n
        if max(-lo, hi) > INT32_MAX:
            raise ProgramError(f"{label}: the sum can reach [{lo}, {hi}], past int32")
        return lo, hi, None
    x = ins[0]
    if op == "reshape":
        return x.lo, x.hi, (node.inputs[0], 0)
    if op in ("take", "slice"):
        axis = a["axis"] % len(x.shape)
        start = a["index"] if op == "take" else a["start"]
        if _contiguous_part(x.shape, axis):
            return x.lo, x.hi, (node.inputs[0], start * strides(x.shape)[axis])
        return x.lo, x.hi, None
    if op == "broadcast":
        return x.lo, x.hi, (node.inputs[0], 0)
    if op in ("transpose", "roll"):
        return x.lo, x.hi, None
    if op == "concat":
        return min(v.lo for v in ins), max(v.hi for v in ins), None
    if op == "pad":
        return min(x.lo, 0), max(x.hi, 0), None
    if op == "where":
        return min(x.lo, a["fill"]), max(x.hi, a["fill"]), None
    raise ProgramError(f"{label}: the C export has no code for op {op!r}")


def _lifetimes(plan: Plan) -> None:
    for i, node in enumerate(plan.program.nodes):
        for name in node.inputs:
            if name in plan.values:
                root = plan.root(name)
                root.last = max(root.last, i)
    for i, name in plan.bt_sources.items():
        root = plan.root(name)
        root.last = max(root.last, i)
    end = len(plan.program.nodes)
    plan.root(plan.logits).last = end


def _allocate(plan: Plan) -> None:
    """First-fit placement of every scratch buffer over its lifetime."""
    buffers = [v for v in plan.values.values() if v.kind in ("scratch", "input")]
    buffers.sort(key=lambda v: (v.first, -v.nbytes))
    live: list[Value] = []
    top = 0
    for buf in buffers:
        live = [v for v in live if v.last >= buf.first]
        size = -(-buf.nbytes // ALIGN) * ALIGN
        offset = 0
        for other in sorted(live, key=lambda v: v.byte_offset):
            if offset + size <= other.byte_offset:
                break
            offset = max(offset, -(-(other.byte_offset + other.nbytes) // ALIGN) * ALIGN)
        buf.byte_offset = offset
        live.append(buf)
        top = max(top, offset + size)
    plan.scratch_bytes = top
