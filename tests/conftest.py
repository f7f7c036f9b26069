"""Shared fixtures: small model configurations that train and evaluate in seconds."""

import pytest
import torch

from intvit.models import build_quant_model, family, model_config
from intvit.models.init import trained_scale_init as randomize  # noqa: F401  (shared)
from intvit.quant import QuantConfig

torch.set_num_threads(2)

SMALL = family("vit").small  # the registry's smallest ViT


@pytest.fixture
def small_config():
    return model_config("custom", **SMALL)


def small_model(**quant) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_quant_model(model_config("custom", **SMALL), QuantConfig(**quant))
