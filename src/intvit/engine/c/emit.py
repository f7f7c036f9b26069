"""C source of a planned program: one call into the kernel layer per node.

:data:`EMITTERS` maps each program op to the function that writes its C statement
(index moves become box copies, :data:`KERNELS` names the kernel macros). Constants are
written as ``const`` arrays in the element type the kernel reads (biases, multipliers
and exponential tables as ``int32_t``, shifts as ``int8_t``, weights and tables in their
own type), each once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Callable

from ...registries import registrar
from ..program import Node, ProgramError
from .plan import CTYPE_SIZE, CTYPES, Plan, Value, product_kernel, product_matrices, strides

SHORT = {ctype: short for ctype, short, *_ in CTYPES}
LIMITS = {ctype: (lo, hi) for ctype, _, lo, hi, _ in CTYPES}
# kernel -> macro suffix in intvit_kernels.h
KERNELS = {"matmul": "MATMUL", "matmul8": "MATMUL8", "matmul8_rq": "MATMUL8_RQ",
           "requantize": "REQUANTIZE", "requantize_add": "REQUANTIZE_ADD",
           "lookup": "LOOKUP", "softmax": "SOFTMAX", "layernorm": "LAYERNORM",
           "copy": "COPY", "where": "WHERE", "sum": "SUM"}
DIMS = 6


def literal(v: int) -> str:
    """A C integer literal of any int64 value (INT_MIN forms need a subtraction)."""
    if v < -(1 << 31):
        return f"(-INT64_C({-v - 1}) - 1)"
    if v == -(1 << 31):
        return "(-2147483647 - 1)"
    if v > (1 << 31) - 1:
        return f"INT64_C({v})"
    return str(v)


@dataclass
class Emitter:
    plan: Plan
    lines: list[str] = field(default_factory=list)
    arrays: dict[tuple[int, ...], str] = field(default_factory=dict)  # values -> name
    release_arrays: set[str] = field(default_factory=set)  # read outside debug-only code
    debug_code: bool = False                                # emitting a debug-only node
    consts: dict[tuple[str, str], str] = field(default_factory=dict)  # (tensor, ctype)
    kernels: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    debug_buffer_bytes: int = 0  # the debug build's buffer of gathered outputs

    # --- names ---------------------------------------------------------------------------
    def ptr(self, name: str) -> str:
        value = self.plan.values[name]
        offset = 0
        while value.kind == "view":
            offset += value.offset
            value = self.plan.values[value.base]
        return self.at(value, offset, self.plan.values[name].ctype)

    def at(self, root: Value, offset: int, ctype: str) -> str:
        if root.kind == "const":
            base = self.const(root.name, root.ctype)
        elif root.kind == "input":
            base = "input"
        elif root.kind == "output":
            base = "logits"
        else:
            return f"(({ctype} *)(s + {root.byte_offset + offset * CTYPE_SIZE[ctype]}))"
        return f"({base} + {offset})" if offset else base

    def const(self, tensor: str, ctype: str) -> str:
        """The C array holding a program tensor as ``ctype`` (checked to fit)."""
        key = (tensor, ctype)
        if key not in self.consts:
            value, (lo, hi) = self.plan.values[tensor], LIMITS[ctype]
            if value.lo < lo or value.hi > hi:
                raise ProgramError(f"tensor {tensor} does not fit {ctype}")
            self.consts[key] = f"intvit_c{len(self.consts)}"
        return self.consts[key]

    def ints(self, values: list[int]) -> str:
        """A static ``int32_t`` array of small integers (shapes, strides)."""
        key = tuple(values)
        name = self.arrays.setdefault(key, f"k{len(self.arrays)}")
        if not self.debug_code:
            self.release_arrays.add(name)
        return name

    @property
    def array_text(self) -> list[str]:
        """The static arrays' definitions; those that only debug-only nodes read inside
        ``#ifdef INTVIT_DEBUG`` (else they would be unused)."""
        lines = []
        for values, name in self.arrays.items():
            text = (f"static const int32_t {name}[{len(values)}] = "
                    f"{{{', '.join(map(str, values))}}};")
            lines.append(text if name in self.release_arrays
                         else f"#ifdef INTVIT_DEBUG\n{text}\n#endif")
        return lines

    def kernel(self, kind: str, *ctypes: str) -> str:
        name = f"intvit_{kind}_{'_'.join(SHORT[c] for c in ctypes)}"
        self.kernels[name] = (KERNELS[kind], ctypes)
        return name

    def emit(self, line: str) -> None:
        self.lines.append("    " + line)

    # --- box copies ----------------------------------------------------------------------
    def copy(self, shape, src: str, src_ctype: str, ss, dst: str, dst_ctype: str, ds) -> None:
        pad = DIMS - len(shape)
        if pad < 0:
            raise ProgramError(f"the C export copies boxes of at most {DIMS} dimensions")
        fn = self.kernel("copy", src_ctype, dst_ctype)
        self.emit(f"{fn}({self.ints([1] * pad + list(shape))}, {src}, "
                  f"{self.ints([0] * pad + list(ss))}, {dst}, {self.ints([0] * pad + list(ds))});")


