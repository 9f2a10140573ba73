"""``DefenseContext``: everything a ``Defense.apply`` may use, and nothing else.

A defense receives the trained base model and this context. Through it a defense reads
the data (the dataset plugin, its ``DatasetInfo`` with the valid input ``bounds``, the
training split), knows how the base model was made (the model plugin with its config, the
training config), trains further models through the kernel's training cache (another
loss, other data: adversarial training, distillation, bagging), fits and caches other
state (a detector's statistics), creates other plugins (an attack to train against) and
applies other defenses (composition: an ensemble of adversarially trained members).

Everything trained or fitted through the context is cached on disk under a key that
includes what the defense says changed (``extra_key``), and its time is recorded with the
model it produced, never counted as the time of the cell that happened to need it first.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from advx.contract.errors import AdvxError, ConfigError, DataError
from advx.contract.interfaces import Dataset, DatasetInfo, Defense, Model, Plugin
from advx.runtime.joint import TrainRequest, train_models_together
from advx.runtime.training import LossFn, TrainConfig, TrainResult, atomic_save, build_model, cache_dir, cache_lock, train_model

if TYPE_CHECKING:
    from advx.contract.registry import Registry

#: ``on_train(description, result)``: called after each training or fitting through the context.
TrainHook = Callable[[str, "TrainRecord"], None]


class TrainRecord:
    """What one training or fitting run cost: its key, seconds, and whether it came from the cache."""

    def __init__(self, kind: str, key: str, seconds: float, cached: bool, description: str) -> None:
        self.kind = kind
        self.key = key
        self.seconds = seconds
        self.cached = cached
        self.description = description

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "seconds": self.seconds, "cached": self.cached, "description": self.description}


class DefenseContext:
    """What a defense may use in ``apply(model, ctx)``.

    Attributes:
        dataset: the dataset plugin of the cell (``ctx.dataset.config`` is its validated config).
        info: the dataset's ``DatasetInfo``: input shape, number of classes, valid input
            ``bounds`` (pixel units, what attacks and budgets use), mean/std, class names.
        model: the model plugin of the cell; ``ctx.model.build(ctx.info)`` or
            ``ctx.build_model()`` gives a fresh, untrained network of the same architecture.
        train_config: the ``TrainConfig`` the base model was trained with (epochs, batch
            size, optimiser, learning rate, seed); defenses train their models with it
            unless they have a reason not to.
        device: the ``torch.device`` the cell runs on.
        registry: the plugin registry of the run (to create other plugins).
        cache_dir: where trained checkpoints and fitted state are cached (``None``: the
            default, ``$ADVX_CACHE_DIR`` or the user cache directory).
        on_train, on_epoch: the kernel's recording hooks (training time and progress); a
            context derived for a part of a defense passes them on (``derive``).
    """

    def __init__(
        self,
        *,
        dataset: Dataset,
        model: Model,
        train_config: TrainConfig,
        device: torch.device,
        registry: Registry,
        cache_dir: str | None = None,
        train_split: Callable[[], torch.utils.data.Dataset] | None = None,
        on_train: TrainHook | None = None,
        on_epoch: Callable[[str, int, int, float], None] | None = None,
    ) -> None:
        self.dataset = dataset
        self.info: DatasetInfo = dataset.info()
        self.model = model
        self.train_config = train_config
        self.device = torch.device(device)
        self.registry = registry
        self.cache_dir = cache_dir
        self._train_split = train_split
        self._train_data: torch.utils.data.Dataset | None = None
        self.on_train = on_train
        self.on_epoch = on_epoch

    # -- data ---------------------------------------------------------------------------------

    @property
    def train_data(self) -> torch.utils.data.Dataset:
        """The dataset's training split (loaded once, shared with the kernel's own training)."""
        if self._train_data is None:
            if self._train_split is not None:
                self._train_data = self._train_split()
            else:
                from advx.runtime.data import load_split

                self._train_data = load_split(self.dataset, "train")
        return self._train_data

    # -- models -------------------------------------------------------------------------------

    def build_model(self, model: Model | None = None) -> nn.Module:
        """A fresh, untrained network of ``model`` (default: the cell's), normalisation included."""
        return build_model(model or self.model, self.info)

    def train(
        self,
        model: Model | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
        loss_fn: LossFn | None = None,
        extra_key: Any = None,
        train_data: torch.utils.data.Dataset | None = None,
        description: str | None = None,
    ) -> nn.Module:
        """Train a model through the cache and return it in eval mode on ``ctx.device``.

        ``model`` defaults to the cell's model plugin, ``train`` to ``ctx.train_config`` (a
        partial mapping overrides only the fields it names).
        ``loss_fn(net, x, y) -> loss`` replaces cross-entropy and ``train_data`` the
        training split; either change must be described by ``extra_key`` (any JSON-able
        value), which enters the cache key, or two different trainings would share a
        checkpoint.
        """
        if (loss_fn is not None or train_data is not None) and extra_key is None:
            raise ConfigError("DefenseContext.train: a custom loss_fn or train_data needs an extra_key describing it")
        req = self.train_request(model, train, extra_key, train_data, description)
        kwargs: dict[str, Any] = {} if loss_fn is None else {"loss_fn": loss_fn}
        res: TrainResult = train_model(
            self.dataset,
            req.model,
            req.train,
            self.device,
            cache=self.cache_dir,
            extra_key=req.extra_key,
            train_data=req.train_data,
            on_epoch=None if self.on_epoch is None else (lambda e, s: self.on_epoch(req.description, e, req.train.epochs, s["loss"])),  # type: ignore[misc]
            **kwargs,
        )
        self._record(TrainRecord("model", res.key, res.seconds, res.cached, req.description))
        return res.model.to(self.device).eval()

    def train_request(
        self,
        model: Model | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
        extra_key: Any = None,
        train_data: torch.utils.data.Dataset | None = None,
        description: str | None = None,
    ) -> TrainRequest:
        """What ``train`` would train, with the same defaults, as a ``TrainRequest`` for
        ``train_together`` (cross-entropy only: a custom loss is trained with ``train``)."""
        if train_data is not None and extra_key is None:
            raise ConfigError("DefenseContext.train_request: train_data needs an extra_key describing it")
        plugin = model or self.model
        # a partial table changes only what it names: {"seed": 5} is the cell's training with seed 5
        cfg = train if isinstance(train, TrainConfig) else TrainConfig.model_validate({**self.train_config.model_dump(), **dict(train or {})})
        data = train_data if train_data is not None else (lambda: self.train_data)
        return TrainRequest(plugin, cfg, data, extra_key, description or f"{plugin.name} for a defense")

    def train_together(self, requests: Sequence[TrainRequest]) -> list[nn.Module]:
        """Train several networks through the cache, those of one architecture and training
        (apart from the seed) together as one stacked network (``advx.runtime.joint``), and return them
        in eval mode on ``ctx.device``, in order. Each network is recorded with its share of
        its group's time."""
        hook = None if self.on_epoch is None else (lambda what, e, n, s: self.on_epoch(what, e, n, s["loss"]))  # type: ignore[misc]
        results = train_models_together(self.dataset, requests, self.device, self.cache_dir, hook)
        for req, res in zip(requests, results):
            what = req.description if res.group_size == 1 else f"{req.description} (one of {res.group_size} trained together: its share of the time)"
            self._record(TrainRecord("model", res.key, res.seconds, res.cached, what))
        return [res.model.to(self.device).eval() for res in results]

    def artifact(self, name: str, extra_key: Any, compute: Callable[[], Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Fitted state (tensors) computed once and cached on disk, e.g. a detector's mixtures.

        ``name`` and ``extra_key`` identify it together with the dataset, the model and
        its training; ``compute()`` runs only when the cache has no entry. Stored with
        ``torch.save`` and loaded with ``weights_only=True``: tensors only.
        """
        key = _digest(
            {
                "name": name,
                "extra": extra_key,
                "dataset": [self.dataset.name, self.dataset.config.model_dump(mode="json")],
                "model": [self.model.name, self.model.config.model_dump(mode="json")],
                "train": self.train_config.model_dump(mode="json"),
                "device": self.device.type,
            }
        )
        path = cache_dir(self.cache_dir) / "artifacts" / f"{name}-{key}.pt"
        t0 = time.perf_counter()
        with cache_lock(path):  # fitted once, whichever process needs it first
            if path.exists():
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as exc:  # noqa: BLE001 - a damaged cache file must not stop the run
                    raise DataError(f"cached state {path} is unreadable ({type(exc).__name__}: {exc}); delete it to refit") from None
                self._record(TrainRecord("artifact", key, time.perf_counter() - t0, True, name))
                return dict(state)
            state = dict(compute())
            if not all(isinstance(v, Tensor) for v in state.values()):
                raise AdvxError(f"artifact {name!r}: compute() must return a mapping of tensors")
            state = {k: v.detach().cpu() for k, v in state.items()}
            atomic_save(state, path)
        self._record(TrainRecord("artifact", key, time.perf_counter() - t0, False, name))
        return state

    def derive(
        self,
        *,
        model: Model | None = None,
        train_config: TrainConfig | None = None,
        train_split: Callable[[], torch.utils.data.Dataset] | None = None,
    ) -> DefenseContext:
        """A context for a part of this defense (an ensemble member): the same dataset, device,
        cache and recording hooks, with another model, training config or training split.

        A changed training split must still be described by the ``extra_key`` of what is
        trained on it (a subclass may add it to every key, as the ensemble's members do).
        """
        return DefenseContext(**self.inherited(model or self.model, train_config or self.train_config, train_split))

    def inherited(
        self, model: Model, train_config: TrainConfig, train_split: Callable[[], torch.utils.data.Dataset] | None
    ) -> dict[str, Any]:
        """The constructor arguments of a context for a part of this defense: the same
        dataset, device, registry, cache and recording hooks (so the part's training time is
        reported with the cell's), the given model and training config, and the given
        training split or this context's. ``derive`` and context subclasses (the ensemble's
        members) build from it, so what a part inherits is said once."""
        return {
            "dataset": self.dataset,
            "model": model,
            "train_config": train_config,
            "device": self.device,
            "registry": self.registry,
            "cache_dir": self.cache_dir,
            "train_split": train_split or (lambda: self.train_data),
            "on_train": self.on_train,
            "on_epoch": self.on_epoch,
        }

    # -- other plugins ------------------------------------------------------------------------

    def create(self, kind: str, name: str, params: Mapping[str, Any] | None = None) -> Plugin:
        """A plugin of ``kind`` (attack, model, ...) with validated ``params`` (e.g. the attack adversarial training uses)."""
        return self.registry.create(kind, name, dict(params or {}))  # type: ignore[arg-type]

    def defense(self, name: str | Mapping[str, Any], model: nn.Module, **params: Any) -> nn.Module:
        """Apply another defense to ``model`` (composition), given by name and params or as a table ``{name = ...}``."""
        if isinstance(name, Mapping):
            table = dict(name)
            if "name" not in table:
                raise ConfigError("a nested defense table needs a 'name'")
            name = str(table.pop("name"))
            params = {**table, **params}
        inner: Defense = self.create("defense", name, params)  # type: ignore[assignment]
        out = inner.apply(model, self)
        if not isinstance(out, nn.Module):
            raise AdvxError(f'defense "{name}" returned {type(out).__name__}, not an nn.Module')
        return out

    def _record(self, rec: TrainRecord) -> None:
        if self.on_train is not None:
            self.on_train(rec.description, rec)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]
