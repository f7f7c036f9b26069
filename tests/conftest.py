"""Shared fixtures: small model configurations that train and evaluate in seconds."""

import pytest
import torch

from intvit.models import build_quant_model, model_config
from intvit.quant import QuantConfig

torch.set_num_threads(2)

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)


@pytest.fixture
def small_config():
    return model_config("custom", **SMALL)


def small_model(**quant) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_quant_model(model_config("custom", **SMALL), QuantConfig(**quant))


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Weights of a trained model's magnitude (timm's init is tiny: activations so small
    that some integer kernels cannot represent them), non-zero biases included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("relative_position_bias_table"):
                p.copy_(noise)
            elif p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
