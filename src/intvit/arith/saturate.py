"""Saturating casts to b-bit signed and unsigned integers.

``qrange(b, signed=True)  = (-2^(b-1), 2^(b-1) - 1)``
``qrange(b, signed=False) = (0, 2^b - 1)``
``saturate(x, b, signed)  = min(max(x, lo), hi)`` (values stay int64 tensors).
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = range(2, 33)


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integer range of a ``bits``-wide signed or unsigned integer."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(
            f"bit-width must be an integer in [{SUPPORTED_BITS.start}, "
            f"{SUPPORTED_BITS.stop - 1}], got {bits!r}"
        )
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(x: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Clamp ``x`` into the range of a ``bits``-wide integer."""
    lo, hi = qrange(bits, signed)
    return x.clamp(lo, hi)
