"""Declared integer widths, and the run-time check that values respect them.

Every kernel in intvit computes in int64 torch tensors, but each intermediate has a
*declared* width: the number of signed bits (sign included) that its values are proven
to fit, given the kernel's documented input domain. A declaration is both documentation
(hardware needs an accumulator that wide) and, inside :func:`overflow_checks`, an
assertion checked on every call. Declared widths are computed from static bounds (input
bit-width, integer constants, row length), never from the data, so the widest declared
width of a kernel is its hardware cost, whatever the input.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch


class IntegerOverflowError(ArithmeticError):
    """An intermediate left the width its kernel declared for it."""


def signed_bits(max_abs: int) -> int:
    """Signed bits (sign included) that hold every integer in ``[-max_abs, max_abs]``."""
    if max_abs < 0:
        raise ValueError(f"max_abs must be >= 0, got {max_abs}")
    return int(max_abs).bit_length() + 1


@dataclass
class WidthLog:
    """Per-label record of the declared width and the largest magnitude seen."""

    declared: dict[str, int] = field(default_factory=dict)
    observed: dict[str, int] = field(default_factory=dict)

    def record(self, what: str, bits: int, t: torch.Tensor) -> None:
        self.declared[what] = max(bits, self.declared.get(what, 0))
        if t.numel():
            seen = max(-int(t.min()), int(t.max()))
            self.observed[what] = max(seen, self.observed.get(what, 0))

    @property
    def widest(self) -> int:
        """The widest declared width of the kernel's own arithmetic: every label except
        the output requantization products (``*.requant``), reported by
        :attr:`requant` since every kernel shares that stage."""
        return max((b for w, b in self.declared.items() if not w.endswith(".requant")),
                   default=0)

    @property
    def requant(self) -> int:
        """The widest requantization product (a ``W x 31``-bit multiply)."""
        return max((b for w, b in self.declared.items() if w.endswith(".requant")),
                   default=0)


_checking = False
_logs: list[WidthLog] = []


@contextmanager
def overflow_checks(log: WidthLog | None = None) -> Iterator[WidthLog]:
    """Check every declared intermediate while the block runs, and record widths.

    Raises :class:`IntegerOverflowError` at the first value outside its declared width.
    """
    global _checking
    log = log if log is not None else WidthLog()
    previous = _checking
    _checking = True
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.pop()
        _checking = previous


@contextmanager
def record_widths(log: WidthLog | None = None) -> Iterator[WidthLog]:
    """Record declared widths without checking values (cheap: no reductions)."""
    log = log if log is not None else WidthLog()
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.pop()


def active() -> bool:
    """Whether declarations are checked or recorded now: a declaration whose width needs
    a reduction over constants (a requantizer's multiplier) computes it only then."""
    return _checking or bool(_logs)


def validating() -> bool:
    """Whether the arithmetic validates its operands at run time (shift amounts, divisors,
    signs): always, except inside ``torch.compile``, whose graphs hold no data-dependent
    Python branches. The compiled engine runs programs that the eager path validated
    on export; its debug mode runs eagerly."""
    return not torch.compiler.is_compiling()


def declare(t: torch.Tensor, bits: int, what: str, max_abs: int | None = None
            ) -> torch.Tensor:
    """Declare that every value of ``t`` fits ``bits`` signed bits (and, when given, the
    exact bound ``|t| <= max_abs`` that a later width was derived from); return ``t``."""
    if bits > 64:
        raise IntegerOverflowError(f"{what}: declared width {bits} bits exceeds int64")
    if _checking and t.numel():
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if max_abs is not None:
            lo, hi = max(lo, -max_abs), min(hi, max_abs)
        t_min, t_max = int(t.min()), int(t.max())
        if t_min < lo or t_max > hi:
            raise IntegerOverflowError(
                f"{what}: values in [{t_min}, {t_max}] exceed the declared "
                f"range [{lo}, {hi}] ({bits} bits)"
            )
    for log in _logs:
        if _checking:
            log.record(what, bits, t)
        else:
            log.declared[what] = max(bits, log.declared.get(what, 0))
    return t
