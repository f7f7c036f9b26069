"""Post-training calibration: run batches through a model while its observers record
activation ranges, then freeze them (they are buffers; nothing updates them later)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from ..progress import tqdm

from ..device import model_device, to_device
from .observer import RangeObserver
from .qtensor import Mode


@contextmanager
def calibration(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model runs in float and records ranges; on exit it returns
    to the mode its train/eval flag implies."""
    model.set_mode(Mode.CALIBRATE)
    try:
        yield model
    finally:
        model.train(model.training)


def is_calibrated(model: nn.Module) -> bool:
    """Every range observer of ``model`` has recorded a range (a model without observers
    counts as calibrated)."""
    return all(m.ready for m in model.modules() if isinstance(m, RangeObserver))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, num_batches: int,
              progress: bool = True) -> int:
    """Feed up to ``num_batches`` (images, labels) batches; returns how many were used."""
    if num_batches < 1:
        raise ValueError(f"calibration needs at least one batch, got {num_batches} (train: "
                         f"--calib-batches N with N >= 1, or a calibrated --checkpoint)")
    used = 0
    with calibration(model):
        for images, _ in tqdm(batches, total=num_batches, desc="calibrate",
                              disable=not progress, leave=False):
            if used >= num_batches:
                break
            model(to_device(images, model_device(model)))
            used += 1
    if used == 0:
        raise ValueError("calibration saw no batches: the dataset is empty")
    return used
