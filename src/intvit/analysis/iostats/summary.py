"""The statistics of one layer's tensors, summarised as one row of the I/O statistics table
(the columns are described in :mod:`intvit.analysis.iostats`): running extremes, shapes,
dtypes and scales of each tensor slot, the widths the module declares and the widths
the values need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ...approx import OPS
from ...quant.modules import ACC_BITS, QuantAct, QuantLinear, QuantMatMul, QuantPatchConv
from ...quant.nonlinear import KernelModule
from ...quant.qtensor import QT, to_integers
from .reservoir import Reservoir

SLOTS = ("in", "in2", "out")
SLOT_FIELDS = ("dtype", "shape", "numel", "min", "max", "bits", "signed", "bits_used",
               "scale_min", "scale_max", "scale_numel")
COLUMNS = (("layer", "type", "op", "approx", "mode", "calls")
           + tuple(f"{slot}_{f}" for slot in SLOTS for f in SLOT_FIELDS)
           + ("out_at_limit", "samples"))


def declared_widths(module: nn.Module) -> dict[str, tuple[int, bool] | None]:
    """The (bits, signed) each tensor slot of ``module`` is declared to fit; None where
    the module declares nothing (a QuantAct reads whatever its producer wrote), and for
    an operand before the module's first FAKE/INT call: its operand widths are those of
    the values it is given, and a float value (FLOAT/CALIBRATE modes) has no format."""
    def operand(bits: int | None) -> tuple[int, bool] | None:
        return None if bits is None else (bits, True)

    if isinstance(module, QuantAct):
        return {"in": None, "in2": None, "out": (module.bits, module.signed)}
    if isinstance(module, (QuantLinear, QuantPatchConv)):
        return {"in": operand(module.in_bits), "in2": None, "out": (ACC_BITS, True)}
    if isinstance(module, QuantMatMul):
        return {"in": operand(module.a_bits), "in2": operand(module.b_bits),
                "out": (ACC_BITS, True)}
    if isinstance(module, KernelModule):
        return {"in": operand(module.in_bits), "in2": None,
                "out": (module.out_bits, OPS[module.op].out_signed)}
    return {"in": None, "in2": None, "out": None}


def bits_needed(lo: int, hi: int, signed: bool = True) -> int:
    """The width an integer range needs: signed (two's complement), or unsigned when
    asked for and the range is non-negative."""
    if not signed and lo >= 0:
        return max(int(hi).bit_length(), 1)
    width = lambda v: (v if v >= 0 else -v - 1).bit_length() + 1  # noqa: E731
    return max(width(int(lo)), width(int(hi)))


def _shape_text(shape: list[int | None] | None) -> str:
    if shape is None:
        return "varies"
    return "x".join("*" if d is None else str(d) for d in shape)


@dataclass
class TensorStats:
    """Running statistics of one tensor slot of one layer."""

    dtypes: list[str] = field(default_factory=list)
    shape: list[int | None] | None = None
    shaped: bool = False
    numel: int = 0
    lo: float | int | None = None
    hi: float | int | None = None
    integer: bool = True
    scale_lo: float | None = None
    scale_hi: float | None = None
    scale_numel: int | None = None

    def update(self, a: QT, extrema: Callable[[torch.Tensor], tuple[Any, Any]]
               ) -> tuple[torch.Tensor | None, Any, Any]:
        """Fold one value in; returns its integers (None when it has neither an integer
        dtype nor a scale) and their (or its) min and max in this call."""
        value = a.value
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in self.dtypes:
            self.dtypes.append(dtype)
        shape = list(value.shape)
        if not self.shaped:
            self.shape, self.shaped = shape, True
        elif self.shape is not None:
            self.shape = (None if len(self.shape) != len(shape) else
                          [d if d == e else None for d, e in zip(self.shape, shape)])
        self.numel += value.numel()
        q = None
        if not (value.dtype.is_floating_point or value.dtype.is_complex):
            q = value
        elif a.scale is not None:
            q = to_integers(a)
        if a.scale is not None:
            s = torch.as_tensor(a.scale).detach()
            lo, hi = float(s.min()), float(s.max())
            self.scale_lo = lo if self.scale_lo is None else min(self.scale_lo, lo)
            self.scale_hi = hi if self.scale_hi is None else max(self.scale_hi, hi)
            self.scale_numel = max(self.scale_numel or 0, s.numel())
        if q is None:
            self.integer = False
        lo = hi = None
        if value.numel():
            lo, hi = extrema(value if q is None else q)
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
        return q, lo, hi

    def row(self, prefix: str, declared: tuple[int, bool] | None) -> dict[str, Any]:
        row: dict[str, Any] = {f"{prefix}_{f}": None for f in SLOT_FIELDS}
        if declared is not None:
            row[f"{prefix}_bits"], row[f"{prefix}_signed"] = declared
        if not self.shaped:
            return row
        used = None
        if self.integer and self.lo is not None:
            used = bits_needed(self.lo, self.hi, declared[1] if declared else True)
        row.update({f"{prefix}_dtype": "|".join(self.dtypes),
                    f"{prefix}_shape": _shape_text(self.shape),
                    f"{prefix}_numel": self.numel, f"{prefix}_min": self.lo,
                    f"{prefix}_max": self.hi, f"{prefix}_bits_used": used,
                    f"{prefix}_scale_min": self.scale_lo,
                    f"{prefix}_scale_max": self.scale_hi,
                    f"{prefix}_scale_numel": self.scale_numel})
        return row


@dataclass
class LayerStats:
    """Everything recorded for one QuantModule."""

    name: str
    module: nn.Module
    modes: list[str] = field(default_factory=list)
    calls: int = 0
    slots: dict[str, TensorStats] = field(
        default_factory=lambda: {slot: TensorStats() for slot in SLOTS})
    at_limit: int = 0
    reservoir: Reservoir | None = None
    row_length: int | None = None
    in_scale: float | None = None
    out_scale: float | None = None

    @property
    def op(self) -> str | None:
        return self.module.op if isinstance(self.module, KernelModule) else None

    def row(self) -> dict[str, Any]:
        declared = declared_widths(self.module)
        row = {"layer": self.name, "type": type(self.module).__name__, "op": self.op,
               "approx": self.module.approx.name if self.op else None,
               "mode": "|".join(self.modes) or None, "calls": self.calls}
        for slot in SLOTS:
            row.update(self.slots[slot].row(slot, declared[slot]))
        row["out_at_limit"] = self.at_limit if self.calls else None
        row["samples"] = self.reservoir.kept if self.reservoir is not None else 0
        return row
