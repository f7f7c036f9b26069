"""What every quantized model shares: the mode switch and the logits.

A subclass builds its modules, sets ``cfg``/``qcfg``, and defines
``forward_features(images) -> QT``, beside it ``lower_features(b, images) -> str`` (the
same features as an integer program, written with a
:class:`~.program_builder.ProgramBuilder`), and ``classifier()`` (its head's linear layer).
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import QT, Mode, set_mode
from ..quant.modules import FrozenConstants
from ..quant.qtensor import FormatError
from .program_builder import ProgramBuilder


def _thaw_after_load(module: nn.Module, incompatible_keys) -> None:
    module.thaw()


class QuantModel(FrozenConstants):
    """The model's own INT-mode constants (a class token, a position embedding) are
    frozen like a quantized module's; :meth:`thaw` drops every module's (on
    ``train()``/``eval()`` and after ``load_state_dict``)."""

    mode: Mode = Mode.FLOAT

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(_thaw_after_load)

    def thaw(self) -> None:
        for module in self.modules():
            if isinstance(module, FrozenConstants):
                FrozenConstants.thaw(module)

    def set_mode(self, mode: Mode) -> None:
        if not self.qcfg.enabled and mode in (Mode.FAKE, Mode.INT):
            mode = Mode.FLOAT
        self.mode = mode
        set_mode(self, mode)

    def train(self, mode: bool = True) -> "QuantModel":
        """Training runs QAT (FAKE), evaluation the integer model (INT); quantization
        off, both run the float model. Calibration: :func:`intvit.quant.calibration`."""
        super().train(mode)
        self.set_mode(Mode.FAKE if mode else Mode.INT)
        self.thaw()
        return self

    def forward_features(self, images: torch.Tensor) -> QT:
        raise NotImplementedError

    def lower_features(self, b: ProgramBuilder, images: str) -> str:
        raise NotImplementedError

    def classifier(self) -> nn.Module:
        raise NotImplementedError

    def lower(self, b: ProgramBuilder, images: str) -> str:
        """The program of :meth:`forward_int`: the features, then the head; returns the
        logits' value name."""
        head = self.classifier()
        return b.output(head, b.linear(head, self.lower_features(b, images)))

    def head_output(self, images: torch.Tensor) -> QT:
        """The head's output; a :class:`~intvit.quant.qtensor.FormatError` says which
        module of the model refused a value."""
        try:
            return self.classifier()(self.forward_features(images))
        except FormatError as error:
            name = next((n for n, m in self.named_modules() if m is error.module), None)
            if name is None:
                raise
            raise FormatError(f"{name}: {error}", error.module) from error

    def forward_int(self, images: torch.Tensor) -> QT:
        """Integer logits and their per-class scale (INT mode only)."""
        if self.mode is not Mode.INT:
            raise RuntimeError("forward_int needs the model in eval mode with quantization on")
        return self.head_output(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits in every mode; in INT mode the integer logits times their scale."""
        logits = self.head_output(images)
        if self.mode is Mode.INT:
            return logits.value.to(torch.float32) * logits.scale.to(torch.float32)
        return logits.value