def values_of(e: Emitter, node: Node) -> tuple[list[Value], Value]:
    return [e.plan.values[n] for n in node.inputs], e.plan.values[node.output]


def offset_ptr(ptr: str, k: int) -> str:
    return f"({ptr} + {k})" if k else ptr


EMITTERS: dict[str, Callable[[Emitter, int, Node], None]] = {}


emitter = registrar(EMITTERS)


@emitter("quantize", "reshape", "broadcast", "dequantize")
def _nothing(e: Emitter, i: int, node: Node) -> None:
    """Views and the two float ends: no code in the integer body."""


def product(e: Emitter, i: int, a: Value, bt: Value) -> tuple[str, str]:
    """The kernel of product node ``i`` of ``a`` and ``bt``, and the arguments that follow
    its ``c``: none, or with its requantization fused (``plan.fused``) the requantize
    node's pair, clamp, output (matrix ``l`` of a batched product from its own place) and
    the output's layout (``plan.layouts``; else row-major)."""
    if i not in e.plan.fused:
        return e.kernel(product_kernel(a, bt), a.ctype, bt.ctype), ""
    calls, rows, cols = product_matrices(e.plan.program.nodes[i], e.plan.values)
    node = e.plan.program.nodes[e.plan.fused[i]]
    y = e.plan.values[node.output]
    m, ex, per = _pairs(e, node, "m", "e", cols, e.plan.fused[i])
    fn = e.kernel("matmul8_rq", a.ctype, bt.ctype, y.ctype)
    layout = e.plan.layouts.get(i)
    if layout is None:
        out = e.ptr(y.name) + (f" + l * {rows * cols}" if calls > 1 else "")
        ints = [cols, rows, 0, cols, 0, cols, 0]
    else:
        out = e.ptr(layout.target) + (f" + {e.ints(list(layout.bases))}[l]" if calls > 1
                                       else f" + {layout.bases[0]}")
        ints = layout.ints
    return fn, (f", {m}, {ex}, {per}, {node.attrs['lo']}, {node.attrs['hi']}, {out}, "
                f"{e.ints(ints)}")


@emitter("linear")
def _linear(e: Emitter, i: int, node: Node) -> None:
    (x,), y = values_of(e, node)
    w = e.plan.values[node.params["weight"]]
    n, k = w.shape
    bias = e.const(node.params["bias"], "int32_t") if "bias" in node.params else "NULL"
    fn, fused = product(e, i, x, w)
    e.emit(f"{fn}({x.numel // k}, {n}, {k}, {e.ptr(x.name)}, "
           f"{e.const(w.name, w.ctype)}, {k}, 1, {bias}, {e.ptr(y.name)}{fused});")


