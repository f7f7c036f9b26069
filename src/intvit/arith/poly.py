"""Integer polynomial evaluation (Horner's rule) with a proven accumulator width.

For integer coefficients ``c_0 .. c_d`` (lowest degree first, each a scalar or a tensor
broadcast against ``t``), integer ``t`` and a fixed-point shift ``g >= 0``:

    acc_d = c_d,   acc_k = floor(acc_{k+1} * t / 2^g) + c_k,   p = acc_0

With ``g = 0`` this is the exact ``sum_k c_k t^k``. With ``g > 0`` it evaluates
``sum_k c_k u^k`` for the fixed-point ``u = t / 2^g`` (so ``0 <= u < 1`` when
``0 <= t < 2^g``): coefficient ``c_k`` carries ``k * g`` more fraction bits than ``c_0``,
which keeps high-order coefficients precise when ``t`` spans many integers. Each floor
adds an error below one unit of ``c_0``, at most ``d`` units in total.

Width bound: with ``|t| <= T`` and ``|c_k| <= C_k``, ``|acc_d| <= C_d`` and
``|acc_k| <= ceil(|acc_{k+1}| * T / 2^g) + C_k``. :func:`horner_bits` turns those into
signed widths (each product, then the result) and :func:`horner` declares every product
and the result with them, so a wrap is impossible inside the stated domain and caught
by :func:`~intvit.arith.width.overflow_checks` outside it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .width import declare, signed_bits


def _max_abs(c: int | torch.Tensor) -> int:
    return int(torch.as_tensor(c).abs().max())


def horner_bits(coeffs: Sequence[int | torch.Tensor], t_max_abs: int, shift: int = 0
                ) -> list[int]:
    """Signed widths of the products ``acc_{k+1} * t`` (k = d-1 .. 0), then of ``p``."""
    bound = _max_abs(coeffs[-1])
    widths = []
    for c in reversed(coeffs[:-1]):
        product = bound * t_max_abs
        widths.append(signed_bits(product))
        bound = -((-product) >> shift) + _max_abs(c)
    widths.append(signed_bits(bound))
    return widths


def horner(t: torch.Tensor, coeffs: Sequence[int | torch.Tensor], t_max_abs: int,
           what: str = "horner", shift: int = 0) -> torch.Tensor:
    """Evaluate the polynomial above exactly; ``|t| <= t_max_abs`` is the stated domain."""
    if not coeffs:
        raise ValueError("a polynomial needs at least one coefficient")
    widths = horner_bits(coeffs, t_max_abs, shift)
    declare(t, signed_bits(t_max_abs), f"{what}.t", max_abs=t_max_abs)
    acc = torch.as_tensor(coeffs[-1], dtype=torch.int64, device=t.device).expand_as(t).clone()
    for step, c in enumerate(reversed(coeffs[:-1])):
        acc = (declare(acc * t, widths[step], f"{what}.product") >> shift) + c
    return declare(acc, widths[-1], f"{what}.sum")
