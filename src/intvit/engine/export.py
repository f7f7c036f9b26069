"""``export_program``: a quantized model in eval mode -> an :class:`IntProgram`.

The program is the model's own description of it: the ``lower`` methods written beside
its modules' ``forward`` (:meth:`~intvit.models.base.QuantModel.lower`), run with a
:class:`~.lowering.Builder`, which checks every quantized module's integers against the
model while it builds, so ``forward`` and ``lower`` cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy

import torch

from ..models.base import QuantModel
from .lowering import Builder
from .program import IntProgram, ProgramError


def probe_images(model: QuantModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal images of the model's input size (the default probe)."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)


def export_program(model: QuantModel, images: torch.Tensor | None = None,
                   info: dict | None = None) -> IntProgram:
    """Lower ``model`` (quantization on; put in eval mode here) to an integer program,
    checked module by module against the model on ``images`` (default: a seeded probe)."""
    if getattr(type(model), "lower_features", QuantModel.lower_features) \
            is QuantModel.lower_features:
        raise ProgramError(f"no lowering for {type(model).__name__}: its class defines no "
                           "lower_features(b, images) beside forward_features")
    if not model.qcfg.enabled:
        raise ProgramError("the model has quantization off; export needs a quantized "
                           "(calibrated or trained) model")
    model.eval()
    if any(t.device.type != "cpu" for t in model.parameters()):
        model = copy.deepcopy(model).cpu().eval()  # programs are built and checked on the CPU
    images = probe_images(model) if images is None else images.cpu()
    b = Builder(model, images.to(torch.float32))
    logits = model.lower(b, b.input)
    b.check_complete()
    cfg = model.cfg
    meta = {"model": cfg.as_dict(), "quant": model.qcfg.as_dict(),
            "input_shape": [cfg.in_chans, cfg.img_size, cfg.img_size],
            "info": info or {}}
    program = IntProgram(b.nodes, b.tensors, meta, b.input, logits)
    program.check()
    return program
