"""The data sets: one builder per registered name, plus ImageNet-layout folders."""

from __future__ import annotations

import functools
import gzip
import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from .config import DataConfig, DataError
from .transforms import build_transform, largest_side

Builder = Callable[[DataConfig, str], "tuple[Dataset, int]"]


@dataclass(frozen=True)
class Source:
    build: Builder
    help: str


# ---------------------------------------------------------------------------- synthetic

class SyntheticImages(Dataset):
    """Deterministic images ``pattern[label] + noise`` with one smooth random pattern per
    class, already normalised (about zero mean, unit variance), so a tiny model can learn
    them. Item ``i`` of a split is the same for a given seed on every call and worker;
    the patterns are shared by both splits, the noise is not."""

    def __init__(self, size: int, num_classes: int, in_chans: int, img_size: int,
                 noise: float, seed: int, split: str):
        self.size, self.num_classes, self.noise = size, num_classes, noise
        self.in_chans, self.img_size = in_chans, img_size
        self.base_seed = (seed * 1_000_003 + (0 if split == "train" else 1)) * 10_000_019
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, in_chans, 4, 4, generator=g)
        self.patterns = torch.nn.functional.interpolate(
            coarse, size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.patterns /= self.patterns.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(
            self.base_seed % (2**63)))
        self.labels = (order % num_classes).tolist()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(index)
        label = self.labels[index]
        g = torch.Generator().manual_seed((self.base_seed + index + 1) % (2**63))
        noise = torch.randn(self.in_chans, self.img_size, self.img_size, generator=g)
        return torch.add(self.patterns[label], noise, alpha=self.noise), label


def build_synthetic(cfg: DataConfig, split: str):
    size = cfg.synthetic_train if split == "train" else cfg.synthetic_val
    return SyntheticImages(size, cfg.synthetic_classes, cfg.in_chans, cfg.img_size,
                           cfg.synthetic_noise, cfg.seed, split), cfg.synthetic_classes


# ------------------------------------------------------------------------ Fashion-MNIST

# Searched in order for the four IDX files (gzipped or not) before any download. The
# Debian package dataset-fashion-mnist installs them gzipped in the first folder.
FASHION_MNIST_DIRS: list[str] = ["/usr/share/datasets/fashion-mnist"]
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}


@functools.lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format; ``.gz`` or plain) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); replace it with "
                        f"the original Fashion-MNIST file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} "
                        f"values; replace it with the original Fashion-MNIST file")
    data = data.reshape(shape)
    data.setflags(write=False)
    return data


