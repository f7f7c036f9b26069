"""Dyadic requantization: multiplying an integer by a real number with integers only.

A real multiplier ``M`` (the ratio of two quantization scales, known when a model is
converted) is frozen into an integer pair ``(m, e)`` with

    M ~= m * 2^-e,   2^(B-1) <= |m| < 2^B   (B = MANTISSA_BITS = 31 by default),

found without any Python loop: ``torch.frexp`` splits ``M = f * 2^k`` with
``0.5 <= |f| < 1``, then ``m = round(f * 2^B)`` (nearest, ties to even) and
``e = B - k``. When rounding gives ``|m| = 2^B`` we halve ``m`` and decrement ``e``.
The relative error of the pair is at most ``2^-B``. ``M = 0`` gives ``m = 0``.

Applying the pair to an integer ``x`` is

    requantize(x, m, e) = floor((x * m + 2^(e-1)) / 2^e)     (round half up)

an integer multiply, an add and an arithmetic shift. With ``x`` of at most ``W`` signed
bits, the product needs ``W + B`` signed bits; a kernel whose result is wider than 32
bits uses a shorter mantissa, ``B = min(31, 63 - W)`` (:func:`mantissa_bits_for`), so the
product never leaves int64.
The shift ``e`` must lie in ``[0, 62]``: multipliers of ``2^B`` or more are rejected,
and multipliers below ``2^(B-62)`` are rounded onto ``e = 62`` (their mantissa shrinks:
below ``2^-63`` it is 0, or 1 where the mantissa's own rounding reached ``2^-63``; the
error stays under one unit of ``2^-62``).
"""

from __future__ import annotations

import torch

from .rounding import round_half_even
from .width import active, declare, signed_bits

MANTISSA_BITS = 31
MAX_EXPONENT = 62


def dyadic(multiplier: float | torch.Tensor, mantissa_bits: int = MANTISSA_BITS
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a real multiplier (scalar or tensor, any sign) into int64 ``(m, e)``."""
    if not 2 <= mantissa_bits <= 31:
        raise ValueError(f"mantissa_bits must lie in [2, 31], got {mantissa_bits}")
    device = multiplier.device if isinstance(multiplier, torch.Tensor) else "cpu"
    real = torch.as_tensor(multiplier, dtype=torch.float64, device=device)
    if not bool(torch.isfinite(real).all()):
        raise ValueError("dyadic multipliers must be finite")
    frac, exp = torch.frexp(real)
    m = round_half_even(frac * float(1 << mantissa_bits)).to(torch.int64)
    e = mantissa_bits - exp.to(torch.int64)
    carry = m.abs() == (1 << mantissa_bits)
    m = torch.where(carry, m // 2, m)
    e = torch.where(carry, e - 1, e)
    if e.numel() and int(e.min()) < 0:
        raise ValueError(
            f"dyadic multiplier too large: |M| must round below 2^{mantissa_bits} "
            f"(|M| < 2^{mantissa_bits} - 1/2), got {float(real.abs().max())}"
        )
    excess = (e - MAX_EXPONENT).clamp_min(0)
    dropped = excess.clamp_max(MAX_EXPONENT)  # |m| < 2^31: 62 dropped bits leave 0
    m = (m + ((torch.ones_like(m) << dropped) >> 1)) >> dropped
    return m, e - excess


def dyadic_value(m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The real number ``m * 2^-e`` that a pair stands for (float64, for reports)."""
    return m.to(torch.float64) * torch.pow(2.0, -e.to(torch.float64))


def mantissa_bits_for(x_bits: int) -> int:
    """The widest mantissa (at most 31 bits) whose product with an ``x_bits`` signed
    integer still fits 63 bits, so the rounding add cannot overflow int64."""
    bits = min(MANTISSA_BITS, 63 - x_bits)
    if bits < 8:
        raise ValueError(f"cannot requantize {x_bits}-bit values within int64")
    return bits


def requantize(x: torch.Tensor, m: torch.Tensor | int, e: torch.Tensor | int,
               x_bits: int = 32, what: str = "requantize") -> torch.Tensor:
    """``floor((x * m + 2^(e-1)) / 2^e)`` for ``x`` of at most ``x_bits`` signed bits.

    The product is declared under ``<what>.requant``: the output stage's multiplier,
    reported apart from the kernel's own arithmetic (see :class:`WidthLog`)."""
    m = torch.as_tensor(m, dtype=torch.int64, device=x.device)
    e = torch.as_tensor(e, dtype=torch.int64, device=x.device)
    declare(x, x_bits, f"{what}.in")
    product = x * m
    if active():
        m_max = int(m.abs().max()) if m.numel() else 0
        declare(product, signed_bits(m_max << (x_bits - 1)), f"{what}.requant")
    half = (torch.ones_like(e) << e) >> 1
    return (product + half) >> e
