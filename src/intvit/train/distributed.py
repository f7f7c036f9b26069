"""torchrun support: one GPU per process (``LOCAL_RANK``), NCCL on GPUs, gloo on CPUs,
rank 0 writes and prints."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size); starts a process group when launched by torchrun, NCCL when
    ``device`` is a GPU (made this process's current device), else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
