"""Which device a command runs on: ``--device auto|cpu|cuda|cuda:N``.

``auto`` is CUDA when available, else the CPU. Under ``torchrun`` (``LOCAL_RANK`` set)
``auto`` and ``cuda`` mean the process's own GPU, ``cuda:LOCAL_RANK``. A CUDA device on a
machine without one, or an index past the last GPU, is an error that says so.
"""

from __future__ import annotations

import os

import torch
from torch import nn

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
# Images an integer forward takes at a time on a CPU: the int64 intermediates of a larger
# batch (a deit_small attention's scores at batch 32: 60 MB) fall out of the caches, and
# the time per image grows with the batch (measured: benchmarks/eval_speed.py).
CPU_BATCH_CHUNK = 8


class DeviceError(ValueError):
    """A device that this machine does not have, or a name that is not one."""


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device ``spec`` names on this machine (see the module docstring)."""
    text = (spec or "auto").strip().lower()
    local = os.environ.get("LOCAL_RANK")
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = "cuda"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build "
                              f"{torch.version.cuda or 'none'}); use --device cpu or auto")
        index_text = text[5:] if text.startswith("cuda:") else (local or "0")
        if not index_text.isdigit():
            raise DeviceError(f"--device {spec}: the GPU index must be a number, as in "
                              f"cuda:0; accepted: {DEVICE_CHOICES}")
        index, count = int(index_text), torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"--device {spec}: GPU {index} does not exist; this machine "
                              f"has {count} (cuda:0 .. cuda:{count - 1})")
        return torch.device("cuda", index)
    raise DeviceError(f"unknown device {spec!r}; accepted: {DEVICE_CHOICES}")


def model_device(model) -> torch.device:
    """Where a model's parameters live (an inference engine: the CPU)."""
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return torch.device("cpu")


def cpu_chunks(images: torch.Tensor, chunk: int = CPU_BATCH_CHUNK) -> tuple[torch.Tensor, ...]:
    """A CPU batch split into runs of ``chunk`` images (every image's integers are
    independent of the others'); a GPU batch whole, which it runs fastest."""
    return images.split(chunk) if images.device.type == "cpu" else (images,)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``; from pinned memory the copy overlaps with compute."""
    return batch.to(device, non_blocking=batch.device.type == "cpu" and device.type == "cuda")