@emitter("matmul")
def _matmul(e: Emitter, i: int, node: Node) -> None:
    """``a @ b`` per leading index; b read in place: where it is a transpose of its last
    two axes (``plan.bt_sources``) that transpose's input is b^T as stored (strides k,
    1), else b itself (strides 1, n)."""
    (a, b), y = values_of(e, node)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    lead, lead_b = prod(a.shape[:-2]), prod(b.shape[:-2])
    if lead_b not in (1, lead):
        raise ProgramError(f"node {i}: the C export multiplies equal or shared batches only")
    if i in e.plan.bt_sources:
        bt = e.plan.values[e.plan.bt_sources[i]]
        strides_b = f"{k}, 1"
    else:
        bt = b
        strides_b = f"1, {n}"
    fn, fused = product(e, i, a, bt)
    step_b = f"l * {n * k}" if lead_b > 1 else "0"
    if lead > 1:  # the heads (and windows) over the threads; the kernel then runs on one
        e.emit('INTVIT_OMP("omp parallel for schedule(static) '
               f'if({lead * m * n * k} >= INTVIT_OMP_MIN_MACS)")')
    e.emit(f"for (l = 0; l < {lead}; l++) {fn}({m}, {n}, {k}, {e.ptr(a.name)} + l * {m * k}, "
           f"{e.ptr(bt.name)} + {step_b}, {strides_b}, NULL, {e.ptr(y.name)} + l * {m * n}"
           f"{fused});")


def _pairs(e: Emitter, node: Node, m: str, ex: str, channels: int, i: int) -> tuple[str, str, int]:
    tm, te = (e.plan.program.tensors[node.params[r]] for r in (m, ex))
    count = tm.numel()
    if count not in (1, channels) or te.numel() != count:
        raise ProgramError(f"node {i}: multipliers must be per tensor or per channel")
    return e.const(node.params[m], "int32_t"), e.const(node.params[ex], "int8_t"), int(count > 1)


@emitter("requantize")
def _requantize(e: Emitter, i: int, node: Node) -> None:
    """A requantize fused into its product (``plan.fused``) has no code of its own."""
    if i in e.plan.fused.values():
        return
    ins, y = values_of(e, node)
    x = ins[0]
    c = x.shape[-1]
    rows = x.numel // c
    m, ex, per = _pairs(e, node, "m", "e", c, i)
    lo, hi = node.attrs["lo"], node.attrs["hi"]
    if len(ins) == 1:
        fn = e.kernel("requantize", x.ctype, y.ctype)
        e.emit(f"{fn}({rows}, {c}, {e.ptr(x.name)}, {m}, {ex}, {per}, {lo}, {hi}, "
               f"{e.ptr(y.name)});")
        return
    r = ins[1]
    trailing = tuple(r.shape)
    while trailing and trailing[0] == 1:
        trailing = trailing[1:]
    if tuple(x.shape[len(x.shape) - len(trailing):]) != trailing or not trailing \
            or trailing[-1] != c:
        raise ProgramError(f"node {i}: the residual {r.shape} does not repeat over {x.shape}")
    rm, re_, rper = _pairs(e, node, "residual_m", "residual_e", c, i)
    fn = e.kernel("requantize_add", x.ctype, r.ctype, y.ctype)
    e.emit(f"{fn}({rows}, {c}, {e.ptr(x.name)}, {m}, {ex}, {per}, {e.ptr(r.name)}, "
           f"{r.numel // c}, {rm}, {re_}, {rper}, {lo}, {hi}, {e.ptr(y.name)});")


@emitter("lookup")
def _lookup(e: Emitter, i: int, node: Node) -> None:
    (x,), y = values_of(e, node)
    table = node.params["table"]
    fn = e.kernel("lookup", x.ctype, y.ctype)
    e.emit(f"{fn}({x.numel}, {e.ptr(x.name)}, {e.const(table, y.ctype)}, "
           f"{e.plan.program.tensors[table].numel()}, {node.attrs['lo']}, {e.ptr(y.name)});")


@emitter("softmax")
def _softmax(e: Emitter, i: int, node: Node) -> None:
    (x,), y = values_of(e, node)
    a, t = node.attrs, e.plan.program.tensors
    length = x.shape[-1]
    if a["e_max"] * length >= a["numerator"]:
        raise ProgramError(f"node {i}: rows of {length} can sum past the softmax numerator")
    table = node.params["exp_table"]
    if int(e.plan.program.tensors[table].min()) < 0:
        raise ProgramError(f"node {i}: the softmax exponential table has a negative entry; "
                           "the C kernels take exponentials as non-negative")
    fn = e.kernel("softmax", x.ctype, y.ctype)
    e.emit(f"{fn}({x.numel // length}, {length}, {e.ptr(x.name)}, {e.const(table, 'int32_t')}, "
           f"{t[table].numel()}, {literal(a['numerator'])}, {literal(int(t[node.params['m']]))}, "
           f"{int(t[node.params['e']])}, {a['lo']}, {a['hi']}, {e.ptr(y.name)});")


