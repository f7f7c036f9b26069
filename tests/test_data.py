"""intvit.data: the registry, synthetic data, ImageNet-layout folders, Fashion-MNIST from
Debian's dataset-fashion-mnist, transforms, subsets, loaders and every error message."""

import gzip
import os
import struct
import urllib.error

import numpy as np
import pytest
import torch

from intvit.data import (DataConfig, DataError, build_dataset, build_loader,
                         build_transform, dataset_names, read_idx, resolve)
from intvit.data import sources

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"
HAVE_FMNIST = os.path.isfile(os.path.join(DEBIAN_FMNIST, "t10k-images-idx3-ubyte.gz"))
NEEDS_FMNIST = pytest.mark.skipif(
    not HAVE_FMNIST, reason=f"Fashion-MNIST not in {DEBIAN_FMNIST}; install it with "
                            f"`apt-get install -y dataset-fashion-mnist`")


def small(data="synthetic", **kw):
    kw.setdefault("img_size", 16)
    kw.setdefault("batch_size", 8)
    return DataConfig(data, **kw)


# ------------------------------------------------------------------------- registry

def test_registry_names_and_aliases():
    assert dataset_names() == ["synthetic", "fashion-mnist", "cifar10", "cifar100"]
    assert resolve("Fashion_MNIST") is sources.SOURCES["fashion-mnist"]
    assert resolve("CIFAR-10") is sources.SOURCES["cifar10"]
    assert resolve("./somewhere") is sources.FOLDER
    assert resolve("/abs/path") is sources.FOLDER


def test_default_normalisation_follows_channels():
    assert DataConfig(in_chans=3).norm_mean == (0.485, 0.456, 0.406)
    assert DataConfig(in_chans=3).norm_std == (0.229, 0.224, 0.225)
    assert DataConfig(in_chans=1).norm_mean == (0.5,)
    assert DataConfig(in_chans=1).norm_std == (0.5,)
    assert DataConfig(in_chans=1, mean=[0.2], std=[0.3]).norm_mean == (0.2,)


# ------------------------------------------------------------------------ synthetic

@pytest.mark.parametrize("in_chans", [3, 1])
def test_synthetic_shapes_and_labels(in_chans):
    cfg = small(in_chans=in_chans)
    train, n = build_dataset(cfg, "train")
    val, n_val = build_dataset(cfg, "val")
    assert n == n_val == 10
    assert len(train) == 512 and len(val) == 128
    x, y = train[0]
    assert x.shape == (in_chans, 16, 16) and x.dtype == torch.float32
    labels = [train[i][1] for i in range(len(train))]
    assert set(labels) == set(range(10))
    assert max(np.bincount(labels)) - min(np.bincount(labels)) <= 1  # balanced


def test_synthetic_sizes_are_configurable():
    cfg = small(synthetic_train=40, synthetic_val=12, synthetic_classes=4)
    train, n = build_dataset(cfg, "train")
    assert (len(train), len(build_dataset(cfg, "val")[0]), n) == (40, 12, 4)
    assert {train[i][1] for i in range(40)} == {0, 1, 2, 3}


def test_synthetic_is_deterministic():
    a, _ = build_dataset(small(seed=3), "train")
    b, _ = build_dataset(small(seed=3), "train")
    for i in (0, 7, 511):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
        assert torch.equal(a[i][0], a[i][0])           # same item on a second read
    c, _ = build_dataset(small(seed=4), "train")
    assert not torch.equal(a[0][0], c[0][0])
    val, _ = build_dataset(small(seed=3), "val")
    assert not torch.equal(a[0][0], val[0][0])         # fresh noise in val
    assert torch.equal(a.patterns, val.patterns)       # same classes in both splits
    with pytest.raises(IndexError):
        a[512]


def test_synthetic_is_learnable():
    cfg = small(img_size=8, synthetic_train=256, synthetic_val=128)
    train, n = build_dataset(cfg, "train")
    val, _ = build_dataset(cfg, "val")
    x = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    y = torch.tensor([train[i][1] for i in range(len(train))])
    model = torch.nn.Linear(x.shape[1], n)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    xv = torch.stack([val[i][0] for i in range(len(val))]).flatten(1)
    yv = torch.tensor([val[i][1] for i in range(len(val))])
    assert (model(xv).argmax(1) == yv).float().mean() > 0.8


# ------------------------------------------------------------------------- subsets

def test_subset_first_and_random():
    cfg = small(train_limit=20, val_limit=5)
    full, _ = build_dataset(small(), "train")
    first, _ = build_dataset(cfg, "train")
    assert len(first) == 20 and len(build_dataset(cfg, "val")[0]) == 5
    assert torch.equal(first[19][0], full[19][0])
    rand = build_dataset(small(train_limit=20, subset="random", seed=1), "train")[0]
    again = build_dataset(small(train_limit=20, subset="random", seed=1), "train")[0]
    other = build_dataset(small(train_limit=20, subset="random", seed=2), "train")[0]
    assert len(rand) == 20 and rand.indices == again.indices
    assert rand.indices == sorted(rand.indices) and rand.indices != list(range(20))
    assert rand.indices != other.indices
    assert len(build_dataset(small(train_limit=10_000), "train")[0]) == 512


