"""Integer square root by Newton iteration, with an integer starting point.

``bit_length(x)`` is the number of bits of ``x >= 0`` (0 for 0), found by a binary
search of six shift-and-compare steps (32, 16, 8, 4, 2, 1): a leading-zero count, no
float log2.

``isqrt(x) = floor(sqrt(x))`` for every int64 ``x >= 0``. With ``n = bit_length(x)`` the
start ``r0 = 2^ceil(n/2)`` is at least ``sqrt(x)``. The iteration

    r_{i+1} = floor((r_i + floor(x / r_i)) / 2)

decreases strictly while ``r_i > floor(sqrt(x))`` and, by the AM-GM inequality, never
falls below ``floor(sqrt(x))``; once there, ``r_{i+1} >= r_i``. Every element therefore
stops exactly at ``floor(sqrt(x))``. Widths: ``r <= 2^32``, ``floor(x / r) <= 2^32``, so
``r + floor(x / r)`` needs 34 signed bits.

**Step count.** Write ``s = sqrt(x)`` and ``r_i <= s (1 + e_i)``. Since
``r0 / s <= 2^(ceil(n/2) - (n-1)/2) <= 2``, ``e_0 = 1``; the floors only lower an
iterate and ``r -> (r + x/r) / 2`` is increasing for ``r >= s``, so

    e_{i+1} = e_i^2 / (2 (1 + e_i))          (1, 1/4, 1/40, 1/3280, ...)

bounds every later iterate. Once ``s e_k < 1`` for every ``x < 2^B`` (``e_k^2 2^B < 1``),
``r_k <= floor(s) + 1``, and one more step lands on ``floor(s)`` (from ``a + 1``,
``floor(x / (a + 1))`` is ``a - 1`` or ``a``). :func:`newton_steps` is that ``k + 1``,
computed exactly in integers: 5 steps for 31-bit inputs, 6 for 63-bit ones. Eagerly the
loop stops as soon as no element moves (and checks, after the last step, that none
would: only an input beyond the bound promised can still move); compiled, and in the ONNX graph, exactly ``newton_steps(B)`` steps run for the
``B``-bit bound the caller declares.
"""

from __future__ import annotations

import torch

from .width import validating


def newton_steps(bits: int) -> int:
    """Newton steps after which every ``0 <= x < 2^bits`` has reached ``floor(sqrt(x))``
    (see the module docstring): the bound ``e_k = p / q`` kept as two integers."""
    if not 0 <= bits <= 63:
        raise ValueError(f"isqrt takes inputs of 0 to 63 bits, got {bits}")
    p, q, steps = 1, 1, 0
    while p * p << bits >= q * q:
        p, q, steps = p * p, 2 * q * (q + p), steps + 1
    return steps + 1


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


def isqrt(x: torch.Tensor, bits: int = 63) -> torch.Tensor:
    """``floor(sqrt(x))`` for each int64 element, ``0 <= x < 2^bits``, exactly:
    :func:`newton_steps` ``(bits)`` Newton steps, fewer eagerly once no element moves."""
    if x.dtype != torch.int64:
        raise TypeError(f"isqrt needs an int64 tensor, got {x.dtype}")
    steps = newton_steps(bits)
    root = torch.ones_like(x) << ((bit_length(x) + 1) >> 1)
    for _ in range(steps):
        step = (root + x // root.clamp_min(1)) >> 1
        if validating() and not bool((step < root).any()):
            return root
        root = torch.minimum(root, step)
    if validating() and bool(((root + x // root.clamp_min(1)) >> 1 < root).any()):
        raise ValueError(f"isqrt did not converge in {steps} steps: an input is not "
                         f"below the 2^{bits} promised")
    return root
