"""The short quantization-aware fine-tuning of a combination (``qat_top``): a few AdamW
steps on the fake-quantized forward, ranges frozen, then the integer model evaluated."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...device import model_device, to_device
from ...evaluation import evaluate
from .candidates import Candidate, SearchError, materialize


def _batches(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise SearchError("QAT saw no training batches: the dataset is empty")


def short_qat(base: nn.Module, candidate: Candidate, train_loader, val_loader,
              steps: int = 20, lr: float = 1e-5, seed: int = 0,
              progress: bool = False) -> dict[str, Any]:
    """Fine-tune the candidate's model for ``steps`` AdamW steps (cross-entropy, QAT
    forward, ranges frozen) and evaluate it; errors are returned, not raised."""
    torch.manual_seed(seed)
    if getattr(train_loader, "generator", None) is not None:
        train_loader.generator.manual_seed(seed)
    try:
        model = materialize(base, candidate).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        losses = []
        for _, (images, labels) in zip(range(steps), _batches(train_loader)):
            device = model_device(model)
            loss = F.cross_entropy(model(to_device(images, device)), to_device(labels, device))
            if not torch.isfinite(loss):
                raise ValueError(f"QAT loss became {float(loss)} after {len(losses)} steps")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        result = evaluate(model, val_loader, progress=progress, desc="QAT " + candidate.label)
    except (ValueError, OverflowError) as err:
        return {"error": str(err), "steps": steps, "lr": lr}
    return {"top1": result.top1, "top5": result.top5, "loss": result.loss, "steps": steps,
            "lr": lr, "train_loss_first": losses[0], "train_loss_last": losses[-1],
            "error": None}
