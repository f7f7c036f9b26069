"""Assemble a quantized model from where its weights come from: an intvit checkpoint,
timm's pretrained weights, a local timm/DeiT weights file, or nothing (random init)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..quant import QuantConfig
from .checkpoint import load_checkpoint, read_weights_file
from .config import ModelConfig
from .registry import (CUSTOM, build_quant_model, create_timm, is_quant_state, load_float_weights,
                       model_config)


DEFAULT_MODEL = "deit_tiny"


@dataclass
class ModelSource:
    """Where a model comes from. With a checkpoint, a ``name`` (and overrides) is checked
    against the checkpoint's model rather than used to build one."""

    name: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    weights: str | None = None
    overrides: dict[str, Any] | None = None


def make_model(source: ModelSource, qcfg: QuantConfig | None, log=print
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model and the checkpoint's info (empty unless loaded from a checkpoint). A
    checkpoint keeps its own quantization unless ``qcfg`` asks for another one."""
    if source.checkpoint:
        model, meta = load_checkpoint(source.checkpoint, _expected(source))
        if qcfg is not None and qcfg != model.qcfg:
            model = requantized(model, qcfg)
        return model, meta["info"]
    cfg = model_config(source.name or DEFAULT_MODEL, **(source.overrides or {}))
    model = build_quant_model(cfg, qcfg or QuantConfig())
    if source.pretrained:
        load_float_weights(model, create_timm(cfg, pretrained=True).state_dict())
    elif source.weights:
        load_float_weights(model, _fit_head(read_weights_file(source.weights), cfg, log))
    return model, {}


ARCHITECTURE = ("arch", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "window_size", "depths", "heads")


def _expected(source: ModelSource) -> dict[str, Any]:
    """What a named model asks of a checkpoint: its architecture (a deit_tiny fine-tuned
    to 10 classes is still a deit_tiny) plus every dimension given explicitly."""
    overrides = source.overrides or {}
    if source.name in (None, CUSTOM):
        return dict(overrides)
    wanted = model_config(source.name, **overrides).as_dict()
    return {k: wanted[k] for k in (*ARCHITECTURE, *overrides)}


def requantized(model: nn.Module, qcfg: QuantConfig, keep_ranges: bool = False) -> nn.Module:
    """The same weights under another quantization configuration. Ranges are reset (the
    new model needs calibrating; this is how a float checkpoint becomes a quantized
    model) unless ``keep_ranges``: calibration runs in float, so its ranges hold for any
    choice of approximations and bit-widths."""
    fresh = build_quant_model(model.cfg, qcfg)
    if keep_ranges:
        fresh.load_state_dict(model.state_dict(), strict=True)
    else:
        load_float_weights(fresh, {k: v for k, v in model.state_dict().items()
                                   if not is_quant_state(k)})
    return fresh


def _fit_head(state: dict, cfg: ModelConfig, log) -> dict:
    """Drop a classifier trained for another number of classes (the new one starts fresh)."""
    head = [k for k in state if k.startswith(("head.weight", "head.bias", "head.fc."))]
    if head and state[head[0]].shape[0] != cfg.num_classes:
        log(f"note: the weights' classifier has {state[head[0]].shape[0]} classes, the model "
            f"{cfg.num_classes}; the classifier is initialized afresh")
        state = {k: v for k, v in state.items() if k not in head}
        return state | {k: v for k, v in _fresh_head(cfg).items()}
    return state


def _fresh_head(cfg: ModelConfig) -> dict:
    model = build_quant_model(cfg, QuantConfig(enabled=False))
    return {k: v for k, v in model.state_dict().items()
            if k.startswith(("head.weight", "head.bias", "head.fc."))}
