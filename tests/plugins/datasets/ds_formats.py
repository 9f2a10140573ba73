"""Writers of the standard dataset file formats, for tests that make their own small files.

Kept beside the tests (not in conftest) so that test modules can import them by name.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def idx_bytes(arr: np.ndarray) -> bytes:
    """``arr`` (uint8) in IDX format: magic 0x0000 08 <ndim>, big-endian dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx_gz(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(idx_bytes(arr)))
    return path


def write_mnist_dir(d: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST files with random content in ``d``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": (np.arange(n_test) % 10).astype(np.uint8)[::-1].copy(),
    }
    arrays["train_x"][0, 0, 0], arrays["train_x"][0, 0, 1] = 0, 255  # the extremes, for scaling
    write_idx_gz(d / MNIST_FILES[0], arrays["train_x"])
    write_idx_gz(d / MNIST_FILES[1], arrays["train_y"])
    write_idx_gz(d / MNIST_FILES[2], arrays["test_x"])
    write_idx_gz(d / MNIST_FILES[3], arrays["test_y"])
    return arrays


def cifar_batch_bytes(data: np.ndarray, labels: list[int], name: bytes = b"testing batch 1 of 1") -> bytes:
    """A CIFAR batch as the originals are: a protocol-2 pickled dict with bytes keys."""
    d = {
        b"batch_label": name,
        b"labels": list(labels),
        b"data": np.ascontiguousarray(data, dtype=np.uint8),
        b"filenames": [b"img_%05d.png" % i for i in range(len(labels))],
    }
    return pickle.dumps(d, protocol=2)


def write_cifar_batch(path: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small CIFAR batch at ``path``; returns (data (n, 3072), labels)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = (np.arange(n) + seed) % 10
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cifar_batch_bytes(data, labels.tolist()))
    return data, labels


def assert_one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg
