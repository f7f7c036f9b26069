"""Random weights of a trained model's magnitude, for benchmarks and tests.

timm's initialization (std 0.02, zero biases) gives activations so small that the I-ViT
and I-BERT integer kernels, whose constants are sized for trained models, refuse them
(with a message naming a parameter that fits). Weights drawn here behave like a trained
network's: unit-variance-preserving matrices, LayerNorm gains near 1, small non-zero
biases, O(1) relative position biases.
"""

from __future__ import annotations

import torch
from torch import nn


def trained_scale_init(model: nn.Module, seed: int = 1) -> nn.Module:
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
    return model