@emitter("layernorm")
def _layernorm(e: Emitter, i: int, node: Node) -> None:
    (x,), y = values_of(e, node)
    c = x.shape[-1]
    m, ex, per = _pairs(e, node, "m", "e", c, i)
    if not per or e.plan.program.tensors[node.params["beta"]].numel() != c:
        raise ProgramError(f"node {i}: LayerNorm's affine must be per channel")
    a = node.attrs
    fn = e.kernel("layernorm", x.ctype, y.ctype)
    e.emit(f"{fn}({x.numel // c}, {c}, {e.ptr(x.name)}, {a['var_shift']}, {m}, {ex}, "
           f"{e.const(node.params['beta'], 'int32_t')}, {a['lo']}, {a['hi']}, {e.ptr(y.name)});")


@emitter("sum")
def _sum(e: Emitter, i: int, node: Node) -> None:
    (x,), y = values_of(e, node)
    axis = node.attrs["axis"] % len(x.shape)
    fn = e.kernel("sum", x.ctype, y.ctype)
    e.emit(f"{fn}({prod(x.shape[:axis])}, {x.shape[axis]}, {prod(x.shape[axis + 1:])}, "
           f"{e.ptr(x.name)}, {e.ptr(y.name)});")


@emitter("transpose")
def _transpose(e: Emitter, i: int, node: Node) -> None:
    """No code where a product writes this transpose's output (``plan.layouts``)."""
    if any(layout.transpose == i for layout in e.plan.layouts.values()):
        return
    (x,), y = values_of(e, node)
    ss = strides(x.shape)
    e.copy(y.shape, e.ptr(x.name), x.ctype, [ss[p] for p in node.attrs["perm"]],
           e.ptr(y.name), y.ctype, strides(y.shape))


@emitter("take", "slice")
def _select(e: Emitter, i: int, node: Node) -> None:
    (x,), y = values_of(e, node)
    if y.kind == "view":
        return
    axis = node.attrs["axis"] % len(x.shape)
    ss = strides(x.shape)
    start = node.attrs["index"] if node.op == "take" else node.attrs["start"]
    shape = list(x.shape)
    shape[axis] = 1 if node.op == "take" else node.attrs["end"] - start
    src = offset_ptr(e.ptr(x.name), start * ss[axis])
    ds = strides(tuple(shape))
    e.copy(shape, src, x.ctype, ss, e.ptr(y.name), y.ctype, ds)


@emitter("concat")
def _concat(e: Emitter, i: int, node: Node) -> None:
    ins, y = values_of(e, node)
    axis = node.attrs["axis"] % len(y.shape)
    ds = strides(y.shape)
    at = 0
    for x in ins:
        e.copy(x.shape, e.ptr(x.name), x.ctype, strides(x.shape),
               offset_ptr(e.ptr(y.name), at * ds[axis]), y.ctype, ds)
        at += x.shape[axis]


@emitter("roll")
def _roll(e: Emitter, i: int, node: Node) -> None:
    """``out[j] = x[(j - shift) mod size]`` along each rolled dim: two boxes per dim."""
    (x,), y = values_of(e, node)
    ss = strides(x.shape)
    boxes = [([0] * len(x.shape), [0] * len(x.shape), list(x.shape))]
    for shift, dim in zip(node.attrs["shifts"], node.attrs["dims"]):
        dim %= len(x.shape)
        size = x.shape[dim]
        shift %= size
        if not shift:
            continue
        split = []
        for src0, dst0, shape in boxes:
            for s_start, d_start, length in ((0, shift, size - shift), (size - shift, 0, shift)):
                src, dst, sh = list(src0), list(dst0), list(shape)
                src[dim], dst[dim], sh[dim] = s_start, d_start, length
                split.append((src, dst, sh))
        boxes = split
    for src, dst, shape in boxes:
        e.copy(shape, offset_ptr(e.ptr(x.name), sum(a * b for a, b in zip(src, ss))),
               x.ctype, ss, offset_ptr(e.ptr(y.name), sum(a * b for a, b in zip(dst, ss))),
               y.ctype, ss)


