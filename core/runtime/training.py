"""Training with a cache: a model plugin trained on a dataset plugin, stored by a key.

The key is a hash of everything that changes the weights: dataset name, config (class
ratios included) and fingerprint (checksums of its files), model name and config, the training config (seed included), the
device type, any extra key a defense adds (its training transform), and a format
version. A second run with the same key loads the checkpoint (``weights_only=True``)
instead of training. Same seed and same device give the same weights: the model is
initialised after ``torch.manual_seed(seed)`` and batches are shuffled by a generator
seeded from it.

A cache entry is trained once however many processes need it at once (workers of one run,
two runs, Ray tasks on one node or on a shared file system): the training holds a lock
on the entry (``cache_lock``), and a process that finds it held waits, then loads what the
other trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from advx.runtime.data import iter_batches, load_split
from advx.contract.errors import DataError
from advx.contract.interfaces import Dataset, DatasetConfig, DatasetInfo, Model, Normalize, NormalizedModel, PluginConfig

TRAIN_FORMAT = 2  # bump when the training loop changes what a key produces

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


class TrainConfig(PluginConfig):
    """How a model is trained (the ``train = {...}`` table of a model in a spec)."""

    epochs: int = Field(10, ge=0, le=10000, description="passes over the training split")
    batch_size: int = Field(128, ge=1, description="examples per optimiser step")
    optimizer: Literal["adam", "sgd", "adadelta"] = Field("adam", description="optimiser")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum (sgd)")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")
    seed: int = Field(0, description="seed of initialisation, shuffling and dropout")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where checkpoints live: ``override``, ``$ADVX_CACHE_DIR``, else the user cache dir."""
    if override:
        return Path(override)
    env = os.environ.get("ADVX_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "advx"


def applies_normalization(config: Any, info: DatasetInfo) -> bool:
    """Whether ``build_model`` puts the dataset's normalisation in front of the network."""
    return bool(getattr(config, "normalize", False)) and info.mean is not None and info.std is not None


def background_value(config: Any, info: DatasetInfo) -> tuple[float, ...]:
    """The dataset's lower bound (a black pixel) per channel, in the units the network sees.

    Models that pad inside themselves (LeNet-5's 28 -> 32) pad with this, so the padding
    is black whether or not normalisation comes first (a zero would be mid-grey after it).
    """
    c = info.input_shape[0]
    low = info.bounds[0]
    if applies_normalization(config, info):
        mean = info.mean if len(info.mean) == c else info.mean * c  # type: ignore[operator, arg-type]
        std = info.std if len(info.std) == c else info.std * c  # type: ignore[operator, arg-type]
        return tuple((low - m) / s for m, s in zip(mean, std))
    return (low,) * c


def build_model(model: Model, info: DatasetInfo) -> nn.Module:
    """A fresh network for ``info``, behind the dataset's normalisation when configured."""
    net = model.build(info)
    if applies_normalization(model.config, info):
        return NormalizedModel(Normalize(info.mean, info.std), net)  # type: ignore[arg-type]
    return net


def _data_identity(dataset: Dataset) -> dict[str, Any]:
    """The dataset config values that select the training data (not where its files are)."""
    cfg = dataset.config
    return cfg.identity() if isinstance(cfg, DatasetConfig) else cfg.model_dump(mode="json")


def training_key(
    dataset: Dataset,
    model: Model,
    train: TrainConfig,
    device: torch.device | str,
    extra: Any = None,
) -> str:
    """Hash of every input that affects the trained weights."""
    payload = {
        "format": TRAIN_FORMAT,
        "dataset": [dataset.name, _data_identity(dataset), dataset.fingerprint("train")],
        "model": [model.name, model.config.model_dump(mode="json")],
        "train": train.model_dump(mode="json"),
        "device": torch.device(device).type,
        "extra": extra,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def checkpoint_path(
    dataset: Dataset,
    model: Model,
    train: TrainConfig,
    device: torch.device | str,
    cache: str | os.PathLike[str] | None = None,
    extra: Any = None,
) -> Path:
    """Where the checkpoint of this training lives in the cache."""
    return _checkpoint_file(cache, model.name, training_key(dataset, model, train, device, extra))


def _checkpoint_file(cache: str | os.PathLike[str] | None, model_name: str, key: str) -> Path:
    return cache_dir(cache or None) / "models" / f"{model_name}-{key}.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def cache_lock(path: Path | None) -> Iterator[None]:
    """Hold the cache entry ``path`` (an exclusive ``flock`` on ``path.lock`` beside it) while it
    is trained or fitted, so that another process needing it waits and then loads it instead
    of training it again. The kernel drops the lock of a process that dies. Without ``path``,
    ``fcntl`` (not POSIX) or a writable cache folder (a read-only cache is only read), nothing
    is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None  # type: ignore[assignment]
    fd = None
    if path is not None and fcntl is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def load_checkpoint(path: Path, net: nn.Module) -> dict[str, Any]:
    """Load a cached checkpoint into ``net`` (``weights_only=True``); returns the stored blob.
    A damaged file is a one-line ``DataError`` naming it, not a traceback."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(blob["state_dict"])
    except Exception as exc:  # noqa: BLE001 - a damaged cache file must not stop the run
        raise DataError(f"cached checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); delete it to retrain") from None
    return blob


def cross_entropy_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


@dataclass
class TrainResult:
    """A trained model (in eval mode) and how it was obtained."""

    model: nn.Module
    key: str
    cached: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    path: Path | None = None
    #: networks trained together with this one (``advx.runtime.joint``), itself included; ``seconds``
    #: is then its share of the group's time
    group_size: int = 1


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit(
    net: nn.Module,
    train_data: torch.utils.data.Dataset,
    cfg: TrainConfig,
    device: torch.device,
    loss_fn: LossFn = cross_entropy_loss,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``net`` in place; returns per-epoch mean loss and seconds."""
    net.to(device)
    opt = _make_optimizer(net.parameters(), cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        net.train()
        total, loss_sum, t0 = 0, 0.0, time.perf_counter()
        for xb, yb in iter_batches(train_data, cfg.batch_size, shuffle=True, generator=gen):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net, xb, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(yb)
            total += len(yb)
        net.eval()
        stats = {"epoch": epoch + 1, "loss": float(loss_sum) / max(total, 1), "seconds": time.perf_counter() - t0}
        history.append(stats)
        if on_epoch is not None:
            on_epoch(epoch + 1, stats)
    opt.zero_grad(set_to_none=True)  # a trained model carries no stale gradients (memory)
    net.eval()
    return history


def train_model(
    dataset: Dataset,
    model: Model,
    train: TrainConfig | dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    cache: str | os.PathLike[str] | None | Literal[False] = None,
    loss_fn: LossFn = cross_entropy_loss,
    extra_key: Any = None,
    train_data: torch.utils.data.Dataset | Callable[[], torch.utils.data.Dataset] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` (or load it from the cache) and return it in eval mode.

    ``cache=False`` disables the cache; ``loss_fn``/``extra_key`` let a defense change the
    training objective (its ``extra_key`` must identify the change, it enters the key);
    ``train_data`` (a dataset, or a function returning one, called only when the cache
    has no checkpoint) replaces the dataset's training split (e.g. a bootstrap replicate, which
    must then be described by ``extra_key`` too).
    """
    cfg = train if isinstance(train, TrainConfig) else TrainConfig.model_validate(train or {})
    device = torch.device(device)
    info = dataset.info()
    key = training_key(dataset, model, cfg, device, extra_key)
    path = None if cache is False else _checkpoint_file(cache, model.name, key)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    net = build_model(model, info)
    with cache_lock(path):  # another process training this key: wait for it, then load
        if path is not None and path.exists():
            blob = load_checkpoint(path, net)
            net.to(device).eval()
            return TrainResult(net, key, True, time.perf_counter() - t0, blob.get("history", []), path)
        if callable(train_data):  # a loader: the split is read only when training is needed
            train_data = train_data()
        data = train_data if train_data is not None else load_split(dataset, "train")
        history = fit(net, data, cfg, device, loss_fn, on_epoch)
        if path is not None:
            state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            atomic_save({"state_dict": state, "history": history, "key": key}, path)
    net.eval()
    return TrainResult(net, key, False, time.perf_counter() - t0, history, path)


@torch.no_grad()
def accuracy(net: nn.Module, data: torch.utils.data.Dataset, device: torch.device | str = "cpu", batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on ``data``."""
    net.eval()
    correct = total = 0
    for xb, yb in iter_batches(data, batch_size):
        pred = net(xb.to(device)).argmax(1).cpu()
        correct += int((pred == yb).sum())
        total += len(yb)
    return correct / max(total, 1)
