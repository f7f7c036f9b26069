"""Registries filled by decorators: ``rule = registrar(TABLE)``, then ``@rule("a", "b")``
files the function under each key (the C emitters, the shape rules, the ONNX lowerings)."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def registrar(table: dict[str, F]) -> Callable[..., Callable[[F], F]]:
    """A decorator factory that stores the decorated function in ``table`` under every key
    it is given, and returns the function unchanged."""
    def keys(*names: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for name in names:
                table[name] = fn
            return fn
        return register
    return keys
