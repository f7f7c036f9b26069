"""The value passed between quantized modules, and the modes a model runs in.

``QT(value, scale, bits, signed)``: in ``Mode.INT`` the value is an int64 tensor ``q``
and the real value is ``q * scale``; in ``Mode.FAKE`` it is the float ``q * scale``
itself (so gradients flow), with the same scale; in ``Mode.FLOAT`` and
``Mode.CALIBRATE`` it is a plain float tensor and ``scale`` is None. A scale is a float
tensor: a scalar, or a vector over the last dimension (per-channel, after a linear
layer).

``bits`` and ``signed`` are the integer format of ``q``: it lies in
``qrange(bits, signed)`` (:func:`~intvit.arith.qrange`). The module that produces a
quantized value sets them (a requantizer its own width, a kernel its output width, a
linear layer or a matmul the 32-bit accumulator); the modules that consume it take their
operand widths from them. ``bits`` is None where the value has no integer format: a
float value (FLOAT/CALIBRATE modes, the model's input image).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import torch

from ..arith import quantize, round_half_up


class Mode(enum.Enum):
    FLOAT = "float"          # quantization off: the float model (equals timm)
    CALIBRATE = "calibrate"  # float forward, observers record activation ranges
    FAKE = "fake"            # QAT: fake-quantized values, integer kernels, STE gradients
    INT = "int"              # evaluation: integer tensors and integer kernels only


class QT(NamedTuple):
    value: torch.Tensor
    scale: torch.Tensor | None = None
    bits: int | None = None
    signed: bool = True

    @property
    def width(self) -> int | None:
        """The signed width that holds the integers (:func:`signed_width`); None without
        a format."""
        return None if self.bits is None else signed_width(self.bits, self.signed)

    def with_value(self, value: torch.Tensor) -> "QT":
        """The same scale and format for another value: an index move (reshape, permute,
        select, pad, roll, fill with in-range integers) of this value's integers."""
        return self._replace(value=value)


class FormatError(ValueError):
    """A quantized module got a value whose integer format it cannot take; ``module`` is
    that module (a model's forward adds its name in the model to the message)."""

    def __init__(self, message: str, module: object = None) -> None:
        super().__init__(message)
        self.module = module


def signed_width(bits: int, signed: bool) -> int:
    """The signed width that holds ``bits``-bit integers: ``bits``, one more if unsigned
    (the width an integer product or a kernel declares for such an operand)."""
    return bits + (not signed)


def ste(exact: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Forward value ``exact``, gradient of ``surrogate`` (straight-through)."""
    return surrogate + (exact - surrogate).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``quantize(x, scale, lo, hi) * scale`` (:func:`~intvit.arith.quantize`: round half
    up, saturate) with the identity gradient of ``x`` (straight-through)."""
    return ste(quantize(x, scale, lo, hi) * scale, x)


def to_integers(a: QT) -> torch.Tensor:
    """The integers of a fake-quantized value (exact: they are small integers times
    their scale), as int64."""
    return round_half_up(a.value / a.scale).to(torch.int64)
