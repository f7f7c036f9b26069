"""Division by powers of two and by integers, with exact semantics for negatives.

All functions take int64 tensors and return int64 tensors.

* ``floor_shift(x, k)  = floor(x / 2^k)``: an arithmetic right shift (torch's ``>>`` on
  signed integers is arithmetic, so negative values round toward -inf, not toward 0).
* ``round_shift(x, k)  = floor(x / 2^k + 1/2)``: round half up (toward +inf), computed as
  ``(x >> k) + ((x >> (k-1)) & 1)`` (the floor plus the first dropped bit), which
  cannot overflow, unlike ``(x + 2^(k-1)) >> k``; ``k = 0`` is the identity.
* ``floor_div(x, d)    = floor(x / d)`` for integer ``d > 0``.
* ``round_div(x, d)    = floor(x / d + 1/2)`` for integer ``d > 0``: with
  ``x = d*k + r, 0 <= r < d`` it is ``k + [r >= d - floor(d/2)]``, equal to
  ``floor((x + floor(d/2)) / d)`` without forming the sum. For even ``d`` this is round
  half up; for odd ``d`` no tie exists.

Every function is exact on the whole int64 range.

``round_half_up(x) = floor(x + 1/2)`` is the same rule for float tensors: the one
rounding of a real value to the integer grid (quantizing inputs, weights, constants), and
``quantize(x, s, lo, hi) = clamp(floor(x / s + 1/2), lo, hi)`` that rounding of ``x`` at
scale ``s`` saturated to ``[lo, hi]``. ``round_half_even(x)`` (ties to the even integer,
IEEE 754's default) is the other rule, used only where a constant is fitted offline: a
dyadic multiplier's mantissa, a polynomial's coefficients, a probe of an input domain.

Shift amounts are limited to ``0 <= k <= 62`` so that ``2^k`` is an int64.
"""

from __future__ import annotations

import torch

from .width import validating

MAX_SHIFT = 62


def _check_shift(k: int | torch.Tensor) -> None:
    if isinstance(k, torch.Tensor):
        if not validating():
            return
        if k.numel() and (int(k.min()) < 0 or int(k.max()) > MAX_SHIFT):
            raise ValueError(f"shift amounts must lie in [0, {MAX_SHIFT}]")
    elif not 0 <= k <= MAX_SHIFT:
        raise ValueError(f"shift amount must lie in [0, {MAX_SHIFT}], got {k}")


def _check_divisor(d: int | torch.Tensor) -> None:
    if isinstance(d, torch.Tensor) and not validating():
        return
    positive = bool((d > 0).all()) if isinstance(d, torch.Tensor) else d > 0
    if not positive:
        raise ValueError("divisors must be positive integers")


def floor_shift(x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """``floor(x / 2^k)``."""
    _check_shift(k)
    return x >> k


def round_shift(x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """``floor(x / 2^k + 1/2)`` (round half up)."""
    _check_shift(k)
    first_dropped = (x >> (k - 1).clamp_min(0) if isinstance(k, torch.Tensor)
                     else x >> max(k - 1, 0)) & 1
    return (x >> k) + torch.where(torch.as_tensor(k, device=x.device) > 0, first_dropped, 0)


def floor_div(x: torch.Tensor, d: int | torch.Tensor) -> torch.Tensor:
    """``floor(x / d)`` for ``d > 0``."""
    _check_divisor(d)
    return torch.div(x, d, rounding_mode="floor")


def round_div(x: torch.Tensor, d: int | torch.Tensor) -> torch.Tensor:
    """``floor(x / d + 1/2)`` for ``d > 0`` (round half up)."""
    _check_divisor(d)
    quotient = torch.div(x, d, rounding_mode="floor")
    remainder = x - quotient * d
    return quotient + (remainder >= d - d // 2).to(x.dtype)


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 1/2)`` of a float tensor (quantization's rounding; stays float)."""
    return torch.floor(x + 0.5)


def quantize(x: torch.Tensor, scale: torch.Tensor | float, lo: int, hi: int) -> torch.Tensor:
    """``clamp(floor(x / scale + 1/2), lo, hi)``: ``x`` rounded half up to the integer grid
    of ``scale`` and saturated to ``[lo, hi]``; a float tensor of integers (no gradient
    of its own: wrap it in a straight-through estimator for training)."""
    return round_half_up(x / scale).clamp(lo, hi)


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    """The nearest integer of a float tensor, ties to the even one (``torch.round``);
    stays float. For constants fitted offline, not for quantizing values."""
    return torch.round(x)
