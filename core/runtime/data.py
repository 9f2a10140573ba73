"""Data helpers shared by the kernel and dataset plugins.

In-memory datasets are ``TensorDataset``s and are sliced directly; anything else goes
through a ``DataLoader``. Per-item ``__getitem__`` on a TensorDataset costs more than the
forward pass of a small model, so the fast path matters for matrices of many cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset as TorchDataset, Subset, TensorDataset

from advx.contract.errors import ConfigError
from advx.contract.interfaces import DatasetConfig


def as_tensor_dataset(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> TensorDataset:
    """A float32 / int64 ``TensorDataset`` from arrays.

    Shares memory with ``x``/``y`` when their dtypes already match (no copy of a 60k-image
    array); read-only arrays (e.g. memory-mapped or cached ones) are copied, so nothing a
    consumer does can write into a plugin's cache.
    """
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    if isinstance(y, np.ndarray) and not y.flags.writeable:
        y = y.copy()
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    if len(xt) != len(yt):
        raise ValueError(f"{len(xt)} examples but {len(yt)} labels")
    return TensorDataset(xt, yt)


def dataset_labels(ds: TorchDataset) -> Tensor:
    """All labels of ``ds`` as an int64 tensor (without loading images where possible)."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].long()
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    targets = getattr(ds, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.int64)
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.int64)


def subset(ds: TorchDataset, indices: Tensor | list[int]) -> TorchDataset:
    """``ds`` restricted to ``indices``, staying a TensorDataset when it is one."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return Subset(ds, idx.tolist())


def apply_class_ratios(ds: TorchDataset, config: DatasetConfig) -> TorchDataset:
    """Subsample the classes listed in ``config.class_ratios`` (seed 000's imbalance study).

    Each listed class keeps ``round(ratio * count)`` examples drawn without replacement
    with ``config.imbalance_seed``; unlisted classes are kept whole.
    """
    ratios = config.class_ratios
    if not ratios:
        return ds
    labels = dataset_labels(ds)
    gen = torch.Generator().manual_seed(config.imbalance_seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    for cls, ratio in sorted(ratios.items()):
        idx = (labels == cls).nonzero().flatten()
        n_keep = int(math.floor(ratio * len(idx) + 0.5))  # half up, not half to even
        perm = idx[torch.randperm(len(idx), generator=gen)]
        keep[perm[n_keep:]] = False
    return subset(ds, keep.nonzero().flatten())


def iter_batches(
    ds: TorchDataset,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches ``(x, y)`` of ``ds``; a shuffled order is drawn from ``generator``."""
    n = len(ds)  # type: ignore[arg-type]
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors[0], ds.tensors[1]
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                yield x[start : start + batch_size], y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield x[idx], y[idx]
        return
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)
    for xb, yb in loader:
        yield xb.float(), yb.long()


def take(ds: TorchDataset, n: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples (or ``n`` drawn with ``seed``), stacked in memory."""
    total = len(ds)  # type: ignore[arg-type]
    n = min(n, total)
    if seed is None:
        idx = torch.arange(n)
    else:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][idx].float(), ds.tensors[1][idx].long()
    xs, ys = zip(*(ds[int(i)] for i in idx))
    return torch.stack([torch.as_tensor(v) for v in xs]).float(), torch.as_tensor(ys, dtype=torch.int64)


def load_split(dataset, split: str) -> TorchDataset:
    """``dataset.load(split)`` with the shared dataset options applied (class ratios on train)."""
    ratios = getattr(dataset.config, "class_ratios", None)
    if ratios:
        n = dataset.info().num_classes
        bad = sorted(k for k in ratios if not 0 <= k < n)
        if bad:
            raise ConfigError(f'dataset "{dataset.name}": class_ratios: no class {bad[0]} (classes are 0..{n - 1})')
    ds = dataset.load(split)
    if split == "train":
        ds = apply_class_ratios(ds, dataset.config)
    return ds
