"""The shape of every value of an integer program, derived without computing a value.

:data:`SHAPES` holds, for each op of :data:`intvit.engine.ops.OPS`, the rule that gives
its output's shape from its inputs' shapes, its attributes and its tensors' shapes; the
rules follow PyTorch's (trailing-axis broadcasting, negative axes, ``-1`` in a reshape),
so they equal the shapes the ops compute. Running the ops to learn the shapes cost the C
engine's plan most of its time (deit_base: the requantizations, LayerNorms and Softmaxes
of a whole image, the int64 copies of every weight); PyTorch's meta device is no cheaper
here, as its first use of ``roll``, ``cat`` or ``matmul`` imports sympy (about 0.5-1 s).

| op | output shape |
|----|--------------|
| quantize, lookup, softmax, layernorm, roll, dequantize | ``x`` |
| linear | ``x[:-1] + (rows of weight,)`` |
| matmul | ``broadcast(a[:-2], b[:-2]) + (a[-2], b[-1])`` |
| requantize | ``broadcast(x, m, e[, residual, residual_m, residual_e])`` |
| sum, take | ``x`` without ``axis`` |
| reshape | ``shape``, its ``-1`` the size that keeps the element count |
| transpose | ``x[perm]`` |
| slice | ``x`` with ``end - start`` along ``axis`` |
| concat | the inputs' sizes along ``axis`` summed |
| broadcast | ``(like[0],) + c[1:]`` |
| pad | ``x`` plus ``before + after`` per padded (trailing) axis |
| where | ``broadcast(x, cond)`` |
"""

from __future__ import annotations

from math import prod
from typing import Callable

from ..registries import registrar
from .program import IntProgram, ProgramError

Shape = tuple[int, ...]
# op -> rule(input shapes, attrs, param shapes) -> output shape
SHAPES: dict[str, Callable[[list[Shape], dict, dict[str, Shape]], Shape]] = {}


shape_rule = registrar(SHAPES)


def broadcast(*shapes: Shape) -> Shape:
    """PyTorch's broadcast: shapes aligned at their last axis, each size equal or 1."""
    rank = max(map(len, shapes), default=0)
    out = []
    for axis in range(-rank, 0):
        sizes = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(sizes) > 1:
            raise ProgramError(f"shapes {', '.join(map(str, shapes))} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


@shape_rule("quantize", "lookup", "softmax", "layernorm", "roll", "dequantize")
def _elementwise(ins, attrs, params):
    return ins[0]


@shape_rule("linear")
def _linear(ins, attrs, params):
    return (*ins[0][:-1], params["weight"][0])


@shape_rule("matmul")
def _matmul(ins, attrs, params):
    a, b = ins
    return (*broadcast(a[:-2], b[:-2]), a[-2], b[-1])


@shape_rule("requantize")
def _requantize(ins, attrs, params):
    return broadcast(*ins, *params.values())


@shape_rule("sum", "take")
def _drop_axis(ins, attrs, params):
    x = ins[0]
    axis = attrs["axis"] % len(x)
    return x[:axis] + x[axis + 1:]


@shape_rule("reshape")
def _reshape(ins, attrs, params):
    shape = list(attrs["shape"])
    known = prod(s for s in shape if s != -1)
    if -1 in shape and known:
        shape[shape.index(-1)] = prod(ins[0]) // known
    if prod(shape) != prod(ins[0]):
        raise ProgramError(f"cannot reshape {ins[0]} to {tuple(attrs['shape'])}")
    return tuple(shape)


@shape_rule("transpose")
def _transpose(ins, attrs, params):
    return tuple(ins[0][p] for p in attrs["perm"])


@shape_rule("slice")
def _slice(ins, attrs, params):
    x = list(ins[0])
    x[attrs["axis"] % len(x)] = attrs["end"] - attrs["start"]
    return tuple(x)


@shape_rule("concat")
def _concat(ins, attrs, params):
    out = list(ins[0])
    axis = attrs["axis"] % len(out)
    out[axis] = sum(x[axis] for x in ins)
    return tuple(out)


@shape_rule("broadcast")
def _broadcast(ins, attrs, params):
    c, like = ins
    return (like[0], *c[1:])


@shape_rule("pad")
def _pad(ins, attrs, params):
    x = list(ins[0])
    pads = attrs["pads"]
    for axis, (before, after) in zip(range(len(x) - len(pads), len(x)), pads):
        x[axis] += before + after
    return tuple(x)


@shape_rule("where")
def _where(ins, attrs, params):
    return broadcast(*ins)


def trace_shapes(program: IntProgram) -> dict[str, Shape]:
    """Every value's shape (the program's tensors' too) for one image."""
    shapes = {k: tuple(t.shape) for k, t in program.tensors.items()}
    shapes[program.input] = (1, *program.input_shape)
    for node in program.nodes:
        params = {role: shapes[t] for role, t in node.params.items()}
        shapes[node.output] = SHAPES[node.op]([shapes[i] for i in node.inputs], node.attrs,
                                              params)
    return shapes