@emitter("pad")
def _pad(e: Emitter, i: int, node: Node) -> None:
    (x,), y = values_of(e, node)
    ds = strides(y.shape)
    start = sum(before * d for (before, _), d in zip(node.attrs["pads"], ds))
    e.emit(f"memset({e.ptr(y.name)}, 0, {y.nbytes});")
    e.copy(x.shape, e.ptr(x.name), x.ctype, strides(x.shape),
           offset_ptr(e.ptr(y.name), start), y.ctype, ds)


@emitter("where")
def _where(e: Emitter, i: int, node: Node) -> None:
    (x, cond), y = values_of(e, node)
    if len(cond.shape) != len(x.shape) or len(x.shape) > DIMS:
        raise ProgramError(f"node {i}: the mask must have the rank of its input (<= {DIMS})")
    cs = [0 if c == 1 and n != 1 else s
          for c, n, s in zip(cond.shape, x.shape, strides(cond.shape))]
    pad = DIMS - len(x.shape)
    fn = e.kernel("where", x.ctype, y.ctype)
    e.emit(f"{fn}({e.ints([1] * pad + list(x.shape))}, {e.ptr(x.name)}, {e.ptr(cond.name)}, "
           f"{e.ints([0] * pad + cs)}, {node.attrs['fill']}, {e.ptr(y.name)});")


def dump_gathered(e: Emitter, i: int, y: Value) -> None:
    """The debug dump of node ``i``'s output ``y``, which lives in a transpose's output
    that a product writes (``plan.layouts``): gathered back into row-major order in the
    debug build's buffer (static: the debug build runs one image at a time), then
    dumped."""
    root = e.plan.root(y.name)
    transpose = next(e.plan.program.nodes[layout.transpose]
                     for layout in e.plan.layouts.values() if layout.target == root.base)
    shape = e.plan.values[transpose.inputs[0]].shape
    perm = transpose.attrs["perm"]
    target = e.plan.values[root.base]
    ss = [0] * len(shape)
    for d, step in enumerate(strides(target.shape)):
        ss[perm[d]] = step
    e.debug_buffer_bytes = max(e.debug_buffer_bytes, y.nbytes)
    outer, e.debug_code = e.debug_code, True
    e.emit("#ifdef INTVIT_DEBUG")
    buffer = f"(({y.ctype} *)intvit_debug_buffer)"
    e.copy(shape, e.ptr(target.name), target.ctype, ss, buffer, y.ctype, strides(shape))
    e.emit(f"INTVIT_DUMP({i}, {buffer}, {y.code}, {y.numel});")
    e.emit("#endif")
    e.debug_code = outer


def emit_network(plan: Plan) -> Emitter:
    """Every node's statement, in program order, each followed by its debug dump and its
    profile tick (``plan.debug_only`` nodes inside ``#ifdef INTVIT_DEBUG``)."""
    e = Emitter(plan)
    for i, node in enumerate(plan.program.nodes):
        if node.op not in EMITTERS:
            raise ProgramError(f"node {i}: the C export has no code for op {node.op!r}")
        e.emit(f"/* node {i}: {node.op} {node.module} */")
        e.debug_code = i in plan.debug_only
        if e.debug_code:
            e.emit("#ifdef INTVIT_DEBUG")
        EMITTERS[node.op](e, i, node)
        if node.op != "dequantize":
            y = plan.values[node.output]
            if plan.root(y.name).kind == "layout":
                dump_gathered(e, i, y)
            else:
                e.emit(f"INTVIT_DUMP({i}, {e.ptr(y.name)}, {y.code}, {y.numel});")
        if e.debug_code:
            e.emit("#endif")
        e.emit(f"INTVIT_TICK({i});")
    return e