def find_idx(folder: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz",
                 stem.replace("-idx", ".idx")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


class ArrayImages(Dataset):
    """``uint8`` images ``(N, H, W)`` or ``(N, H, W, C)`` and integer labels, given to the
    transform as PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None,
                 classes: tuple[str, ...] = ()):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.transform, self.classes = transform, classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(np.asarray(self.images[index]))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def fashion_mnist_arrays(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    torchvision_raw = os.path.join(cfg.data_root, "FashionMNIST", "raw")
    for folder in [*FASHION_MNIST_DIRS, torchvision_raw]:
        images, labels = find_idx(folder, image_stem), find_idx(folder, label_stem)
        if images and labels:
            return read_idx(images), read_idx(labels)
    searched = ", ".join([*FASHION_MNIST_DIRS, torchvision_raw])
    fix = ("install the Debian package: `apt-get install dataset-fashion-mnist` (it puts "
           "the IDX files in /usr/share/datasets/fashion-mnist), or copy "
           f"{image_stem}.gz and {label_stem}.gz into {torchvision_raw}")
    if not cfg.download:
        raise DataError(f"Fashion-MNIST not found (looked in {searched}) and download is "
                        f"off; {fix}, or allow the download with a network")
    from torchvision.datasets import FashionMNIST

    try:
        ds = FashionMNIST(cfg.data_root, train=split == "train", download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise DataError(f"Fashion-MNIST not found (looked in {searched}) and the download "
                        f"failed ({exc}); {fix}, or retry with a network") from exc
    return ds.data.numpy(), ds.targets.numpy()


def build_fashion_mnist(cfg: DataConfig, split: str):
    images, labels = fashion_mnist_arrays(cfg, split)
    transform = build_transform(cfg, split, native_side=28)
    return ArrayImages(images, labels, transform, FASHION_MNIST_CLASSES), 10


# ------------------------------------------------------------------------------ CIFAR

CIFAR = {"cifar10": ("CIFAR10", 10, "cifar-10-python.tar.gz", "cifar-10-batches-py",
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
         "cifar100": ("CIFAR100", 100, "cifar-100-python.tar.gz", "cifar-100-python",
                      "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")}


def build_cifar(name: str) -> Builder:
    cls_name, num_classes, archive, folder, url = CIFAR[name]

    def build(cfg: DataConfig, split: str):
        import torchvision.datasets

        cls = getattr(torchvision.datasets, cls_name)
        transform = build_transform(cfg, split, native_side=32)
        root, train = cfg.data_root, split == "train"
        where = (f"fetch {url} (on any machine with a network) and put {archive} in "
                 f"{root}, or extract it there so that {os.path.join(root, folder)} "
                 f"exists; another folder can be chosen with DataConfig.root or "
                 f"$INTVIT_DATA_ROOT")
        try:
            return cls(root, train=train, transform=transform, download=False), num_classes
        except RuntimeError:
            if not cfg.download:
                raise DataError(f"{name} is not in {root} and download is off; "
                                f"{where}") from None
        try:
            return cls(root, train=train, transform=transform, download=True), num_classes
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise DataError(f"{name} is not in {root} and could not be downloaded "
                            f"({exc}); {where}") from exc

    return build


# ---------------------------------------------------------------------------- folders

def looks_like_path(data: str) -> bool:
    return (os.sep in data or "/" in data or data.startswith((".", "~"))
            or os.path.isdir(data))


def folder_classes(split_dir: Path) -> list[str]:
    return sorted(d.name for d in os.scandir(split_dir)
                  if d.is_dir() and not d.name.startswith("."))


def build_folder(cfg: DataConfig, split: str):
    """An ImageNet-layout folder: ``<data>/train/<class>/*.jpg`` and ``<data>/val/...``.
    Class indices come from train/ (sorted), so both splits agree even when val/ lacks a
    class."""
    root = Path(cfg.data).expanduser()
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist; give an existing "
                        f"folder with train/ and val/ subfolders, or a dataset name")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder; give a folder with "
                        f"train/ and val/ subfolders (ImageNet layout)")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(f"{str(root)!r} has no {' or '.join(s + '/' for s in missing)} "
                        f"subfolder; expected ImageNet layout: {root}/train/<class>/*.jpg "
                        f"and {root}/val/<class>/*.jpg")
    classes = folder_classes(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'} has no class subfolders; put the images of "
                        f"each class in their own folder, e.g. {root}/train/cat/1.jpg")
    split_dir = root / split
    class_to_idx = {c: i for i, c in enumerate(classes)}
    extra = sorted(set(folder_classes(split_dir)) - set(classes))
    if extra:
        raise DataError(f"{split_dir} has classes that train/ lacks: {', '.join(extra)}; "
                        f"every val/ class must also be a train/ class")
    samples = make_dataset(str(split_dir), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(f"{split_dir} holds no images (accepted extensions: "
                        f"{', '.join(IMG_EXTENSIONS)}); put images in its class folders")
    if split == "train":
        empty = sorted(set(classes) - {classes[t] for _, t in samples})
        if empty:
            raise DataError(f"{split_dir} has class folders without images: "
                            f"{', '.join(empty)}; fill or remove them")

    side = largest_side([path for path, _ in samples])
    dataset = FolderImages(str(split_dir), classes,
                           transform=build_transform(cfg, split, native_side=side),
                           loader=functools.partial(read_image, mode=cfg.image_mode))
    if cfg.skip_bad_images:
        skip_unreadable(dataset, cfg.image_mode)
    return dataset, len(classes)


class FolderImages(ImageFolder):
    """torchvision's ImageFolder with a given class list (train/'s), so that the indices
    of val/ agree with train/'s even when val/ lacks a class."""

    def __init__(self, root: str, classes: list[str], **kwargs):
        self.fixed_classes = list(classes)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory):
        return self.fixed_classes, {c: i for i, c in enumerate(self.fixed_classes)}


# ---------------------------------------------------------------------------- image files

#: PIL modes of integer images wider than 8 bits (16-bit PNG/TIFF, 32-bit integer).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(image, path: str):
    """An 8-bit view of ``image``: samples of a 16-bit (or 32-bit integer) image in
    ``[0, 65535]`` map to ``round(v * 255 / 65535)``, as a grayscale image; palette images
    become RGBA (their transparency kept); other modes are left to PIL's ``convert``."""
    from PIL import Image

    if image.mode in WIDE_MODES:
        v = np.asarray(image).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise DataError(f"image {path} (PIL mode {image.mode}) holds samples in "
                            f"[{v.min()}, {v.max()}], outside the 16-bit range [0, 65535]; "
                            f"save it with 8 or 16 bits per sample")
        return Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.mode == "F":
        raise DataError(f"image {path} has floating-point samples (PIL mode F), whose range "
                        f"is unknown; save it with 8 or 16 bits per sample")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    return image


def read_image(path: str, mode: str = "RGB"):
    """The image file at ``path`` as a PIL image of ``mode`` ('RGB' or 'L'), whatever
    mode it is stored in (see :func:`to_8bit`); an unreadable file is a DataError that
    names it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = to_8bit(image, path)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"cannot read image {path} ({err}); replace or remove it, or pass "
                        f"--skip-bad-images to leave unreadable images out") from None
    try:
        return image if image.mode == mode else image.convert(mode)
    except ValueError as err:
        raise DataError(f"image {path} is in PIL mode {image.mode}, which cannot be "
                        f"converted to {mode} ({err}); save it as RGB or grayscale") from None


def skip_unreadable(dataset: ImageFolder, mode: str) -> list[tuple[str, str]]:
    """``--skip-bad-images``: read every image of ``dataset`` once and drop those that
    cannot be read, with a note counting them (and naming the first few)."""
    from ..progress import tqdm

    bad, good = [], []
    for sample in tqdm(dataset.samples, desc=f"checking {dataset.root}", leave=False):
        try:
            read_image(sample[0], mode)
            good.append(sample)
        except DataError as err:
            bad.append((sample[0], str(err)))
    if bad:
        if not good:
            raise DataError(f"none of the {len(bad)} images in {dataset.root} can be read "
                            f"(first: {bad[0][1]})")
        dataset.samples = dataset.imgs = good
        dataset.targets = [t for _, t in good]
        print(f"note: skipped {len(bad)} unreadable image(s) of {len(bad) + len(good)} in "
              f"{dataset.root}: " + ", ".join(path for path, _ in bad[:5])
              + (", ..." if len(bad) > 5 else ""))
    return bad


# ---------------------------------------------------------------------------- registry

SOURCES: dict[str, Source] = {
    "synthetic": Source(build_synthetic, "deterministic random images with learnable "
                        "class patterns (sizes from DataConfig.synthetic_*)"),
    "fashion-mnist": Source(build_fashion_mnist, "Fashion-MNIST, 28x28 grayscale, 10 "
                            "classes (Debian's dataset-fashion-mnist, else download)"),
    "cifar10": Source(build_cifar("cifar10"), "CIFAR-10, 32x32 RGB, 10 classes"),
    "cifar100": Source(build_cifar("cifar100"), "CIFAR-100, 32x32 RGB, 100 classes"),
}
ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
           "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}
FOLDER = Source(build_folder, "a folder in ImageNet layout: <path>/train/<class>/*, "
                              "<path>/val/<class>/*")


def resolve(data: str) -> Source:
    """The source a ``--data`` value names: a registered name, or a folder path."""
    key = data.strip().lower()
    key = ALIASES.get(key, key)
    if key in SOURCES:
        return SOURCES[key]
    if looks_like_path(data):
        return FOLDER
    raise DataError(f"unknown dataset {data!r}; accepted names: {', '.join(SOURCES)}; "
                    f"or give a folder path in ImageNet layout (with train/ and val/ "
                    f"subfolders), e.g. --data ./imagenet")
