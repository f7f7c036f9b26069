"""Quantized building blocks. Each maps ``QT -> QT`` in the four modes of
:class:`~.qtensor.Mode`; the INT path calls only the integer functions of
:mod:`.integer` and the integer kernels of :mod:`intvit.approx` (their elementwise parts
answered from tables computed once per scale by the kernels' own arithmetic: the same
integers, faster, and what the inference engine runs), the FAKE path takes its
non-linear forward values from the same kernels and its gradients from the float
function (straight-through). ``frozen``/``multiplier``/``kernel`` give the integer
constants each module derives from its scales, for :mod:`intvit.engine`'s export.

Scales are per tensor for activations and per output channel for weights (symmetric,
zero point 0). Biases are int32 at scale ``s_in * s_w``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..approx import build
from ..arith import dyadic, qrange, quantize, round_half_up
from .frozen import KERNEL_OPS, FreezeError, FrozenKernel, freeze_kernel
from .integer import ACC_BITS, linear_int, matmul_int, quantize_input, requantize_sum
from .observer import RangeObserver
from .qtensor import QT, Mode, fake_quantize, ste, to_integers


FROZEN = "frozen_"


class FrozenConstants(nn.Module):
    """Integer constants frozen for ``Mode.INT``.

    The first INT-mode call of a module derives its constants from its input scale (in
    float, once) and keeps them as non-persistent buffers (``frozen_*``: on the module's
    device, moved with it, not in checkpoints); later calls use them and compute no
    scale at all, so the eval-mode body is integer ops only. :meth:`thaw` drops them:
    a model does so on every ``train()``/``eval()`` switch and after
    ``load_state_dict``, so changed weights or ranges are frozen afresh."""

    is_frozen: bool = False

    def freeze(self, **tensors: torch.Tensor | None) -> None:
        for name, tensor in tensors.items():
            self.register_buffer(FROZEN + name, tensor, persistent=False)
        self.is_frozen = True

    def thaw(self) -> None:
        for name in [n for n in self._buffers if n.startswith(FROZEN)]:
            del self._buffers[name]
        self.is_frozen = False

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        """The frozen constants by role (empty until the first INT-mode call)."""
        return {n[len(FROZEN):]: t for n, t in self._buffers.items()
                if n.startswith(FROZEN) and t is not None}


class QuantModule(FrozenConstants):
    """Base: a ``mode`` attribute that :func:`set_mode` sets on a whole model."""

    mode: Mode = Mode.FLOAT


def set_mode(model: nn.Module, mode: Mode) -> None:
    for module in model.modules():
        if isinstance(module, QuantModule):
            module.mode = mode


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric quantization: integers (float dtype) and scales."""
    top = qrange(bits)[1]
    scale = (w.detach().abs().flatten(1).amax(dim=1) / top).clamp_min(1e-12)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = quantize(w, scale.view(shape), -top, top)
    return q, scale


def quantize_tensor(x: torch.Tensor, scale: torch.Tensor, bits: int, mode: Mode
                    ) -> torch.Tensor:
    """A parameter quantized at ``scale`` to signed ``bits``: int64 integers in INT mode,
    fake-quantized with a straight-through gradient in FAKE mode."""
    if mode is Mode.INT:
        return quantize(x, scale, *qrange(bits)).to(torch.int64)
    return fake_quantize(x, scale, *qrange(bits))


