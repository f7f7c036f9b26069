"""Quantized building blocks. Each maps ``QT -> QT`` in the four modes of
:class:`~.qtensor.Mode`; the INT path calls only the integer functions of
:mod:`.integer` and the integer kernels of :mod:`intvit.approx` (their elementwise parts
answered from tables computed once per scale by the kernels' own arithmetic: the same
integers, faster, and what the inference engine runs), the FAKE path takes its
non-linear forward values from the same kernels and its gradients from the float
function (straight-through; the non-linear wrappers are in :mod:`.nonlinear`). ``frozen``/``multiplier``/``kernel`` give the integer
constants each module derives from its scales, for :mod:`intvit.engine`'s export.

Scales are per tensor for activations and per output channel for weights (symmetric,
zero point 0). Biases are int32 at scale ``s_in * s_w``.

Integer formats (:class:`~.qtensor.QT`'s ``bits``/``signed``): every module sets the
format of its output (a requantizer and a kernel their own width, a linear layer and a
matmul the 32-bit accumulator) and takes its operand widths from the values it receives
(:meth:`QuantModule.take_formats`), so no width is passed to a constructor but a
module's own output width.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..arith import dyadic, qrange, quantize, round_half_up
from .integer import ACC_BITS, linear_int, matmul_int, quantize_input, requantize_sum
from .observer import RangeObserver
from .qtensor import QT, FormatError, Mode, fake_quantize, signed_width, ste


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


Format = tuple[int, bool]  # (bits, signed) of a QT's integers


def describe_formats(formats: tuple[Format, ...]) -> str:
    """``8-bit signed, 8-bit unsigned`` (no formats: a float input)."""
    return ", ".join(f"{bits}-bit {'signed' if signed else 'unsigned'}"
                     for bits, signed in formats) or "float (no integer format)"


class QuantModule(FrozenConstants):
    """Base: a ``mode`` attribute that :func:`set_mode` sets on a whole model, and
    ``formats``, the integer formats of the operands of the module's latest FAKE/INT
    call (empty before one)."""

    mode: Mode = Mode.FLOAT
    formats: tuple[Format, ...] = ()

    def take_formats(self, *operands: QT) -> tuple[Format, ...]:
        """The ``(bits, signed)`` of this call's operands, kept in ``formats``. Every
        operand must have a format, and a frozen module (INT mode) the formats it was
        frozen with, since its constants were derived for them; else a
        :class:`~.qtensor.FormatError` naming the module's class (and, raised through a
        model's forward, its name in the model)."""
        formats = tuple((a.bits, a.signed) for a in operands)
        if any(bits is None for bits, _ in formats):
            raise FormatError(f"{type(self).__name__} takes quantized values, and got one "
                              "without an integer format (QT.bits is None): the module "
                              "that produced it must set its bits and signedness", self)
        if self.is_frozen and formats != self.formats:
            raise FormatError(f"{type(self).__name__} was frozen for "
                              f"{describe_formats(self.formats)} operands and got "
                              f"{describe_formats(formats)}", self)
        if formats != self.formats:
            self.formats = formats
        return formats

    @property
    def in_bits(self) -> int | None:
        """The signed width of the first operand in the latest FAKE/INT call (one more
        than its bits if unsigned; None before such a call)."""
        return signed_width(*self.formats[0]) if self.formats else None


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


