"""``digits``: scikit-learn's bundled 8x8 handwritten digits, the embedded default.

Runs with no download: the 1,797 images ship inside scikit-learn. Pixels (0..16) are
scaled to [0, 1]. The test split is a fixed, stratified 500 examples (seeded), so that a
default matrix evaluates 500 samples per cell; the remaining 1,297 are for training.
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field

from advx import Dataset, DatasetConfig, DatasetInfo, as_tensor_dataset, hookimpl


@lru_cache(maxsize=4)
def _split(test_size: int, split_seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=test_size, random_state=split_seed, stratify=y)


class Digits(Dataset):
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), scaled to [0, 1]; no download."""

    name: ClassVar[str] = "digits"

    class Config(DatasetConfig):
        test_size: int = Field(500, ge=10, le=1000, description="examples held out for evaluation")
        split_seed: int = Field(0, description="seed of the stratified train/test split")

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            input_shape=(1, 8, 8),
            num_classes=10,
            bounds=(0.0, 1.0),
            mean=(0.3051,),
            std=(0.3820,),
            class_names=tuple(str(i) for i in range(10)),
        )

    def load(self, split):
        x_tr, x_te, y_tr, y_te = _split(self.config.test_size, self.config.split_seed)
        if split == "train":
            return as_tensor_dataset(x_tr, y_tr)
        return as_tensor_dataset(x_te, y_te)


@hookimpl
def advx_register_datasets():
    return [Digits]
