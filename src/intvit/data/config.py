"""What to load and how: :class:`DataConfig`, and :class:`DataError` for what cannot be."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)
SPLITS = ("train", "val")
SUBSET_MODES = ("first", "random")


class DataError(ValueError):
    """A data set that cannot be loaded as asked; the message says why and how to fix it."""


def default_root() -> str:
    """Where torchvision data sets are looked for and downloaded: ``$INTVIT_DATA_ROOT``,
    else ``~/.cache/intvit/data``."""
    fallback = Path.home() / ".cache" / "intvit" / "data"
    return os.environ.get("INTVIT_DATA_ROOT") or str(fallback)


@dataclass
class DataConfig:
    """A data set (a registered name or an ImageNet-layout folder) and its pipeline.

    Augmentation follows timm/DeiT's training recipe (RandomResizedCrop + flip, plus
    optional RandAugment, colour jitter and random erasing); mixup/cutmix belong to the
    training loop. Evaluation resizes to ``img_size / crop_pct`` and centre-crops.
    Data sets of small images (Fashion-MNIST, CIFAR) are only resized to ``img_size``
    (plus flips), unless ``resize_only`` says otherwise.
    """

    data: str = "synthetic"
    img_size: int = 224
    in_chans: int = 3                    # the model's input channels: 3 or 1
    batch_size: int = 64
    workers: int = 0
    seed: int = 0
    root: str | None = None              # torchvision download folder (default_root())
    download: bool = True                # let torchvision download CIFAR / Fashion-MNIST
    # training augmentation (timm / DeiT conventions)
    scale: tuple[float, float] = (0.08, 1.0)           # RandomResizedCrop area range
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str | None = None      # e.g. DeiT's 'rand-m9-mstd0.5-inc1'; off for speed
    re_prob: float = 0.0                 # random erasing probability (DeiT: 0.25)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875              # evaluation: resize to img_size / crop_pct, crop
    resize_only: bool | None = None      # None: only for data sets of small images
    mean: tuple[float, ...] | None = None  # None: ImageNet's for 3 channels, 0.5 for 1
    std: tuple[float, ...] | None = None
    # subsets, so tests and quick runs stay small
    train_limit: int | None = None
    val_limit: int | None = None
    subset: str = "first"                # 'first' N, or a 'random' N drawn with `seed`
    skip_bad_images: bool = False        # folders: leave unreadable images out (counted)
    # the synthetic data set
    synthetic_train: int = 512
    synthetic_val: int = 128
    synthetic_classes: int = 10
    synthetic_noise: float = 0.5         # noise std; the class patterns have std ~1

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)
        self.ratio = tuple(self.ratio)
        if self.mean is not None:
            self.mean = tuple(self.mean)
        if self.std is not None:
            self.std = tuple(self.std)

    @property
    def data_root(self) -> str:
        return self.root or default_root()

    @property
    def norm_mean(self) -> tuple[float, ...]:
        return self.mean if self.mean is not None else (
            IMAGENET_MEAN if self.in_chans == 3 else GRAY_MEAN)

    @property
    def norm_std(self) -> tuple[float, ...]:
        return self.std if self.std is not None else (
            IMAGENET_STD if self.in_chans == 3 else GRAY_STD)

    @property
    def image_mode(self) -> str:
        """The PIL mode images are converted to before the transform: grayscale images
        are replicated to RGB for 3-channel models, colour ones averaged for 1-channel."""
        return "RGB" if self.in_chans == 3 else "L"

    def validate(self) -> None:
        problems = []
        if self.in_chans not in (1, 3):
            problems.append(f"in_chans must be 3 (RGB) or 1 (grayscale), "
                            f"got {self.in_chans}")
        if self.img_size < 1:
            problems.append(f"img_size must be positive, got {self.img_size}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be positive, got {self.batch_size}")
        if self.workers < 0:
            problems.append(f"workers must be >= 0, got {self.workers}")
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be a positive count or None, got {value}")
        if self.subset not in SUBSET_MODES:
            problems.append(f"subset must be one of {', '.join(SUBSET_MODES)}, "
                            f"got {self.subset!r}")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct must lie in (0, 1], got {self.crop_pct}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_chans:
                problems.append(f"{name} has {len(value)} values but in_chans is "
                                f"{self.in_chans}; give one per channel or leave it unset")
        if self.synthetic_classes < 2:
            problems.append(f"synthetic_classes must be >= 2, got {self.synthetic_classes}")
        if self.synthetic_train < 1 or self.synthetic_val < 1:
            problems.append("synthetic_train and synthetic_val must be positive, got "
                            f"{self.synthetic_train} and {self.synthetic_val}")
        if problems:
            raise DataError("invalid data configuration: " + "; ".join(problems))
