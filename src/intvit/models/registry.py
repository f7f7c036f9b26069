"""Model names and configurations: intvit's short names, timm's full names, and any timm
ViT configuration given by its dimensions, over the families of :mod:`.families`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..quant import QuantConfig
from . import vit  # noqa: F401  (registers ViT/DeiT; first: the registry's order)
from . import swin  # noqa: F401  (registers Swin)
from .config import ModelConfig
from .families import ModelError, family, family_of_name, family_of_timm, short_names

CUSTOM = "custom"
# timm buffers that are derived from the architecture, not learned: rebuilt, not loaded.
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


def timm_name(name: str) -> str:
    names = short_names()
    if name in names:
        return names[name]
    if name in names.values():
        return name
    raise ModelError(f"unknown model {name!r}; known: {', '.join(names)} (or timm's "
                     f"names {', '.join(names.values())}), or '{CUSTOM}' with "
                     f"--patch-size/--embed-dim/--depth/--num-heads")


def create_timm(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """The float timm model of a configuration (timm's pretrained weights on request)."""
    import timm

    fam = family(cfg.arch)
    if cfg.timm_name is not None:
        return timm.create_model(cfg.timm_name, pretrained=pretrained,
                                 num_classes=cfg.num_classes, img_size=cfg.img_size,
                                 in_chans=cfg.in_chans, **fam.timm_kwargs(cfg))
    if fam.custom_timm is None:
        raise ModelError(f"a {CUSTOM} {cfg.arch} model has no timm twin; name one of "
                         f"{', '.join(fam.names)}")
    return fam.custom_timm(cfg)


def config_from_timm(model: nn.Module, timm_name: str | None = None) -> ModelConfig:
    """Read the dimensions of a timm model of a registered family into a
    :class:`ModelConfig`."""
    fam = family_of_timm(model)
    pe = model.patch_embed
    return ModelConfig(arch=fam.arch, img_size=pe.img_size[0], patch_size=pe.patch_size[0],
                       in_chans=pe.proj.in_channels, num_classes=model.num_classes,
                       timm_name=timm_name, **fam.read_timm(model))


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The configuration of a named model (or ``custom``), with overrides such as
    ``img_size``, ``num_classes``, ``in_chans``, ``patch_size``, ``embed_dim``..."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if name == CUSTOM:
        return ModelConfig(**overrides)
    full = timm_name(name)
    shape_keys = {"img_size", "num_classes", "in_chans"}
    bad = set(overrides) - shape_keys
    if bad:
        raise ModelError(f"{name} has a fixed architecture; {sorted(bad)} apply to "
                         f"--model {CUSTOM} only")
    with torch.device("meta"):
        cfg = config_from_timm(create_timm(ModelConfig(timm_name=full,
                                                       arch=family_of_name(full).arch)), full)
    return replace(cfg, **overrides)


def build_quant_model(cfg: ModelConfig, qcfg: QuantConfig) -> nn.Module:
    """The quantized model of a configuration (its family's ``model_class``)."""
    return family(cfg.arch).model_class(cfg, qcfg)


def load_float_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a timm (float) state dict. Every learned tensor of the model must be in it
    and every tensor in it must be used, or the load fails naming the keys: a weight
    that silently stays at its initial value is the bug this prevents."""
    own = {k: v for k, v in model.state_dict().items() if not is_quant_state(k)}
    given = {k: v for k, v in state_dict.items() if not k.endswith(DERIVED_BUFFERS)}
    missing = sorted(set(own) - set(given))
    unused = sorted(set(given) - set(own))
    shape = sorted(k for k in set(own) & set(given) if own[k].shape != given[k].shape)
    if missing or unused or shape:
        raise ModelError("weights do not match the model: "
                         + "; ".join(f"{label}: {', '.join(keys[:8])}"
                                     + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                                     for label, keys in (("missing", missing), ("unused", unused),
                                                         ("wrong shape", shape)) if keys))
    model.load_state_dict(given, strict=False)


def float_twin(model: nn.Module) -> nn.Module:
    """The timm float model with this model's weights (for float baselines)."""
    twin = create_timm(model.cfg)
    own = {k: v for k, v in model.state_dict().items() if not is_quant_state(k)}
    missing, unused = twin.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.endswith(DERIVED_BUFFERS)]
    if missing or unused:
        raise ModelError(f"the timm twin does not match: missing {missing[:8]}, unused "
                         f"{unused[:8]}")
    return twin.eval()


def is_quant_state(key: str) -> bool:
    return key.endswith((".low", ".high")) or key.endswith(DERIVED_BUFFERS)
