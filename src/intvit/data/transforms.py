"""timm's image pipelines, preceded by a conversion to the model's channel count."""

from __future__ import annotations

from torchvision import transforms

from .config import DataConfig

# Data sets whose images are at most this many pixels a side are resized, not cropped.
SMALL_SIDE = 64


class ToMode:
    """Convert a PIL image to ``mode`` ('RGB' replicates grayscale, 'L' averages colour).
    A class rather than a lambda, so that DataLoader workers can pickle it."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image):
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToMode({self.mode!r})"


def resize_only(cfg: DataConfig, native_side: int | None) -> bool:
    if cfg.resize_only is not None:
        return cfg.resize_only
    return native_side is not None and native_side <= SMALL_SIDE


def largest_side(paths: list[str], count: int = 16) -> int | None:
    """The largest side among the first ``count`` images of a folder data set (PIL reads
    only their headers); None when none can be read."""
    from PIL import Image

    sides = []
    for path in paths[:count]:
        try:
            with Image.open(path) as image:
                sides.append(max(image.size))
        except OSError:
            continue
    return max(sides) if sides else None


def build_transform(cfg: DataConfig, split: str, native_side: int | None = None
                    ) -> transforms.Compose:
    """PIL image -> normalised ``(in_chans, img_size, img_size)`` tensor.

    train: RandomResizedCrop(scale, ratio) + flip (+ jitter/RandAugment/erasing as asked);
    val: resize to ``img_size / crop_pct`` and centre-crop. Small images (``native_side``
    at most 64, or ``cfg.resize_only``) are resized to ``img_size`` whole in both splits.
    """
    from timm.data import create_transform

    small = resize_only(cfg, native_side)
    if small and cfg.resize_only is None:
        print(f"data ({split}): images of at most {native_side} px a side (<= {SMALL_SIDE}): "
              f"resized whole to {cfg.img_size} px, without random-resized crops or a "
              f"crop margin (as for the registered small data sets)")
    common = dict(input_size=cfg.img_size, interpolation=cfg.interpolation,
                  mean=cfg.norm_mean, std=cfg.norm_std)
    if split == "train":
        tf = create_transform(is_training=True,
                              scale=(1.0, 1.0) if small else cfg.scale,
                              ratio=(1.0, 1.0) if small else cfg.ratio,
                              hflip=cfg.hflip, color_jitter=cfg.color_jitter,
                              auto_augment=cfg.auto_augment, re_prob=cfg.re_prob, **common)
    else:
        tf = create_transform(is_training=False, crop_pct=1.0 if small else cfg.crop_pct,
                              **common)
    return transforms.Compose([ToMode(cfg.image_mode), tf])
