"""Shared fixtures: small model configurations that train and evaluate in seconds."""

import pytest
import torch

from intvit.models import build_quant_model, model_config
from intvit.models.init import trained_scale_init as randomize  # noqa: F401  (shared)
from intvit.quant import QuantConfig

torch.set_num_threads(2)

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)


@pytest.fixture
def small_config():
    return model_config("custom", **SMALL)


def small_model(**quant) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_quant_model(model_config("custom", **SMALL), QuantConfig(**quant))
