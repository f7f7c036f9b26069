"""One registry of model names: intvit's short names, timm's full names, and any timm
ViT configuration given by its dimensions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..quant import QuantConfig
from .config import ModelConfig

SHORT_NAMES = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "swin_small": "swin_small_patch4_window7_224",
}
CUSTOM = "custom"
# timm buffers that are derived from the architecture, not learned: rebuilt, not loaded.
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


class ModelError(ValueError):
    """A model that cannot be built or loaded as asked; the message says why."""


def timm_name(name: str) -> str:
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if name in SHORT_NAMES.values():
        return name
    raise ModelError(f"unknown model {name!r}; known: {', '.join(SHORT_NAMES)} (or timm's "
                     f"names {', '.join(SHORT_NAMES.values())}), or '{CUSTOM}' with "
                     f"--patch-size/--embed-dim/--depth/--num-heads")


def create_timm(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """The float timm model of a configuration (timm's pretrained weights on request)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if cfg.timm_name is not None:
        extra: dict[str, Any] = {}
        if cfg.arch == "swin":
            extra["window_size"] = cfg.window_size
        return timm.create_model(cfg.timm_name, pretrained=pretrained,
                                 num_classes=cfg.num_classes, img_size=cfg.img_size,
                                 in_chans=cfg.in_chans, **extra)
    return VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size,
                             in_chans=cfg.in_chans, num_classes=cfg.num_classes,
                             embed_dim=cfg.embed_dim, depth=cfg.depth,
                             num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                             qkv_bias=cfg.qkv_bias)


def config_from_timm(model: nn.Module, timm_name: str | None = None) -> ModelConfig:
    """Read a timm ViT or Swin's dimensions into a :class:`ModelConfig`."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    pe = model.patch_embed
    common = dict(img_size=pe.img_size[0], patch_size=pe.patch_size[0],
                  in_chans=pe.proj.in_channels, num_classes=model.num_classes,
                  timm_name=timm_name)
    if isinstance(model, SwinTransformer):
        blocks = [layer.blocks[0] for layer in model.layers]
        return ModelConfig(arch="swin", embed_dim=model.embed_dim, depth=len(model.layers),
                           num_heads=blocks[0].attn.num_heads, norm_eps=model.norm.eps,
                           mlp_ratio=blocks[0].mlp.fc1.out_features / blocks[0].mlp.fc1.in_features,
                           window_size=blocks[0].window_size[0],
                           depths=tuple(len(layer.blocks) for layer in model.layers),
                           heads=tuple(b.attn.num_heads for b in blocks), **common)
    if not isinstance(model, VisionTransformer):
        raise ModelError(f"{type(model).__name__} is neither a timm ViT nor a Swin")
    if model.global_pool != "token" or model.cls_token is None or model.no_embed_class \
            or model.reg_token is not None:
        raise ModelError("intvit supports class-token ViTs (ViT, DeiT); this model pools "
                         f"with {model.global_pool!r}")
    block = model.blocks[0]
    return ModelConfig(arch="vit", embed_dim=model.embed_dim, depth=len(model.blocks),
                       num_heads=block.attn.num_heads, norm_eps=block.norm1.eps,
                       mlp_ratio=block.mlp.fc1.out_features / block.mlp.fc1.in_features,
                       qkv_bias=block.attn.qkv.bias is not None, **common)


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
        cfg = config_from_timm(create_timm(ModelConfig(timm_name=full, arch=_arch(full))),
                               full)
    return replace(cfg, **overrides)


def _arch(full_name: str) -> str:
    return "swin" if full_name.startswith("swin") else "vit"


def build_quant_model(cfg: ModelConfig, qcfg: QuantConfig) -> nn.Module:
    if cfg.arch == "swin":
        from .swin import QuantSwinTransformer

        return QuantSwinTransformer(cfg, qcfg)
    from .vit import QuantVisionTransformer

    return QuantVisionTransformer(cfg, qcfg)


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
