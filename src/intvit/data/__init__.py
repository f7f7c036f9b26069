"""Data sets and loaders for ``intvit train/calibrate/eval --data X``.

``X`` is a registered name (:data:`SOURCES`: synthetic, fashion-mnist, cifar10, cifar100)
or a folder in ImageNet layout (``X/train/<class>/*``, ``X/val/<class>/*``)::

    cfg = DataConfig("fashion-mnist", img_size=32, in_chans=1, batch_size=128)
    train = build_loader(cfg, "train")          # train.num_classes == 10
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from .config import DataConfig, DataError, default_root
from .sources import (ALIASES, FASHION_MNIST_DIRS, SOURCES, SyntheticImages, read_idx,
                      resolve)
from .transforms import build_transform

__all__ = ["DataConfig", "DataError", "SOURCES", "ALIASES", "FASHION_MNIST_DIRS",
           "SyntheticImages", "build_dataset", "build_loader", "build_transform",
           "dataset_names", "default_root", "read_idx", "resolve"]


def dataset_names() -> list[str]:
    """The registered names (a folder path is accepted too)."""
    return list(SOURCES)


def limit(dataset: Dataset, count: int | None, mode: str, seed: int) -> Dataset:
    """The first ``count`` items, or ``count`` items drawn with ``seed`` (kept in order)."""
    if count is None or count >= len(dataset):
        return dataset
    if mode == "first":
        indices = list(range(count))
    else:
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        indices = sorted(perm[:count].tolist())
    return Subset(dataset, indices)


def build_dataset(cfg: DataConfig, split: str) -> tuple[Dataset, int]:
    """The ``split`` ('train' or 'val') of ``cfg.data``, transformed, limited to
    ``cfg.train_limit`` / ``cfg.val_limit`` items, and its number of classes. Items are
    ``(float tensor (in_chans, img_size, img_size), int label)``."""
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'val'")
    cfg.validate()
    dataset, num_classes = resolve(cfg.data).build(cfg, split)
    count = cfg.train_limit if split == "train" else cfg.val_limit
    return limit(dataset, count, cfg.subset, cfg.seed), num_classes


class ShardSampler(Sampler[int]):
    """Evaluation across ranks: rank r takes items r, r + world, ...; every item exactly
    once (DistributedSampler pads the last round with repeats, which evaluation would
    count twice)."""

    def __init__(self, length: int) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.indices = range(self.rank, length, self.world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(cfg: DataConfig, split: str, distributed: bool = False) -> DataLoader:
    """A DataLoader over :func:`build_dataset`; ``loader.num_classes`` holds the class
    count. Training shuffles (seeded by ``cfg.seed``) and drops the last partial batch
    when there is a full one; ``distributed`` uses a DistributedSampler for training (call
    ``loader.sampler.set_epoch(epoch)`` each epoch) and a :class:`ShardSampler` for
    evaluation."""
    dataset, num_classes = build_dataset(cfg, split)
    train = split == "train"
    sampler = None
    if distributed:
        sampler = (DistributedSampler(dataset, shuffle=True, seed=cfg.seed) if train
                   else ShardSampler(len(dataset)))
        per_rank = len(sampler)
    else:
        per_rank = len(dataset)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler,
        shuffle=train if sampler is None else False,
        num_workers=cfg.workers, pin_memory=torch.cuda.is_available(),
        drop_last=train and per_rank >= cfg.batch_size,
        persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed))
    loader.num_classes = num_classes
    return loader