# -------------------------------------------------------------------------- loaders

def test_loader_batches_and_shuffle():
    cfg = small(train_limit=20, val_limit=20)
    train = build_loader(cfg, "train")
    assert train.num_classes == 10
    batches = list(train)
    assert len(batches) == 2                          # 20 // 8, last partial dropped
    assert batches[0][0].shape == (8, 3, 16, 16) and batches[0][1].dtype == torch.int64
    val = list(build_loader(cfg, "val"))
    assert [len(b[1]) for b in val] == [8, 8, 4]      # val keeps every item, in order
    val_set = build_dataset(cfg, "val")[0]
    assert torch.cat([b[1] for b in val]).tolist() == [val_set[i][1] for i in range(20)]
    again = list(build_loader(cfg, "train"))
    assert torch.equal(batches[0][1], again[0][1])   # seeded shuffle
    tiny = list(build_loader(small(train_limit=5), "train"))
    assert len(tiny) == 1 and len(tiny[0][1]) == 5   # no full batch: keep the partial one


def test_distributed_loader(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        loader = build_loader(small(train_limit=16), "train", distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        loader.sampler.set_epoch(1)
        assert sum(len(b[1]) for b in loader) == 16
        val = build_loader(small(val_limit=16), "val", distributed=True)
        assert list(val.sampler) == list(range(16))  # in order, each item once
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------ transforms

def test_transforms_follow_timm_conventions():
    val = repr(build_transform(DataConfig(img_size=224), "val"))
    assert "Resize(size=256" in val and "CenterCrop(size=(224, 224))" in val
    assert "bicubic" in val
    train = repr(build_transform(DataConfig(img_size=224), "train"))
    assert "RandomResizedCrop" in train and "scale=(0.08, 1.0)" in train
    assert "RandomHorizontalFlip(p=0.5)" in train
    assert "RandAugment" not in train and "RandomErasing" not in train
    deit = DataConfig(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    aug = repr(build_transform(deit, "train"))
    assert "RandAugment" in aug and "RandomErasing" in aug
    # small images: resized whole, no crops
    small_val = repr(build_transform(DataConfig(img_size=32), "val", native_side=28))
    assert "Resize(size=32" in small_val
    small_train = repr(build_transform(DataConfig(img_size=32), "train", native_side=28))
    assert "scale=(1.0, 1.0)" in small_train


# --------------------------------------------------------------------------- folders

def write_folder(root, classes=("cat", "dog"), per_class=3, mode="RGB", size=(20, 12),
                 splits=("train", "val")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                    d / f"{i}.png")
    return root


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("in_chans", [3, 1])
def test_image_folder(tmp_path, mode, in_chans):
    root = write_folder(tmp_path / "imgs", classes=("a", "b", "c"), mode=mode)
    cfg = DataConfig(str(root), img_size=16, in_chans=in_chans, batch_size=4)
    for split in ("train", "val"):
        ds, n = build_dataset(cfg, split)
        assert n == 3 and len(ds) == 9
        x, y = ds[4]
        assert x.shape == (in_chans, 16, 16) and y == 1
    x, y = next(iter(build_loader(cfg, "train")))
    assert x.shape == (4, in_chans, 16, 16)


def test_grayscale_is_replicated_for_rgb_models(tmp_path):
    root = write_folder(tmp_path / "gray", mode="L")
    cfg = DataConfig(str(root), img_size=16, in_chans=3)
    x, _ = build_dataset(cfg, "val")[0][0]
    mean = torch.tensor(cfg.norm_mean)[:, None, None]
    std = torch.tensor(cfg.norm_std)[:, None, None]
    pixels = x * std + mean
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5)
    assert torch.allclose(pixels[0], pixels[2], atol=1e-5)


def test_folder_val_indices_follow_train(tmp_path):
    root = write_folder(tmp_path / "d", classes=("a", "b", "c"), splits=("train",))
    write_folder(root, classes=("c",), splits=("val",))
    val, n = build_dataset(DataConfig(str(root), img_size=8), "val")
    assert n == 3 and {y for _, y in val.samples} == {2}


def test_folder_with_workers(tmp_path):
    root = write_folder(tmp_path / "w")
    cfg = DataConfig(str(root), img_size=8, batch_size=3, workers=2)
    assert sum(len(y) for _, y in build_loader(cfg, "val")) == 6


# ------------------------------------------------------------------------ errors

def error(cfg, split="train"):
    with pytest.raises(DataError) as info:
        build_dataset(cfg, split)
    return str(info.value)


def test_error_unknown_name():
    msg = error(DataConfig("imagenet"))
    assert "unknown dataset 'imagenet'" in msg
    for name in dataset_names():
        assert name in msg
    assert "folder path" in msg and "train/" in msg


def test_error_missing_folder(tmp_path):
    msg = error(DataConfig(str(tmp_path / "nope")))
    assert "does not exist" in msg and "nope" in msg and "train/ and val/" in msg


def test_error_path_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert "is a file, not a folder" in error(DataConfig(str(tmp_path / "f.txt")))


def test_error_folder_without_splits(tmp_path):
    msg = error(DataConfig(str(tmp_path)))
    assert "no train/ or val/ subfolder" in msg and "ImageNet layout" in msg
    (tmp_path / "train").mkdir()
    msg = error(DataConfig(str(tmp_path)))
    assert "no val/ subfolder" in msg


def test_error_empty_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    assert "has no class subfolders" in error(DataConfig(str(tmp_path)))
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    msg = error(DataConfig(str(tmp_path)))
    assert "holds no images" in msg and ".png" in msg


def test_error_class_without_images(tmp_path):
    root = write_folder(tmp_path / "d", classes=("a",))
    (root / "train" / "b").mkdir()
    assert "class folders without images: b" in error(DataConfig(str(root)))


def test_error_val_class_unknown_to_train(tmp_path):
    root = write_folder(tmp_path / "d", classes=("a",))
    write_folder(root, classes=("z",), splits=("val",))
    assert "classes that train/ lacks: z" in error(DataConfig(str(root)), "val")


def test_error_bad_config_and_split():
    assert "in_chans must be 3 (RGB) or 1" in error(small(in_chans=2))
    assert "train_limit must be a positive" in error(small(train_limit=0))
    assert "mean has 3 values but in_chans is 1" in error(small(in_chans=1, mean=(0, 0, 0)))
    assert "unknown split 'test'" in error(small(), "test")


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"),
                                         ("cifar100", "cifar-100-python")])
