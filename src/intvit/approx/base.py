"""What every approximation is: a named, parameterized recipe that, given the input
quantization, prepares an integer kernel.

* :class:`Approx` holds the user's choice (op, family, parameters). ``prepare`` turns it,
  for one input scale and bit-width, into a :class:`Kernel`: integer constants computed
  once (the only place floats appear) plus a pure integer map ``q_in -> q_out``.
* :class:`Kernel` is what the quantized model and the inference engine both call.
* :class:`Cost` is the hardware cost per element, counted by hand from the kernel's code
  and stated next to it; the widest intermediate is not typed in but read from the
  widths the kernel declares (:mod:`intvit.arith.width`).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import torch

from ..arith import (WidthLog, dyadic, mantissa_bits_for, qrange, record_widths, requantize,
                     round_half_even)
from .ops import OPS


@dataclass(frozen=True)
class Cost:
    """Operations per element (and per row, for row-wise ops) of an integer kernel."""

    mul: int = 0
    shift: int = 0
    add: int = 0
    div: int = 0
    cmp: int = 0
    per_row: dict[str, int] = field(default_factory=dict)
    widest_bits: int = 0
    requant_bits: int = 0
    integer_only: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


MAX_TABLE_BITS = 17  # tables of at most 2^17 int64 entries (1 MiB)

# Cost of the output stage shared by every integer kernel: requantize (multiply, add
# the rounding constant, shift) then saturate (two comparisons).
REQUANT_COST = dict(mul=1, add=1, shift=1, cmp=2)


def plus(*parts: dict[str, int]) -> dict[str, int]:
    """Add per-element operation counts."""
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


@dataclass(frozen=True)
class Param:
    """One parameter of a variant: its default, how to read it from a name, its meaning."""

    default: Any
    parse: Callable[[str], Any]
    help: str
    choices: tuple[Any, ...] | None = None

    def read(self, text: str) -> Any:
        value = self.parse(text)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
        return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a non-negative integer")
    return value


class Kernel(ABC):
    """A prepared integer kernel: constants fixed, ``q_in -> q_out`` on int64 tensors.

    The input is a signed ``in_bits`` integer in the op's domain (:class:`OpSpec`); the
    output an ``out_bits`` integer, signed or not as the op says, at ``out_scale``.
    Row-wise kernels (softmax, layernorm) work on the last dimension.
    """

    integer_only: ClassVar[bool] = True

    def __init__(self, op: str, in_scale: float, in_bits: int, out_bits: int,
                 out_scale: float | None) -> None:
        self.spec = OPS[op]
        for label, value in (("in_scale", in_scale), ("out_scale", out_scale)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive finite number, got {value!r}")
        qrange(in_bits)
        qrange(out_bits)
        self.in_scale = float(in_scale)
        self.in_bits = in_bits
        self.out_bits = out_bits
        self.out_scale = float(out_scale if out_scale is not None
                               else self.spec.default_out_scale(in_scale, in_bits, out_bits))

    @property
    def op(self) -> str:
        return self.spec.name

    @property
    def out_range(self) -> tuple[int, int]:
        return qrange(self.out_bits, self.spec.out_signed)

    def __call__(self, q: torch.Tensor, tabulated: bool = False) -> torch.Tensor:
        """``q_in -> q_out``. ``tabulated`` answers from tables of the elementwise parts
        (built once by :meth:`compute` over their whole domain, so the result is the
        same integers); the quantized model and the exported program use it, the
        analysis and the reference tests the arithmetic."""
        q = self.check(q)
        return self.tabulated(q) if tabulated else self.compute(q)

    def check(self, q: torch.Tensor) -> torch.Tensor:
        """``q`` as int64 after checking it is an integer tensor in the kernel's domain."""
        if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
            raise TypeError(
                f"{self.op} kernels take integer tensors, got {q.dtype}; quantize first "
                f"(q = round(x / {self.in_scale:g}))"
            )
        q = q.to(torch.int64)
        lo, hi = self.spec.domain(self.in_bits)
        if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
            raise ValueError(
                f"{self.op} kernel input outside its {self.in_bits}-bit domain "
                f"[{lo}, {hi}]: got [{int(q.min())}, {int(q.max())}]"
            )
        if self.spec.rowwise and (q.dim() == 0 or q.shape[-1] == 0):
            raise ValueError(f"{self.op} works on rows (the last dimension); got shape "
                             f"{tuple(q.shape)}")
        return q

    def tabulated(self, q: torch.Tensor) -> torch.Tensor:
        """:meth:`compute` by table lookup, for elementwise ops; row ops override it or
        compute directly."""
        if self.spec.rowwise or self.in_bits > MAX_TABLE_BITS:
            return self.compute(q)
        return self.table[q - self.spec.domain(self.in_bits)[0]]

    @functools.cached_property
    def table(self) -> torch.Tensor:
        lo, hi = self.spec.domain(self.in_bits)
        return self.compute(torch.arange(lo, hi + 1))

    @abstractmethod
    def compute(self, q: torch.Tensor) -> torch.Tensor:
        """The integer map itself (inputs already checked)."""

    @abstractmethod
    def counts(self) -> dict[str, Any]:
        """Operations per element (keys of :class:`Cost`), counted from ``compute``."""

    def cost(self, row_length: int = 197) -> Cost:
        """Hardware cost; the widest width is read from a run on a probe row that spans
        the whole input domain (declared widths depend on the row length, not the data)."""
        lo, hi = self.spec.domain(self.in_bits)
        probe = round_half_even(torch.linspace(lo, hi, row_length, dtype=torch.float64))
        log = WidthLog()
        with record_widths(log):
            self.compute(probe.to(torch.int64)[None])
        if not self.integer_only:
            return Cost(**self.counts(), integer_only=False)
        return Cost(**self.counts(), widest_bits=log.widest, requant_bits=log.requant)

    def dequantize(self, q_out: torch.Tensor) -> torch.Tensor:
        return q_out.to(torch.float64) * self.out_scale

    def output_multiplier(self, y_scale: float, y_bits: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The dyadic pair taking ``y_bits``-wide results at ``y_scale`` to ``out_scale``."""
        return dyadic(y_scale / self.out_scale, mantissa_bits_for(y_bits))

    def finish(self, y: torch.Tensor, y_bits: int, m: torch.Tensor, e: torch.Tensor
               ) -> torch.Tensor:
        """The shared output stage: requantize ``y`` with the pair from
        :meth:`output_multiplier` and saturate to the output range."""
        lo, hi = self.out_range
        return requantize(y, m, e, y_bits, self.op).clamp(lo, hi)


class Approx:
    """A variant of one op, chosen by name: ``family_param_value_param_value...``."""

    op: ClassVar[str]
    family: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(self.params)
        if unknown:
            raise ValueError(
                f"{self.op} '{self.family}' has no parameter {sorted(unknown)}; "
                f"accepted: {', '.join(self.params) or 'none'}"
            )
        self.args = {key: values.get(key, p.default) for key, p in self.params.items()}

    @property
    def name(self) -> str:
        """Canonical name: the family, then every parameter that differs from its default."""
        parts = [self.family]
        for key, p in self.params.items():
            if self.args[key] != p.default:
                parts += [key, str(self.args[key])]
        return "_".join(parts)

    def __repr__(self) -> str:
        return f"<{self.op} {self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Approx) and (self.op, self.name) == (other.op, other.name)

    def __hash__(self) -> int:
        return hash((self.op, self.name))

    kernel: ClassVar[Callable[..., Kernel]]

    def prepare(self, in_scale: float, in_bits: int = 8, out_bits: int = 8,
                out_scale: float | None = None, **extra: Any) -> Kernel:
        """Fix the integer constants for this input quantization: the variant's kernel
        class, called with the parameters (dashes read as underscores) and ``extra``
        (LayerNorm's ``dim``, ``weight``, ``bias``)."""
        params = {key.replace("-", "_"): value for key, value in self.args.items()}
        return type(self).kernel(**params, **extra, in_scale=in_scale, in_bits=in_bits,
                                 out_bits=out_bits, out_scale=out_scale)
