"""``cifar-10``: the CIFAR-10 "python version" batches (50,000 train / 10,000 test, 3x32x32).

The files are pickled dicts (``data``: uint8 (10000, 3072) rows of R, G, B planes;
``labels``: list of ints). They are read with a *restricted* unpickler that admits only
numpy's array reconstructor, ``ndarray`` and ``dtype``: a pickle names code to run, and a
dataset file from the internet must never get to run any. Pixels are scaled to [0, 1].

Training batches: the training split is ``data_batch_1`` .. ``data_batch_5`` by default.
If some are absent (the offline copy in ``shared/data`` holds only batches 1 and 2) the
load fails with a one-line ``DataError`` listing the missing files, unless the network is
reachable (then the official tarball is downloaded, md5-checked and the batches
extracted). To train on the batches you have, say so explicitly with ``train_batches``
(``[1, 2]`` or ``2``), and report the smaller training set beside any result: silently
training on 20,000 images instead of 50,000 would change every number downstream.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field, field_validator

from advx import Dataset, DatasetInfo, as_tensor_dataset, hookimpl

from ._files import Archive, FileDatasetConfig, Remote, files_fingerprint, load_cifar_batch, locate_or_download

TARBALL = Remote(
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    ("https://www.cs.toronto.edu/~kriz/",),
)
TAR_DIR = "cifar-10-batches-py"
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
#: official md5 of the files inside the tarball (the offline data_batch/test_batch copies differ)
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class Cifar10(Dataset):
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes, in [0, 1]; restricted unpickling."""

    name: ClassVar[str] = "cifar-10"

    class Config(FileDatasetConfig):
        train_batches: int | list[int] = Field(
            5,
            description=(
                "training batches to use: N means data_batch_1..N, a list names them, e.g. [1, 2] "
                "(the offline copy has only batches 1-2: say so beside results)"
            ),
        )

        @field_validator("train_batches")
        @classmethod
        def _check_batches(cls, v: int | list[int]) -> int | list[int]:
            batches = list(range(1, v + 1)) if isinstance(v, int) else v
            if not batches:
                raise ValueError("at least one training batch is needed")
            bad = [b for b in batches if not 1 <= b <= 5]
            if bad:
                raise ValueError(f"batches are numbered 1 to 5, got {bad}")
            if len(set(batches)) != len(batches):
                raise ValueError(f"batches listed twice in {batches}")
            return v

    @property
    def batch_numbers(self) -> list[int]:
        v = self.config.train_batches
        return list(range(1, v + 1)) if isinstance(v, int) else list(v)

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            input_shape=(3, 32, 32),
            num_classes=10,
            bounds=(0.0, 1.0),
            # per-channel mean/std over all training pixels (not the often-copied 0.2023/0.1994/0.2010)
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            class_names=CLASS_NAMES,
        )

    def files(self, split: str) -> list:
        """Paths of the batches of ``split``, downloading the tarball if allowed and needed."""
        if split == "train":
            keys = [f"data_batch_{i}" for i in self.batch_numbers]
            hint = (
                "to train on the batches present, set train_batches (e.g. [1, 2]) and report the "
                "smaller training set"
            )
        elif split == "test":
            keys, hint = ["test_batch"], ""
        else:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        found = locate_or_download(
            self.name,
            {k: (k,) for k in keys},
            self.config,
            official_md5=OFFICIAL_MD5,
            archive=Archive(TARBALL, {f"{TAR_DIR}/{f}": f for f in BATCH_FILES}),
            subdirs=(TAR_DIR,),
            hint=hint,
        )
        return [found[k] for k in keys]

    def fingerprint(self, split="train") -> list[str]:
        """MD5 of the files of ``split``: a model trained, or a cell evaluated, on other files is another."""
        return files_fingerprint(list(self.files(split)))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, 3, 32, 32) and int64 labels (N,) of ``split``; batches cached per process."""
        parts = [load_cifar_batch(p) for p in self.files(split)]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def load(self, split):
        x, y = self.arrays(split)
        xf = x.astype(np.float32)
        xf *= 1.0 / 255.0
        return as_tensor_dataset(xf, y.copy())  # copy: never share the read-only cache


@hookimpl
def advx_register_datasets():
    return [Cifar10]
