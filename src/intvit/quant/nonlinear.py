"""The non-linear wrappers (GELU, Softmax, LayerNorm): each a :class:`KernelModule`
over the kernel of the approximation it is built with (:mod:`intvit.approx`), in the
modes of :class:`~.qtensor.Mode` as the other quantized modules
(:mod:`.modules`): the float function in FLOAT and CALIBRATE modes, the integer kernel
in INT mode (its frozen data, :mod:`.frozen`), the kernel's values with the float
function's gradients (straight-through) in FAKE mode."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..approx import OPS, build
from .frozen import KERNEL_OPS, FreezeError, FrozenKernel, freeze_kernel
from .modules import QuantModule
from .observer import RangeObserver
from .qtensor import QT, Mode, ste, to_integers


class KernelModule(QuantModule):
    """Shared by the non-linear wrappers: the float function (``reference``) in FLOAT and
    CALIBRATE modes; in FAKE and INT modes a kernel prepared once per input scale and
    width (and whatever else :meth:`preparation` keys it on), with straight-through
    gradients of the float function in FAKE mode. The output is ``out_bits`` wide,
    signed as the op's outputs are (``out_signed``)."""

    op: str

    def __init__(self, approx: str, out_bits: int) -> None:
        super().__init__()
        self.approx = build(self.op, approx)
        self.out_bits = out_bits
        self._kernels: dict = {}

    @property
    def out_signed(self) -> bool:
        return OPS[self.op].out_signed

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, exact: torch.Tensor) -> None:
        """Calibration hook for the float output (nothing to record by default)."""

    def preparation(self, in_scale: float) -> tuple[Any, dict[str, Any]]:
        """The cache key of the kernel for this input scale, and ``prepare``'s extras."""
        return in_scale, {}

    def kernel(self, a: QT):
        """The kernel prepared for the input ``a`` (its scale and width; on the CPU:
        conversion-time code)."""
        return self.prepared(a)[0]

    def prepared(self, a: QT, device: torch.device | str = "cpu"
                 ) -> tuple[Any, FrozenKernel | None]:
        """The kernel for the input ``a`` (its scale and width) and its integer data on
        ``device`` (None: a float reference or an untabulated kernel, run by the kernel
        itself), cached for one key."""
        key, extra = self.preparation(float(a.scale))
        key = (key, a.width, str(device))
        if key not in self._kernels:
            with torch.device("cpu"):  # conversion-time constants, then moved
                kernel = self.approx.prepare(float(a.scale), a.width, self.out_bits,
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
        self.take_formats(a)
        if self.mode is Mode.INT:
            if not self.is_frozen:
                self.freeze_kernel(a)
            data = self.frozen_tensors()
            scale = data.pop("scale")
            out = self.kernel(a)(a.value, tabulated=True) if self.frozen_op is None else \
                KERNEL_OPS[self.frozen_op](a.value, **data, **self.frozen_attrs)
            return QT(out, scale, self.out_bits, self.out_signed)
        kernel, frozen = self.prepared(a, a.value.device)
        q = kernel.check(to_integers(a))
        out = kernel(q, tabulated=True) if frozen is None else \
            KERNEL_OPS[frozen.op](q, **frozen.tensors, **frozen.attrs)
        scale = torch.tensor(kernel.out_scale, device=a.value.device)
        return QT(ste(out.to(a.value.dtype) * scale, exact), scale, self.out_bits,
                  self.out_signed)

    def freeze_kernel(self, a: QT) -> None:
        """Hold the kernel prepared for the input ``a`` as integer data (:mod:`.frozen`)
        on its device."""
        device = a.value.device
        kernel, frozen = self.prepared(a, device)
        scale = torch.tensor(kernel.out_scale, device=device)
        self.frozen_op = None if frozen is None else frozen.op
        self.frozen_attrs = {} if frozen is None else frozen.attrs
        self.freeze(scale=scale, **({} if frozen is None else frozen.tensors))


class QuantGELU(KernelModule):
    op = "gelu"

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class QuantSoftmax(KernelModule):
    """Softmax over the last dimension; the output is unsigned ``out_bits``."""

    op = "softmax"

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(dim=-1)


class QuantLayerNorm(KernelModule):
    """LayerNorm over the last dimension with the chosen integer approximation; its
    output is quantized at a scale calibrated by its own observer. Names match
    ``nn.LayerNorm`` (``weight``, ``bias``); both train in QAT through the float
    surrogate, whatever the approximation."""

    op = "layernorm"

    def __init__(self, dim: int, approx: str, out_bits: int, eps: float = 1e-6,
                 observer: str = "minmax", momentum: float = 0.9,
                 percentile: float = 99.99) -> None:
        super().__init__(approx, out_bits)
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
