"""The protocol of the program builder that a module's ``lower`` method receives.

Each block of a model describes its integer program beside its ``forward``, as a method
``lower(self, b, x) -> str`` (a model's top level: ``lower_features(self, b, images)``):
it takes the program value names of its inputs and returns the name of its output,
adding nodes with the builder's methods below. The engine's
:class:`intvit.engine.lowering.Builder` implements this protocol (the models package does
not import the engine); it runs every node on probe images as it adds it and compares the
result of each quantized module with the integers that module produced in the model's
eval-mode forward, so a ``lower`` that differs from its ``forward`` fails at export,
naming the module.

Values are named by strings; a quantized module is passed as itself, and the builder
takes its frozen integer constants from it.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class ProgramBuilder(Protocol):
    # --- quantized modules: each checked against the module's output in the model ------
    def act(self, module: nn.Module, x: str, residual: str | None = None,
            frozen_residual: bool = False) -> str:
        """A ``QuantAct``: the model input's quantization, or a requantization of ``x``
        plus the residual the model passes it, if any: ``residual``, a value of the
        program, or with ``frozen_residual`` the model's own residual tensor (a position
        embedding, a bias) as a constant. Leaving out a residual is an error."""

    def linear(self, module: nn.Module, x: str) -> str:
        """A ``QuantLinear`` on (..., in) integers."""

    def patch_conv(self, module: nn.Module, x: str) -> str:
        """A ``QuantPatchConv`` on (B, C, H, W) integers: the patches, then its linear."""

    def matmul(self, module: nn.Module, a: str, b: str) -> str:
        """A ``QuantMatMul`` of two values."""

    def kernel(self, module: nn.Module, x: str) -> str:
        """A non-linear wrapper (GELU, Softmax, LayerNorm) as its frozen integer kernel."""

    def output(self, head: nn.Module, logits: str) -> str:
        """Mark ``logits``, the output of the model's head, as the program's output."""

    # --- constants and shapes -------------------------------------------------------------
    def constant(self, name: str, tensor: torch.Tensor) -> str:
        """A constant tensor of the program (``name`` made unique)."""

    def name(self, module: nn.Module) -> str:
        """The module's name in the model (``blocks.0.attn``)."""

    def shape(self, x: str) -> tuple[int, ...]:
        """The shape of ``x`` on the probe images (the batch is the probe's)."""

    # --- index moves and sums -------------------------------------------------------------
    def reshape(self, x: str, *shape: int) -> str:
        """``x.reshape(shape)``; ``-1`` stands for the batch."""

    def transpose(self, x: str, *perm: int) -> str:
        """``x.permute(perm)``."""

    def take(self, x: str, axis: int, index: int) -> str:
        """``x.select(axis, index)``."""

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        """``x.narrow(axis, start, end - start)``."""

    def concat(self, xs: list[str], axis: int) -> str:
        """``torch.cat(xs, axis)``."""

    def broadcast(self, constant: str, like: str) -> str:
        """A constant of batch 1 expanded to the batch of ``like``."""

    def roll(self, x: str, shifts: list[int], dims: list[int]) -> str:
        """``torch.roll(x, shifts, dims)``."""

    def pad(self, x: str, pads: list[list[int]]) -> str:
        """Zero padding: one ``[before, after]`` per dimension, first to last."""

    def where(self, x: str, cond: str, fill: int) -> str:
        """``x`` with the entries where ``cond`` holds set to ``fill``."""

    def sum(self, x: str, axis: int, bits: int) -> str:
        """The sum over ``axis``, declared ``bits`` wide."""
