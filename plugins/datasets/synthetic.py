"""``synthetic``: labelled examples generated on the fly, of any shape and class count.

Each class is a fixed random prototype image; examples are prototype + Gaussian noise,
clipped to [0, 1]. Learnable, deterministic for a seed, and instant: for tests and for
timing attacks on shapes no bundled dataset has.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from advx import Dataset, DatasetConfig, DatasetInfo, hookimpl
from torch.utils.data import TensorDataset


class Synthetic(Dataset):
    """Class prototypes plus Gaussian noise in [0, 1], any shape; for tests and timing."""

    name: ClassVar[str] = "synthetic"

    class Config(DatasetConfig):
        shape: tuple[int, ...] = Field((1, 8, 8), description="shape of one example, e.g. [3, 32, 32]")
        num_classes: int = Field(10, ge=2, le=1000, description="number of classes")
        train_size: int = Field(1000, ge=1, description="training examples")
        test_size: int = Field(200, ge=1, description="test examples")
        noise: float = Field(0.15, ge=0, description="std of the noise around each class prototype")
        seed: int = Field(0, description="seed of prototypes and noise")

    def info(self) -> DatasetInfo:
        c = self.config
        return DatasetInfo(name=self.name, input_shape=tuple(c.shape), num_classes=c.num_classes, bounds=(0.0, 1.0))

    def load(self, split):
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        protos = torch.rand((c.num_classes, *c.shape), generator=gen)
        n = c.train_size if split == "train" else c.test_size
        gen.manual_seed(c.seed + (1 if split == "train" else 2))
        y = torch.randint(0, c.num_classes, (n,), generator=gen)
        x = (protos[y] + c.noise * torch.randn((n, *c.shape), generator=gen)).clamp(0.0, 1.0)
        return TensorDataset(x, y)


@hookimpl
def advx_register_datasets():
    return [Synthetic]
