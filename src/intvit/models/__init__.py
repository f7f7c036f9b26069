"""Quantized ViT / DeiT / Swin built from timm configurations and weights."""

from .config import ModelConfig
from .families import FAMILIES, ModelFamily, family, register_family, short_names
from .registry import (ModelError, build_quant_model, config_from_timm, create_timm,
                       load_float_weights, model_config)

__all__ = ["FAMILIES", "ModelConfig", "ModelError", "ModelFamily", "build_quant_model",
           "config_from_timm", "create_timm", "family", "load_float_weights", "model_config",
           "register_family", "short_names"]
