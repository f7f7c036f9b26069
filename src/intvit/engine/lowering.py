"""Lowering a quantized model (eval mode) to an :class:`~.program.IntProgram`.

The model runs once in ``Mode.INT`` on probe images with hooks on its quantized
modules, which record each module's output integers; that run freezes every module's
integer constants (:class:`~intvit.quant.modules.FrozenConstants`). The model's own
description of its program, the ``lower`` methods beside its modules' ``forward``
(:meth:`intvit.models.base.QuantModel.lower`), then drives a :class:`Builder`, which
implements :class:`~intvit.models.program_builder.ProgramBuilder`: each quantized module
becomes nodes holding the very constants the eval-mode model holds (its ``frozen_*``
buffers: dyadic pairs, int8 weights, int32 biases, kernel tables), each index move a
structural node. The builder runs every node on the probe as it adds it and compares
each module's result with the integers the model produced: a lowering that differs from
the model fails at export, naming the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..arith import qrange
from ..models.base import QuantModel
from ..quant import QuantAct, QuantModule, QuantPatchConv
from ..quant.frozen import compact
from .ops import OPS, as_value
from .program import IntProgram, Node, NotIntegerOnly, ProgramError


@dataclass
class Call:
    args: tuple
    kwargs: dict
    output: Any


def capture(model: QuantModel, images: torch.Tensor) -> dict[nn.Module, Call]:
    """Run the integer model once, recording every quantized module's call."""
    calls: dict[nn.Module, Call] = {}

    def hook(module, args, kwargs, output):
        if module in calls:
            raise ProgramError("a quantized module runs twice per forward; the lowering "
                               "expects one call per module")
        calls[module] = Call(args, kwargs, output)

    handles = [m.register_forward_hook(hook, with_kwargs=True)
               for m in model.modules() if isinstance(m, QuantModule)]
    try:
        with torch.no_grad():
            model.forward_int(images)
    finally:
        for handle in handles:
            handle.remove()
    return calls