def quantize_tensor(x: torch.Tensor, scale: torch.Tensor, bits: int, mode: Mode) -> QT:
    """A parameter quantized at ``scale`` to signed ``bits``, as a QT of that format:
    int64 integers in INT mode, fake-quantized values with a straight-through gradient
    in FAKE mode."""
    if mode is Mode.INT:
        return QT(quantize(x, scale, *qrange(bits)).to(torch.int64), scale, bits)
    return QT(fake_quantize(x, scale, *qrange(bits)), scale, bits)


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
    FAKE: ``sat(round(x / s)) * s`` with an identity straight-through gradient.
    Its output is ``bits`` wide (``signed`` or not); it quantizes the model's float input
    (a QT of neither scale nor format) and requantizes integers of at most ``ACC_BITS``."""

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
        if a.scale is not None or a.bits is not None:  # not the model's float input
            self.check_requantized(*((a,) if residual is None else (a, residual)))
        lo, hi = qrange(self.bits, self.signed)
        if self.mode is Mode.FAKE:
            s = self.scale()
            x = a.value if residual is None else a.value + residual.value
            x = x.float()  # under bf16 autocast too: fake-quantized values stay exact
            return QT(fake_quantize(x, s, lo, hi), s, self.bits, self.signed)
        if not self.is_frozen:
            self.freeze_for(a.scale, None if residual is None else residual.scale)
        f = self.frozen_tensors()
        if "m" not in f:  # the model input: the one float-to-integer step
            q = quantize_input(a.value, f["scale"], lo, hi)
        elif residual is None:
            q = requantize_sum(a.value, f["m"], f["e"], lo, hi)
        else:
            q = requantize_sum(a.value, f["m"], f["e"], lo, hi, residual.value,
                               f["residual_m"], f["residual_e"])
        return QT(q, f["scale"], self.bits, self.signed)

    def check_requantized(self, *operands: QT) -> None:
        """The operands of a requantization have formats at most ``ACC_BITS`` wide (the
        width :func:`~.integer.requantize_sum` declares them)."""
        formats = self.take_formats(*operands)
        if any(signed_width(*f) > ACC_BITS for f in formats):
            raise FormatError(f"QuantAct requantizes integers of at most {ACC_BITS} bits, "
                              f"got {describe_formats(formats)}", self)

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


class _LinearMap(QuantModule):
    """Shared by QuantLinear and QuantPatchConv: ``x W^T + b`` over the last dimension,
    ``W`` the 2-D (out, in) weight :meth:`matrix` quantized per output channel to
    ``weight_bits``, ``b`` an int32 bias; the output is a 32-bit accumulator. INT mode
    runs on the integer weight and bias that the first call freezes from the input scale
    (:meth:`frozen`), at the input's width."""

    weight_bits: int
    bias: nn.Parameter | None

    def matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def quantized(self, a: QT) -> QT:
        """The map in FAKE and INT modes."""
        self.take_formats(a)
        if self.mode is Mode.INT:
            if not self.is_frozen:
                w_q, b_q, scale = self.frozen(a.scale)
                self.freeze(weight=w_q, bias=b_q, scale=scale)
            f = self.frozen_tensors()
            return QT(linear_int(a.value, f["weight"], f.get("bias"), a.width,
                                 self.weight_bits), f["scale"], ACC_BITS)
        weight = self.matrix()
        w_q, w_s = quantize_weight(weight, self.weight_bits)
        scale = a.scale * w_s
        b_q = quantize_bias(self.bias, scale) if self.bias is not None else None
        fq_bias = ste(b_q * scale, self.bias) if b_q is not None else None
        return QT(F.linear(a.value, ste(w_q * w_s[:, None], weight), fq_bias), scale,
                  ACC_BITS)

    def frozen(self, in_scale: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The integer constants at an input scale: the integer weight (int8 for 8-bit
        weights), the int32 bias, and the output scale (INT mode and export)."""
        w_q, w_s = quantize_weight(self.matrix().detach(), self.weight_bits)
        scale = in_scale * w_s
        b_q = quantize_bias(self.bias, scale) if self.bias is not None else None
        w_dtype = torch.int8 if self.weight_bits <= 8 else torch.int32
        return (w_q.to(w_dtype), None if b_q is None else b_q.to(torch.int32), scale)


class QuantLinear(_LinearMap):
    """``y = x W^T + b`` with int8 per-channel weights and an int32 accumulator.
    Names match ``nn.Linear`` so timm weights load unchanged."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_bits: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits = weight_bits
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)

    def matrix(self) -> torch.Tensor:
        return self.weight

    def forward(self, a: QT) -> QT:
        if self.mode in (Mode.FLOAT, Mode.CALIBRATE):
            return QT(F.linear(a.value, self.weight, self.bias))
        return self.quantized(a)


class QuantMatMul(QuantModule):
    """``a @ b`` of two per-tensor quantized activations (attention), a 32-bit
    accumulator. The operand widths are those of the values it receives: ``a_bits`` and
    ``b_bits`` their signed widths, ``unsigned_a`` whether ``a`` is unsigned (softmax
    probabilities), as of the latest FAKE/INT call."""

    def forward(self, a: QT, b: QT, extra_scale: float = 1.0) -> QT:
        if self.mode in (Mode.FLOAT, Mode.CALIBRATE):
            return QT((a.value @ b.value) * extra_scale)
        self.take_formats(a, b)
        if self.mode is Mode.FAKE:
            return QT((a.value @ b.value) * extra_scale, a.scale * b.scale * extra_scale,
                      ACC_BITS)
        if not self.is_frozen:
            self.freeze(scale=a.scale * b.scale * extra_scale)
        return QT(matmul_int(a.value, b.value, a.width, b.width, not a.signed),
                  self.frozen_scale, ACC_BITS)

    @property
    def a_bits(self) -> int | None:
        return self.in_bits

    @property
    def b_bits(self) -> int | None:
        return signed_width(*self.formats[1]) if self.formats else None

    @property
    def unsigned_a(self) -> bool | None:
        return None if not self.formats else not self.formats[0][1]


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p), patches in row-major order, each
    flattened as (C, p, p) to match a Conv2d weight of shape (D, C, p, p)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


class QuantPatchConv(_LinearMap):
    """The patch-embedding convolution (kernel = stride = patch) as a linear map of
    patches; parameters are named and shaped like ``nn.Conv2d`` (timm's ``proj``)."""

    def __init__(self, in_chans: int, embed_dim: int, patch: int, weight_bits: int = 8
                 ) -> None:
        super().__init__()
        self.patch, self.weight_bits = patch, weight_bits
        self.weight = nn.Parameter(torch.empty(embed_dim, in_chans, patch, patch))
        self.bias = nn.Parameter(torch.zeros(embed_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, a: QT) -> QT:
        if self.mode in (Mode.FLOAT, Mode.CALIBRATE):
            return QT(F.conv2d(a.value, self.weight, self.bias, stride=self.patch)
                      .flatten(2).transpose(1, 2))
        return self.quantized(a.with_value(patchify(a.value, self.patch)))

    def matrix(self) -> torch.Tensor:
        """The weight flattened to (D, C*p*p), the order of :func:`patchify`."""
        return self.weight.flatten(1)
