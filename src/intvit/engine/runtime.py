"""The integer runtime (``--engine int``): runs an :class:`IntProgram` with PyTorch
integer ops, node by node, through the same functions as the eval-mode model
(:mod:`intvit.engine.ops`).

``debug=True`` runs inside :func:`intvit.arith.overflow_checks` (every declared width is
verified) and also checks that every node's integer output fits int32, naming the node
that overflows.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from ..arith import overflow_checks
from .ops import OPS, as_value
from .program import IntProgram, ProgramError

INT32 = torch.iinfo(torch.int32)


def check_images(program: IntProgram, images: torch.Tensor) -> None:
    """Images must be a finite float tensor of shape (B, C, H, W) matching the program."""
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ProgramError(f"the program takes float images (the input scale quantizes "
                           f"them); got {kind}")
    want = program.input_shape
    if images.dim() != 4 or tuple(images.shape[1:]) != want or images.shape[0] == 0:
        raise ProgramError(f"the program takes images of shape (B, {', '.join(map(str, want))})"
                           f" with B >= 1; got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ProgramError("the images hold NaN or infinite values")


class IntRuntime:
    """``runtime(images) -> int64 logits`` of shape (B, classes)."""

    def __init__(self, program: IntProgram, debug: bool = False) -> None:
        program.check()
        self.program, self.debug = program, debug
        tensors = program.tensors
        self.constants = {k: as_value(v) for k, v in tensors.items()}
        self.steps: list[tuple[Callable, list[str], dict, str, str]] = [
            (OPS[n.op], n.inputs, dict(n.attrs, **{r: tensors[t] for r, t in n.params.items()}),
             n.output, f"node {i} ({n.op}, {n.module})")
            for i, n in enumerate(program.nodes)]

    def run(self, images: torch.Tensor, keep: bool = False) -> dict[str, torch.Tensor]:
        """Every value of the program (``keep``) or just the outputs."""
        check_images(self.program, images)
        values = dict(self.constants)
        values[self.program.input] = images.to(torch.float32)
        with torch.inference_mode(), overflow_checks() if self.debug else nullcontext():
            for fn, inputs, kwargs, output, label in self.steps:
                out = fn(*[values[i] for i in inputs], **kwargs)
                if self.debug and not out.dtype.is_floating_point and out.dtype != torch.bool \
                        and out.numel() and (int(out.min()) < INT32.min or
                                             int(out.max()) > INT32.max):
                    raise OverflowError(f"{label} left int32: [{int(out.min())}, "
                                        f"{int(out.max())}]")
                values[output] = out
        return values

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[self.program.output]
