"""Integer square root by Newton iteration, with an integer starting point.

``bit_length(x)`` is the number of bits of ``x >= 0`` (0 for 0), found by a binary
search of six shift-and-compare steps (32, 16, 8, 4, 2, 1): a leading-zero count, no
float log2.

``isqrt(x) = floor(sqrt(x))`` for every int64 ``x >= 0``. With ``n = bit_length(x)`` the
start ``r0 = 2^ceil(n/2)`` is at least ``sqrt(x)``. The iteration

    r_{i+1} = floor((r_i + floor(x / r_i)) / 2)

decreases strictly while ``r_i > floor(sqrt(x))`` and, by the AM-GM inequality, never
falls below ``floor(sqrt(x))``; once there, ``r_{i+1} >= r_i``. Every element therefore
stops exactly at ``floor(sqrt(x))``. Since ``r0 < 2 * sqrt(x) + 1`` the error at least
halves per step at first, then converges quadratically: at most 7 steps for 63-bit
inputs (checked against Python's ``math.isqrt`` in the tests). Widths: ``r <= 2^32``,
``floor(x / r) <= 2^32``, so ``r + floor(x / r)`` needs 34 signed bits.
"""

from __future__ import annotations

import torch

from .width import validating

MAX_NEWTON_STEPS = 8


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Number of bits of each non-negative int64 element (0 for 0)."""
    if validating() and x.numel() and int(x.min()) < 0:
        raise ValueError("bit_length needs non-negative integers")
    length = torch.zeros_like(x)
    rest = x.clone()
    for step in (32, 16, 8, 4, 2, 1):
        high = (rest >> step) > 0
        length += high.to(x.dtype) * step
        rest = torch.where(high, rest >> step, rest)
    return length + (rest > 0).to(x.dtype)


def isqrt(x: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(x))`` for each non-negative int64 element, exactly. Eagerly the loop
    stops once no element moves; compiled it runs all ``MAX_NEWTON_STEPS`` (a converged
    root stays put, so the result is the same)."""
    if x.dtype != torch.int64:
        raise TypeError(f"isqrt needs an int64 tensor, got {x.dtype}")
    root = torch.ones_like(x) << ((bit_length(x) + 1) >> 1)
    for _ in range(MAX_NEWTON_STEPS):
        step = (root + x // root.clamp_min(1)) >> 1
        if validating() and not bool((step < root).any()):
            return root
        root = torch.minimum(root, step)
    if validating():
        raise AssertionError("isqrt did not converge; the start bound is wrong")
    return root