def test_error_cifar_offline(tmp_path, monkeypatch, name, folder):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    msg = error(DataConfig(name, root=str(tmp_path)))
    assert f"{name} is not in {tmp_path}" in msg and "could not be downloaded" in msg
    assert str(tmp_path / folder) in msg and "https://www.cs.toronto.edu/" in msg
    msg = error(DataConfig(name, root=str(tmp_path), download=False))
    assert "download is off" in msg and str(tmp_path / folder) in msg


def test_cifar_builds_through_torchvision(monkeypatch, tmp_path):
    seen = {}

    class FakeCIFAR(torch.utils.data.Dataset):
        def __init__(self, root, train, transform, download):
            seen.update(root=root, train=train, download=download, transform=transform)

    monkeypatch.setattr("torchvision.datasets.CIFAR100", FakeCIFAR)
    ds, n = build_dataset(DataConfig("cifar100", root=str(tmp_path), img_size=32), "val")
    assert n == 100 and seen["root"] == str(tmp_path) and not seen["train"]
    assert "Resize(size=32" in repr(seen["transform"])   # small images: resize only


def test_error_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", [str(tmp_path / "none")])
    msg = error(DataConfig("fashion-mnist", root=str(tmp_path), download=False))
    assert "Fashion-MNIST not found" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "network" in msg

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    msg = error(DataConfig("fashion-mnist", root=str(tmp_path)))
    assert "download failed" in msg and "apt-get install dataset-fashion-mnist" in msg


# --------------------------------------------------------------------- Fashion-MNIST

def write_idx(path, array):
    codes = {np.uint8: 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype.type], array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_idx_reader_and_local_copy(tmp_path, monkeypatch):
    images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    raw = tmp_path / "FashionMNIST" / "raw"     # torchvision's layout under the data root
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", images)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(read_idx(str(raw / "t10k-images-idx3-ubyte.gz")), images)
    monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", [str(tmp_path / "none")])
    ds, n = build_dataset(DataConfig("fashion-mnist", root=str(tmp_path), img_size=28,
                                     in_chans=1, download=False), "val")
    assert n == 10 and len(ds) == 5 and [ds[i][1] for i in range(5)] == [3, 1, 4, 1, 5]
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(str(bad))


@NEEDS_FMNIST
def test_fashion_mnist_from_debian_package(tmp_path):
    cfg = DataConfig("fashion-mnist", img_size=32, in_chans=1, root=str(tmp_path),
                     download=False, train_limit=64, val_limit=16, batch_size=16)
    train, n = build_dataset(cfg, "train")
    assert n == 10 and len(train.dataset) == 60000 and len(train) == 64
    val, _ = build_dataset(cfg, "val")
    assert len(val.dataset) == 10000
    assert val[0][1] == 9 and val[1][1] == 2             # Ankle boot, Pullover
    x, y = next(iter(build_loader(cfg, "train")))
    assert x.shape == (16, 1, 32, 32) and y.min() >= 0 and y.max() <= 9
    assert -1.0 <= x.min() and x.max() <= 1.0             # (0.5,)/(0.5,) normalisation
    assert not any(tmp_path.iterdir())                   # nothing was downloaded
    rgb, _ = build_dataset(DataConfig("fashion-mnist", img_size=32, in_chans=3,
                                      download=False, val_limit=4), "val")
    x = rgb[0][0]
    assert x.shape == (3, 32, 32)
    pixels = x * torch.tensor((0.229, 0.224, 0.225))[:, None, None] + torch.tensor(
        (0.485, 0.456, 0.406))[:, None, None]
    assert torch.allclose(pixels[0], pixels[2], atol=1e-5)
