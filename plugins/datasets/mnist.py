"""``mnist`` and ``fashion-mnist``: the 28x28 grey-level IDX datasets (60,000 train / 10,000 test).

Both ship in the same gzipped IDX format (magic 2051 for images, 2049 for labels), so one
module registers both. Pixels (0..255) are scaled to [0, 1]; one example has shape
(1, 28, 28). ``mean``/``std`` are over all training pixels, in these [0, 1] units, so a
model's ``Normalize`` layer matches the usual values (0.1307/0.3081 for MNIST).

Files are looked for in ``data_dir`` (and ``data_dir/<name>/``), else ``$ADVX_DATA/<name>/``,
else ``~/.cache/advx/data/<name>/``; the gzipped originals or their decompressed forms
(``train-images-idx3-ubyte``) are both accepted. Missing files are downloaded from the
canonical mirrors and md5-checked when the network is reachable (into ``data_dir/<name>/``
if that folder exists, else ``data_dir``, else ``$ADVX_DATA/<name>/`` or the cache), and only
renamed into place once the checksum matches; otherwise a one-line
``DataError`` says what is missing and where it was looked for. Parsed arrays are cached
per process, so a matrix of many cells reads each file once.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from advx import Dataset, DatasetInfo, as_tensor_dataset, hookimpl

from ._files import FileDatasetConfig, Remote, files_fingerprint, load_idx_pair, locate_or_download

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


class _IdxDataset(Dataset):
    """Common loader of the MNIST-format datasets; subclasses give name, sources, statistics."""

    MIRRORS: ClassVar[tuple[str, ...]]
    MD5: ClassVar[dict[str, str]]
    MEAN: ClassVar[float]
    STD: ClassVar[float]
    CLASS_NAMES: ClassVar[tuple[str, ...]]

    class Config(FileDatasetConfig):
        """Where the IDX files are and whether to download them."""

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            input_shape=(1, 28, 28),
            num_classes=10,
            bounds=(0.0, 1.0),
            mean=(self.MEAN,),
            std=(self.STD,),
            class_names=self.CLASS_NAMES,
        )

    def files(self, split: str) -> tuple:
        """Paths of (images, labels) of ``split``, downloading them if allowed and needed."""
        prefix = "train" if split == "train" else "test"
        keys = (f"{prefix}_images", f"{prefix}_labels")
        files = {k: (FILES[k], FILES[k][: -len(".gz")]) for k in keys}
        remotes = {k: Remote(FILES[k], self.MD5[k], self.MIRRORS) for k in keys}
        found = locate_or_download(
            self.name, files, self.config, official_md5=self.MD5, remotes=remotes
        )
        return found[keys[0]], found[keys[1]]

    def fingerprint(self, split="train") -> list[str]:
        """MD5 of the files of ``split``: a model trained, or a cell evaluated, on other files is another."""
        return files_fingerprint(list(self.files(split)))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, 28, 28) and labels (N,) of ``split``, read-only and cached."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        images, labels = self.files(split)
        return load_idx_pair(images, labels)

    def load(self, split):
        x, y = self.arrays(split)
        xf = x.astype(np.float32)[:, None, :, :]
        xf *= 1.0 / 255.0
        return as_tensor_dataset(xf, y.astype(np.int64))


class Mnist(_IdxDataset):
    """MNIST handwritten digits: 60k/10k 28x28 grey images, scaled to [0, 1]."""

    name: ClassVar[str] = "mnist"
    MIRRORS = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    MD5 = {
        "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
        "test_images": "9fb629c4189551a2d022fa330f9573f3",
        "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    MEAN = 0.1307
    STD = 0.3081
    CLASS_NAMES = tuple(str(i) for i in range(10))

    class Config(FileDatasetConfig):
        """Where the MNIST IDX files are and whether to download them."""


class FashionMnist(_IdxDataset):
    """Fashion-MNIST (Zalando): 60k/10k 28x28 grey clothing images, 10 classes, in [0, 1]."""

    name: ClassVar[str] = "fashion-mnist"
    MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    MD5 = {
        "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
        "test_images": "bef4ecab320f06d8554ea6380940ec79",
        "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    MEAN = 0.2860
    STD = 0.3530
    CLASS_NAMES = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )

    class Config(FileDatasetConfig):
        """Where the Fashion-MNIST IDX files are and whether to download them."""


@hookimpl
def advx_register_datasets():
    return [Mnist, FashionMnist]
