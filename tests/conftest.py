"""Shared fixtures: small model configurations that train and evaluate in seconds."""

import os

import pytest
import torch

from intvit.models import build_quant_model, family, model_config
from intvit.models.init import trained_scale_init as randomize  # noqa: F401  (shared)
from intvit.quant import QuantConfig

# one PyTorch thread per process when pytest-xdist runs two (`make test`), else two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

SMALL = family("vit").small  # the registry's smallest ViT


@pytest.fixture
def small_config():
    return model_config("custom", **SMALL)


def small_model(**quant) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_quant_model(model_config("custom", **SMALL), QuantConfig(**quant))
