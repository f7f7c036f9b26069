"""The value passed between quantized modules, and the modes a model runs in.

``QT(value, scale)``: in ``Mode.INT`` the value is an int64 tensor ``q`` and the real
value is ``q * scale``; in ``Mode.FAKE`` it is the float ``q * scale`` itself (so
gradients flow), with the same scale; in ``Mode.FLOAT`` and ``Mode.CALIBRATE`` it is a
plain float tensor and ``scale`` is None. A scale is a float tensor: a scalar, or a
vector over the last dimension (per-channel, after a linear layer).
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
