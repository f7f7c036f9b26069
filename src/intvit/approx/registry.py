"""One registry per op, and the parameterized names of the I-ViT extension.

A name is ``family`` or ``family_param_value_param_value...``; parameter names may hold
dashes but not underscores (``ppoly_seg_16_deg_2_scale-bits_22_backend_float``).
Unknown families, unknown parameters and bad values are errors that list what is
accepted; nothing is silently dropped.
"""

from __future__ import annotations

from typing import Any

from .base import Approx
from .ops import OPS

REGISTRY: dict[str, dict[str, type[Approx]]] = {op: {} for op in OPS}


class UnknownApproximation(ValueError):
    """A name that no registry entry accepts; the message lists what is accepted."""


def register(cls: type[Approx]) -> type[Approx]:
    """Class decorator: add a variant to its op's registry under its family name."""
    table = REGISTRY[cls.op]
    if cls.family in table:
        raise ValueError(f"{cls.op} '{cls.family}' is registered twice")
    table[cls.family] = cls
    return cls


def families(op: str) -> list[str]:
    _check_op(op)
    return list(REGISTRY[op])


def describe(op: str) -> str:
    """Human-readable list of an op's families and their parameters."""
    lines = []
    for family, cls in REGISTRY[op].items():
        params = ", ".join(f"{k} (default {p.default}: {p.help})" for k, p in cls.params.items())
        lines.append(f"  {family}: {cls.summary}" + (f"; parameters: {params}" if params else ""))
    return "\n".join(lines)


def _check_op(op: str) -> None:
    if op not in REGISTRY:
        raise UnknownApproximation(f"unknown op {op!r}; ops: {', '.join(REGISTRY)}")


def parse_name(name: str) -> tuple[str, dict[str, str]]:
    """Split ``family_key_value...`` into the family and a dict of raw values."""
    tokens = name.strip().split("_")
    if not tokens[0] or len(tokens) % 2 == 0 or any(not t for t in tokens):
        raise UnknownApproximation(
            f"malformed approximation name {name!r}: expected 'family' or "
            f"'family_param_value[_param_value...]', e.g. 'ivit_n_20'"
        )
    pairs = dict(zip(tokens[1::2], tokens[2::2]))
    if len(pairs) != (len(tokens) - 1) // 2:
        raise UnknownApproximation(f"approximation name {name!r} repeats a parameter")
    return tokens[0], pairs


def build(op: str, name: str | Approx) -> Approx:
    """The variant of ``op`` that ``name`` stands for (an :class:`Approx` passes through)."""
    _check_op(op)
    if isinstance(name, Approx):
        if name.op != op:
            raise UnknownApproximation(f"{name!r} is a {name.op} variant, not a {op} one")
        return name
    family, raw = parse_name(name)
    table = REGISTRY[op]
    if family not in table:
        raise UnknownApproximation(
            f"unknown {op} approximation {family!r} in {name!r}; accepted:\n{describe(op)}"
        )
    cls = table[family]
    values: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in cls.params:
            raise UnknownApproximation(
                f"{op} '{family}' has no parameter {key!r} (in {name!r}); accepted: "
                f"{', '.join(cls.params) or 'none'}"
            )
        try:
            values[key] = cls.params[key].read(text)
        except ValueError as err:
            raise UnknownApproximation(
                f"bad value {text!r} for {key!r} in {op} name {name!r}: {err}"
            ) from None
    return cls(**values)