class Builder:
    """Adds nodes to a program, running each on the probe images as it goes (the
    :class:`~intvit.models.program_builder.ProgramBuilder` of a model's ``lower``)."""

    input = IntProgram.input  # the value name of the program's input

    def __init__(self, model: QuantModel, images: torch.Tensor) -> None:
        self.calls = capture(model, images)
        self.visited: set[nn.Module] = set()
        self.names = {m: name for name, m in model.named_modules()}
        self.nodes: list[Node] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {self.input: images}

    # --- generic ---------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], module: str = "",
             params: dict[str, torch.Tensor | tuple[str, torch.Tensor]] | None = None,
             **attrs: Any) -> str:
        """Add and run a node; each param is a tensor (named ``module.role``) or a
        ``(name, tensor)`` pair."""
        names = {}
        for role, tensor in (params or {}).items():
            name, tensor = tensor if isinstance(tensor, tuple) else (f"{module or op}.{role}",
                                                                       tensor)
            names[role] = self.constant(name, tensor)
        output = f"v{len(self.nodes)}"
        args = [self.values[i] for i in inputs]
        kwargs = {role: self.tensors[name] for role, name in names.items()}
        self.values[output] = OPS[op](*args, **attrs, **kwargs)
        self.nodes.append(Node(op, list(inputs), output, attrs, names, module))
        return output

    def constant(self, name: str, tensor: torch.Tensor) -> str:
        base, k = name, 1
        while name in self.tensors:
            name, k = f"{base}.{k}", k + 1
        self.tensors[name] = tensor.cpu()
        self.values[name] = as_value(self.tensors[name])
        return name

    def name(self, module: nn.Module) -> str:
        return self.names[module]

    def shape(self, value: str) -> tuple[int, ...]:
        return tuple(self.values[value].shape)

    def call(self, module: nn.Module) -> Call:
        if module not in self.calls:
            raise ProgramError(f"module {self.names.get(module)} did not run in the model's "
                               "forward; the lowering does not match this model")
        self.visited.add(module)
        return self.calls[module]

    def check_complete(self) -> None:
        """Every quantized module that ran in the model must be in the program."""
        missing = sorted(self.names[m] for m in set(self.calls) - self.visited)
        if missing:
            raise ProgramError(f"the lowering left out {', '.join(missing)} (an intvit bug)")

    def checked(self, module: nn.Module, value: str) -> str:
        expected = self.call(module).output.value
        got = self.values[value]
        if got.shape != expected.shape or not torch.equal(got, expected):
            raise ProgramError(f"lowering of {self.names[module]} differs from the model "
                               "(an intvit bug: please report it with the model config)")
        return value

    # --- structure -----------------------------------------------------------------------
    def reshape(self, x: str, *shape: int) -> str:
        return self.node("reshape", [x], shape=list(shape))

    def transpose(self, x: str, *perm: int) -> str:
        return self.node("transpose", [x], perm=list(perm))

    def take(self, x: str, axis: int, index: int) -> str:
        return self.node("take", [x], axis=axis, index=index)

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        return self.node("slice", [x], axis=axis, start=start, end=end)

    def concat(self, xs: list[str], axis: int) -> str:
        return self.node("concat", list(xs), axis=axis)

    def broadcast(self, constant: str, like: str) -> str:
        return self.node("broadcast", [constant, like])

    def roll(self, x: str, shifts: list[int], dims: list[int]) -> str:
        sizes = [self.shape(x)[d] for d in dims]
        return self.node("roll", [x], shifts=list(shifts), dims=list(dims), sizes=sizes)

    def pad(self, x: str, pads: list[list[int]]) -> str:
        return self.node("pad", [x], pads=[list(p) for p in pads])

    def where(self, x: str, cond: str, fill: int) -> str:
        return self.node("where", [x, cond], fill=fill)

    def sum(self, x: str, axis: int, bits: int) -> str:
        return self.node("sum", [x], axis=axis, bits=bits)

    # --- quantized modules ---------------------------------------------------------------
    def act(self, module: QuantAct, x: str, residual: str | None = None,
            frozen_residual: bool = False) -> str:
        """A requantizer; the residual the model passed it is ``residual`` (a value of the
        program) or, with ``frozen_residual``, the model's own tensor as a constant (a
        position embedding, a relative position bias). A residual the lowering leaves out
        is an error: as a constant it would hold the probe images' values."""
        call, name = self.call(module), self.names[module]
        frozen = module.frozen_tensors()
        lo, hi = qrange(module.bits, module.signed)
        if "m" not in frozen:
            return self.checked(module, self.node(
                "quantize", [x], name, {"scale": ("input.scale", frozen["scale"].cpu())},
                lo=lo, hi=hi))
        params = {"m": compact(frozen["m"]), "e": compact(frozen["e"])}
        inputs = [x]
        res = call.kwargs.get("residual")
        if res is None and (residual is not None or frozen_residual):
            raise ProgramError(f"{name} has no residual in the model")
        if residual is not None and frozen_residual:
            raise ProgramError(f"{name}: pass its residual as a value or as frozen, not both")
        if res is not None:
            if residual is None and not frozen_residual:
                raise ProgramError(f"the lowering of {name} leaves out the residual the "
                                   f"model adds: pass residual=<value>, or "
                                   f"frozen_residual=True for a tensor of the model")
            inputs.append(residual if residual is not None
                          else self.constant(f"{name}.residual", compact(res.value)))
            params.update(residual_m=compact(frozen["residual_m"]),
                          residual_e=compact(frozen["residual_e"]))
        return self.checked(module, self.node("requantize", inputs, name, params, lo=lo, hi=hi))

    def linear(self, module: nn.Module, x: str) -> str:
        name = self.names[module]
        self.call(module)
        frozen = module.frozen_tensors()
        params = {k: frozen[k].cpu() for k in ("weight", "bias") if k in frozen}
        return self.checked(module, self.node("linear", [x], name, params,
                                              in_bits=module.in_bits,
                                              weight_bits=module.weight_bits))

    def patch_conv(self, module: QuantPatchConv, x: str) -> str:
        """(B, C, H, W) -> the (B, N, C*p*p) patches of :func:`~intvit.quant.modules.patchify`,
        then the linear map."""
        _, c, h, w = self.shape(x)
        p = module.patch
        x = self.reshape(x, -1, c, h // p, p, w // p, p)
        x = self.reshape(self.transpose(x, 0, 2, 4, 1, 3, 5), -1, (h // p) * (w // p), c * p * p)
        return self.linear(module, x)

    def matmul(self, module: nn.Module, a: str, b: str) -> str:
        return self.checked(module, self.node("matmul", [a, b], self.names[module],
                                              a_bits=module.a_bits, b_bits=module.b_bits,
                                              a_unsigned=module.unsigned_a))

    def kernel(self, module: nn.Module, x: str) -> str:
        name = self.names[module]
        kernel = module.kernel(self.call(module).args[0])
        if not kernel.integer_only:
            raise NotIntegerOnly(f"{name} uses {module.op} '{module.approx.name}', a float "
                               "reference that is not integer-only; export a model whose "
                               "GELU, Softmax and LayerNorm use ivit, ibert or ppoly")
        if module.frozen_op is None:
            raise NotIntegerOnly(f"{name}: {module.op} with {kernel.in_bits}-bit inputs "
                               "cannot be tabulated")
        params = {k: v.cpu() for k, v in module.frozen_tensors().items() if k != "scale"}
        attrs = dict(module.frozen_attrs, approx=module.approx.name)
        return self.checked(module, self.node(module.frozen_op, [x], name, params, **attrs))

    def output(self, head: nn.Module, logits: str) -> str:
        scale = self.call(head).output.scale.to(torch.float32).reshape(-1)
        self.node("dequantize", [logits], self.names[head], {"scale": ("output.scale", scale)})
        return logits