def quantize_bias(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int32 bias at the accumulator scale; a bias that cannot fit is an error."""
    q = round_half_up(b.detach() / scale)
    lo, hi = qrange(ACC_BITS)
    if q.numel() and (float(q.min()) < lo or float(q.max()) > hi):
        raise OverflowError("a bias does not fit int32 at its accumulator scale; the input "
                            "scale is too small for this layer's weights")
    return q


class QuantAct(QuantModule):
    """Requantize to ``bits`` at a calibrated scale, optionally adding a residual.

    INT: ``q = sat(requantize(q_in, s_in/s) + requantize(q_res, s_res/s))``.
    FAKE: ``sat(round(x / s)) * s`` with an identity straight-through gradient."""

    def __init__(self, bits: int, signed: bool = True, observer: str = "minmax",
                 momentum: float = 0.9, percentile: float = 99.99) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.observer = RangeObserver(observer, momentum, percentile)

    def scale(self) -> torch.Tensor:
        return self.observer.scale(self.bits, self.signed)

    def forward(self, a: QT, residual: QT | None = None) -> QT:
        if self.mode in (Mode.FLOAT, Mode.CALIBRATE):
            x = a.value if residual is None else a.value + residual.value
            if self.mode is Mode.CALIBRATE:
                self.observer.observe(x)
            return QT(x)
        lo, hi = qrange(self.bits, self.signed)
        if self.mode is Mode.FAKE:
            s = self.scale()
            x = a.value if residual is None else a.value + residual.value
            x = x.float()  # under bf16 autocast too: fake-quantized values stay exact
            return QT(fake_quantize(x, s, lo, hi), s)
        if not self.is_frozen:
            self.freeze_for(a.scale, None if residual is None else residual.scale)
        f = self.frozen_tensors()
        if "m" not in f:  # the model input: the one float-to-integer step
            return QT(quantize_input(a.value, f["scale"], lo, hi), f["scale"])
        if residual is None:
            return QT(requantize_sum(a.value, f["m"], f["e"], lo, hi), f["scale"])
        return QT(requantize_sum(a.value, f["m"], f["e"], lo, hi, residual.value,
                                 f["residual_m"], f["residual_e"]), f["scale"])

    def freeze_for(self, in_scale: torch.Tensor | None,
                   residual_scale: torch.Tensor | None = None) -> None:
        """Freeze the output scale and the dyadic pairs from these input scales (no
        input scale: the model input, quantized at the output scale)."""
        s = self.scale()
        if in_scale is None:
            self.freeze(scale=s.to(torch.float32).reshape(()))
            return
        m, e = self.multiplier(in_scale)
        pairs = {} if residual_scale is None else dict(zip(("residual_m", "residual_e"),
                                                           self.multiplier(residual_scale)))
        self.freeze(scale=s, m=m, e=e, **pairs)

    def multiplier(self, in_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The dyadic pair taking integers at ``in_scale`` to this requantizer's scale."""
        return dyadic(in_scale.double() / self.scale().double())


def quant_linear(mode: Mode, a: QT, weight: torch.Tensor, bias: torch.Tensor | None,
                 weight_bits: int, in_bits: int) -> QT:
    """``x W^T + b`` in the float and FAKE modes (INT: :func:`frozen_forward`);
    ``weight`` is 2-D (out, in)."""
    if mode in (Mode.FLOAT, Mode.CALIBRATE):
        return QT(F.linear(a.value, weight, bias))
    w_q, w_s = quantize_weight(weight, weight_bits)
    scale = a.scale * w_s
    b_q = quantize_bias(bias, scale) if bias is not None else None
    fq_bias = ste(b_q * scale, bias) if b_q is not None else None
    return QT(F.linear(a.value, ste(w_q * w_s[:, None], weight), fq_bias), scale)


def frozen_linear(weight: torch.Tensor, bias: torch.Tensor | None, in_scale: torch.Tensor,
                  weight_bits: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The integer constants of a linear layer at an input scale: the integer weight
    (int8 for 8-bit weights), the int32 bias, and the output scale (INT mode and export)."""
    w_q, w_s = quantize_weight(weight.detach(), weight_bits)
    scale = in_scale * w_s
    b_q = quantize_bias(bias, scale) if bias is not None else None
    w_dtype = torch.int8 if weight_bits <= 8 else torch.int32
    return (w_q.to(w_dtype), None if b_q is None else b_q.to(torch.int32), scale)


def frozen_forward(module: QuantModule, a: QT) -> QT:
    """A linear layer in INT mode on its frozen integer weight and bias (frozen by the
    first call from the input scale, by the module's ``frozen``)."""
    if not module.is_frozen:
        w_q, b_q, scale = module.frozen(a.scale)
        module.freeze(weight=w_q, bias=b_q, scale=scale)
    f = module.frozen_tensors()
    return QT(linear_int(a.value, f["weight"], f.get("bias"), module.in_bits,
                         module.weight_bits), f["scale"])


class QuantLinear(QuantModule):
    """``y = x W^T + b`` with int8 per-channel weights and an int32 accumulator.
    Names match ``nn.Linear`` so timm weights load unchanged."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_bits: int = 8, in_bits: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits, self.in_bits = weight_bits, in_bits
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, a: QT) -> QT:
        if self.mode is Mode.INT:
            return frozen_forward(self, a)
        return quant_linear(self.mode, a, self.weight, self.bias, self.weight_bits,
                            self.in_bits)

    def frozen(self, in_scale: torch.Tensor):
        """Integer weight, int32 bias and output scale at this input scale."""
        return frozen_linear(self.weight, self.bias, in_scale, self.weight_bits)


class QuantMatMul(QuantModule):
    """``a @ b`` of two per-tensor quantized activations (attention)."""

    def __init__(self, a_bits: int = 8, b_bits: int = 8, unsigned_a: bool = False) -> None:
        super().__init__()
        self.unsigned_a = unsigned_a
        self.a_bits = a_bits + (1 if unsigned_a else 0)
        self.b_bits = b_bits

    def forward(self, a: QT, b: QT, extra_scale: float = 1.0) -> QT:
        if self.mode in (Mode.FLOAT, Mode.CALIBRATE):
            return QT((a.value @ b.value) * extra_scale)
        if self.mode is Mode.FAKE:
            return QT((a.value @ b.value) * extra_scale, a.scale * b.scale * extra_scale)
        if not self.is_frozen:
            self.freeze(scale=a.scale * b.scale * extra_scale)
        return QT(matmul_int(a.value, b.value, self.a_bits, self.b_bits, self.unsigned_a),
                  self.frozen_scale)


class _KernelModule(QuantModule):
    """Shared by the non-linear wrappers: the float function (``reference``) in FLOAT and
    CALIBRATE modes; in FAKE and INT modes a kernel prepared once per input scale (and
    whatever else :meth:`preparation` keys it on), with straight-through gradients of
    the float function in FAKE mode."""

    op: str

    def __init__(self, approx: str, in_bits: int, out_bits: int) -> None:
        super().__init__()
        self.approx = build(self.op, approx)
        self.in_bits, self.out_bits = in_bits, out_bits
        self._kernels: dict = {}

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, exact: torch.Tensor) -> None:
        """Calibration hook for the float output (nothing to record by default)."""

    def preparation(self, in_scale: float) -> tuple[Any, dict[str, Any]]:
        """The cache key of the kernel for this input scale, and ``prepare``'s extras."""
        return in_scale, {}

    def kernel(self, in_scale: torch.Tensor):
        """The kernel prepared for this input scale (on the CPU: conversion-time code)."""
        return self.prepared(in_scale)[0]

    def prepared(self, in_scale: torch.Tensor, device: torch.device | str = "cpu"
                 ) -> tuple[Any, FrozenKernel | None]:
        """The kernel and its integer data on ``device`` (None: a float reference or an
        untabulated kernel, run by the kernel itself), cached for one key."""
        key, extra = self.preparation(float(in_scale))
        key = (key, str(device))
        if key not in self._kernels:
            with torch.device("cpu"):  # conversion-time constants, then moved
                kernel = self.approx.prepare(float(in_scale), self.in_bits, self.out_bits,
                                             **extra)
                try:
                    frozen = freeze_kernel(kernel)
                except FreezeError:
                    frozen = None
            if frozen is not None:
                frozen.tensors = {k: v.to(device) for k, v in frozen.tensors.items()}
            self._kernels = {key: (kernel, frozen)}
        return self._kernels[key]

    def forward(self, a: QT) -> QT:
        exact = self.reference(a.value) if self.mode is not Mode.INT else None
        if self.mode in (Mode.FLOAT, Mode.CALIBRATE):
            if self.mode is Mode.CALIBRATE:
                self.observe(exact)
            return QT(exact)
        if self.mode is Mode.INT:
            if not self.is_frozen:
                self.freeze_kernel(a.scale, a.value.device)
            data = self.frozen_tensors()
            scale = data.pop("scale")
            if self.frozen_op is None:
                return QT(self.kernel(a.scale)(a.value, tabulated=True), scale)
            return QT(KERNEL_OPS[self.frozen_op](a.value, **data, **self.frozen_attrs), scale)
        kernel, frozen = self.prepared(a.scale, a.value.device)
        q = kernel.check(to_integers(a))
        out = kernel(q, tabulated=True) if frozen is None else \
            KERNEL_OPS[frozen.op](q, **frozen.tensors, **frozen.attrs)
        scale = torch.tensor(kernel.out_scale, device=a.value.device)
        return QT(ste(out.to(a.value.dtype) * scale, exact), scale)

    def freeze_kernel(self, in_scale: torch.Tensor, device: torch.device) -> None:
        """Hold the prepared kernel as integer data (:mod:`.frozen`) on ``device``."""
        kernel, frozen = self.prepared(in_scale, device)
        scale = torch.tensor(kernel.out_scale, device=device)
        self.frozen_op = None if frozen is None else frozen.op
        self.frozen_attrs = {} if frozen is None else frozen.attrs
        self.freeze(scale=scale, **({} if frozen is None else frozen.tensors))


class QuantGELU(_KernelModule):
    op = "gelu"

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class QuantSoftmax(_KernelModule):
    """Softmax over the last dimension; the output is unsigned ``out_bits``."""

    op = "softmax"

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(dim=-1)


class QuantLayerNorm(_KernelModule):
    """LayerNorm over the last dimension with the chosen integer approximation; its
    output is quantized at a scale calibrated by its own observer. Names match
    ``nn.LayerNorm`` (``weight``, ``bias``); both train in QAT through the float
    surrogate, whatever the approximation."""

    op = "layernorm"

    def __init__(self, dim: int, approx: str, in_bits: int, out_bits: int,
                 eps: float = 1e-6, observer: str = "minmax", momentum: float = 0.9,
                 percentile: float = 99.99) -> None:
        super().__init__(approx, in_bits, out_bits)
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.out_observer = RangeObserver(observer, momentum, percentile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)

    def observe(self, exact: torch.Tensor) -> None:
        self.out_observer.observe(exact)

    def preparation(self, in_scale: float) -> tuple[Any, dict[str, Any]]:
        """Keyed on the weights' versions too: every optimizer step re-prepares."""
        out_scale = float(self.out_observer.scale(self.out_bits))
        key = (in_scale, out_scale, self.weight._version, self.bias._version)
        return key, dict(out_scale=out_scale, dim=self.dim, weight=self.weight.detach().cpu(),
                         bias=self.bias.detach().cpu())


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p), patches in row-major order, each
    flattened as (C, p, p) to match a Conv2d weight of shape (D, C, p, p)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


class QuantPatchConv(QuantModule):
    """The patch-embedding convolution (kernel = stride = patch) as a linear map of
    patches; parameters are named and shaped like ``nn.Conv2d`` (timm's ``proj``)."""

    def __init__(self, in_chans: int, embed_dim: int, patch: int, weight_bits: int = 8,
                 in_bits: int = 8) -> None:
        super().__init__()
        self.patch, self.weight_bits, self.in_bits = patch, weight_bits, in_bits
        self.weight = nn.Parameter(torch.empty(embed_dim, in_chans, patch, patch))
        self.bias = nn.Parameter(torch.zeros(embed_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, a: QT) -> QT:
        if self.mode in (Mode.FLOAT, Mode.CALIBRATE):
            return QT(F.conv2d(a.value, self.weight, self.bias, stride=self.patch)
                      .flatten(2).transpose(1, 2))
        patches = QT(patchify(a.value, self.patch), a.scale)
        if self.mode is Mode.INT:
            return frozen_forward(self, patches)
        return quant_linear(self.mode, patches, self.weight.flatten(1), self.bias,
                            self.weight_bits, self.in_bits)

    def frozen(self, in_scale: torch.Tensor):
        """As :meth:`QuantLinear.frozen`, for the flattened (D, C*p*p) weight."""
        return frozen_linear(self.weight.flatten(1), self.bias, in_scale, self.weight_bits)
