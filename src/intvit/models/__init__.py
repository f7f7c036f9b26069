"""Quantized ViT / DeiT / Swin built from timm configurations and weights."""

from .config import ModelConfig
from .registry import (SHORT_NAMES, ModelError, build_quant_model, config_from_timm,
                       create_timm, load_float_weights, model_config)

__all__ = ["ModelConfig", "SHORT_NAMES", "ModelError", "build_quant_model", "config_from_timm",
           "create_timm", "load_float_weights", "model_config"]
