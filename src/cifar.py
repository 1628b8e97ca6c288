"""CIFAR-10's python batch files, read without running code from them.

The batches are pickles, and unpickling a file can call any function it names (a `__reduce__`
payload). `BatchUnpickler` admits only what a real batch holds: dicts, lists, strings, bytes and
numbers (pickle opcodes, no functions) and numpy arrays, which name their rebuilding functions.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from numpy._core import multiarray, numeric

from .errors import DatasetError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
SHAPE = (3, 32, 32)  # each row of a batch's `data`: the R, G and B planes of one image


def _latin1_bytes(text: str, encoding: str) -> bytes:
    # pickle protocols < 3 of Python 3 write bytes as _codecs.encode(text, "latin1")
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, not latin1")
    return text.encode("latin1")


# (module, name) -> what a batch may call. numpy 1 wrote its internals as numpy.core.*, numpy 2
# writes numpy._core.*; _frombuffer is how protocol 5 pickles an array.
ALLOWED_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): multiarray._reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): numeric._frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class UnsafeBatchError(DatasetError, pickle.UnpicklingError):
    """A batch file that names a function no CIFAR batch holds."""


class BatchUnpickler(pickle.Unpickler):
    def __init__(self, path: Path, file):
        super().__init__(file, encoding="latin1")  # the batches are Python 2 pickles, read as torchvision does
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeBatchError(
                f"dataset cifar10: {self.path} names {module}.{name}, which no CIFAR-10 batch holds (it may "
                f"carry code, so it is not read further); allowed: numpy arrays, dicts, lists, strings, bytes, numbers")
        return ALLOWED_GLOBALS[module, name]


def read_batch(path: Path) -> tuple[np.ndarray, list]:
    """The (data, labels) of one batch file: uint8 rows of 3072 bytes and their labels."""
    with open(path, "rb") as f:
        entry = BatchUnpickler(path, f).load()
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get("labels") if isinstance(entry, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == np.prod(SHAPE) and isinstance(labels, list) and len(labels) == len(data)):
        raise ValueError(f"{path.name} is not a CIFAR-10 batch: a dict of `data` (uint8 rows of "
                         f"{int(np.prod(SHAPE))} bytes) and as many `labels`")
    return data, labels


def read_split(folder: Path, batches) -> tuple[np.ndarray, list]:
    """The images (N, 3, 32, 32) and labels of `batches`, in the order torchvision's CIFAR10 gives."""
    read = [read_batch(folder / name) for name in batches]
    return np.vstack([d for d, _ in read]).reshape(-1, *SHAPE), [y for _, ys in read for y in ys]
