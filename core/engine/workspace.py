"""The workspace: per-process state shared by the cells of a run.

Work shared between cells is done once per process: each plugin is instantiated once per
validated config, each dataset split loaded once, each model trained once (and cached on
disk, see ``advx.runtime.training``), each defense applied once, and adversarial examples crafted
on a module that does not depend on the evaluated defense (a substitute, the undefended
model, a gray-box copy) are kept in a byte-bounded LRU and reused by every cell that
shares them. Every training and fitting is recorded (``trainings``), so its time is
reported with the model it produced and kept out of the cell that first needed it.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from advx.runtime.context import DefenseContext, TrainRecord
from advx.runtime.crafting import Crafted, CraftOptions, craft
from advx.runtime.data import load_split, subset, take
from advx.contract.errors import AdvxError
from advx.contract.interfaces import Attack, Dataset, DatasetInfo, Defense, Model, Plugin
from advx.analysis.metrics import BUCKETS
from advx.contract.registry import Registry
from advx.engine.spec import PluginRef
from advx.contract.threats import AttackView
from advx.runtime.training import build_model, train_model
from advx.engine.pipeline import Crafter
from advx.engine.plan import Cell, digest

#: ``on_event(event, cell, payload)``: progress events (see ``advx.run_matrix``)
Event = Callable[[str, "Cell | None", dict[str, Any]], None]


class Workspace:
    """Plugins, loaded data, trained and defended models and crafted examples of one process."""

    def __init__(
        self,
        registry: Registry,
        device: torch.device,
        cache_dir: str | None = None,
        on_event: Event | None = None,
        crafted_cache_bytes: int | None = None,
    ) -> None:
        self.registry = registry
        self.device = torch.device(device)
        self.cache_dir = cache_dir
        self.on_event = on_event
        self.crafted_cache_bytes = (
            crafted_cache_bytes
            if crafted_cache_bytes is not None
            else int(os.environ.get("ADVX_CRAFTED_CACHE_MB", "1024")) * 2**20
        )
        self.trainings: list[TrainRecord] = []
        self._plugins: dict[str, Plugin] = {}
        self._splits: dict[str, Any] = {}
        self._models: dict[str, nn.Module] = {}
        self._crafted: OrderedDict[str, Crafted] = OrderedDict()
        self._cell: Cell | None = None  # the cell being executed (for events)
        self._eval: tuple[str, tuple[Tensor, Tensor, Tensor]] | None = None  # the last evaluation set

    def emit(self, event: str, cell: Cell | None, **payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, cell, payload)

    # -- plugins and data -----------------------------------------------------------------------

    def plugin(self, ref: PluginRef) -> Plugin:
        """The plugin instance of ``ref`` (created once per process from its validated config)."""
        k = digest([ref.kind, ref.name, ref.config_dict()])
        if k not in self._plugins:
            cls = self.registry.get(ref.kind, ref.name)  # type: ignore[arg-type]
            self._plugins[k] = cls(ref.config)
        return self._plugins[k]

    def dataset(self, ref: PluginRef) -> Dataset:
        return self.plugin(ref)  # type: ignore[return-value]

    def split(self, ref: PluginRef, name: str) -> Any:
        k = digest([ref.key(), name])
        if k not in self._splits:
            self._splits[k] = load_split(self.dataset(ref), name)  # type: ignore[arg-type]
        return self._splits[k]

    # -- models ---------------------------------------------------------------------------------

    def record_training(self, rec: TrainRecord) -> None:
        self.trainings.append(rec)

    def base_model(self, ds: PluginRef, model: PluginRef, cell: Cell | None = None) -> nn.Module:
        """The model of ``model`` trained on ``ds`` with its train config (from the cache when there);
        a pretrained model (``Model.pretrained``) is built with its own weights and not trained."""
        k = digest(["base", ds.key(), model.key()])
        if k not in self._models:
            plugin: Model = self.plugin(model)  # type: ignore[assignment]
            dataset = self.dataset(ds)
            train = model.train
            assert train is not None
            if plugin.pretrained:  # arrives trained: built (its weights read), never trained over
                t0 = time.perf_counter()
                torch.manual_seed(train.seed)  # whatever the build initialises before its weights are read
                net = build_model(plugin, dataset.info())
                what = f"{model.describe()} (loaded, not trained)"
                self.record_training(TrainRecord("model", digest(["loaded", k]), time.perf_counter() - t0, True, what))
                self._models[k] = net.to(self.device).eval()
                return self._models[k]
            what = model.describe() + (f" (seed {train.seed})" if train.seed else "")
            self.emit("train_start", cell, model=what, epochs=train.epochs)
            res = train_model(
                dataset,
                plugin,
                train,
                self.device,
                cache=self.cache_dir,
                train_data=lambda: self.split(ds, "train"),
                on_epoch=lambda e, s: self.emit("train_epoch", cell, model=what, epoch=e, epochs=train.epochs, loss=s["loss"]),
            )
            self.emit("train_done", cell, model=what, cached=res.cached, seconds=res.seconds)
            self.record_training(TrainRecord("model", res.key, res.seconds, res.cached, what))
            self._models[k] = res.model.to(self.device).eval()
        return self._models[k]

    def defense_context(self, ds: PluginRef, model: PluginRef, cell: Cell | None = None) -> DefenseContext:
        assert model.train is not None

        def on_epoch(what: str, epoch: int, epochs: int, loss: float) -> None:
            if epoch == 1:
                self.emit("train_start", cell, model=what, epochs=epochs)
            self.emit("train_epoch", cell, model=what, epoch=epoch, epochs=epochs, loss=loss)

        def on_train(what: str, rec: TrainRecord) -> None:
            self.record_training(rec)
            self.emit("train_done", cell, model=what, cached=rec.cached, seconds=rec.seconds)

        return DefenseContext(
            dataset=self.dataset(ds),
            model=self.plugin(model),  # type: ignore[arg-type]
            train_config=model.train,
            device=self.device,
            registry=self.registry,
            cache_dir=self.cache_dir,
            train_split=lambda: self.split(ds, "train"),
            on_train=on_train,
            on_epoch=on_epoch,
        )

    def defended_model(
        self, ds: PluginRef, model: PluginRef, defense: PluginRef, seed: int | None = None, cell: Cell | None = None
    ) -> nn.Module:
        """``defense`` applied to the base model (trained with ``seed`` when given: a gray-box copy)."""
        if seed is not None:
            model = model.with_seed(seed)
        k = digest(["defended", ds.key(), model.key(), defense.key()])
        if k not in self._models:
            base = self.base_model(ds, model, cell)
            plugin: Defense = self.plugin(defense)  # type: ignore[assignment]
            defended = plugin.apply(base, self.defense_context(ds, model, cell))
            if not isinstance(defended, nn.Module):
                raise AdvxError(f'defense "{defense.name}" returned {type(defended).__name__}, not an nn.Module')
            defended = defended.to(self.device).eval()
            if cell is not None and cell.options.channels_last:
                defended = defended.to(memory_format=torch.channels_last)
            self._models[k] = defended
        return self._models[k]

    # -- evaluation examples and crafting -------------------------------------------------------

    def eval_set(self, cell: Cell, target: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """The evaluation examples ``(x, y, index)`` of a cell; the last one is kept, for the
        next shard of the same cell (``bucket_samples`` selects them with a pass of the model
        over the test split: once per cell, not per shard)."""
        k = digest([cell.dataset.key(), cell.examples(), id(target) if cell.options.bucket_samples is not None else None])
        if self._eval is None or self._eval[0] != k:
            self._eval = (k, self._eval_set(cell, target))
        return self._eval[1]

    def _eval_set(self, cell: Cell, target: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        o = cell.options
        test = self.split(cell.dataset, "test")
        if o.bucket_samples is None:
            total = len(test)
            n = min(o.samples, total)
            if o.sample_seed is None:
                idx = torch.arange(n)
            else:
                idx = torch.randperm(total, generator=torch.Generator().manual_seed(o.sample_seed))[:n].sort().values
            x, y = take(subset(test, idx), n)
            return x, y, idx
        # seed 001: up to bucket_samples examples per clean-confidence bucket of the evaluated model
        x_all, y_all = take(test, len(test))
        confs = []
        with torch.no_grad():
            for s in range(0, len(x_all), o.batch_size):
                confs.append(target(x_all[s : s + o.batch_size].to(self.device)).float().softmax(1).amax(1).cpu())
        conf = torch.cat(confs)
        picked = [((conf >= lo) & (conf < hi)).nonzero().flatten()[: o.bucket_samples] for _, lo, hi in BUCKETS]
        idx = torch.cat(picked).sort().values
        return x_all[idx], y_all[idx], idx

    def craft_options(self, cell: Cell, info: DatasetInfo) -> CraftOptions:
        """How the attack of ``cell`` is crafted: its matrix options and threat model, with
        progress reported as ``batch`` events."""
        o = cell.options
        return CraftOptions(
            info.bounds,
            info.num_classes,
            self.device,
            o.batch_size,
            o.seed,
            on_batch=lambda done, total: self.emit("batch", cell, done=done, total=total),
            bpda=cell.threat.config.bpda,
            check_silent=o.diagnostics,
            min_batch_size=o.min_batch_size,
            amp=o.amp,
            channels_last=o.channels_last,
            surrogate=cell.threat.surrogate,
        )

    def crafter(self, cell: Cell, view: AttackView, idx: Tensor) -> Crafter:
        """The ``Crafter`` of ``cell`` (see ``advx.engine.pipeline``): examples crafted on a reusable
        view are kept and reused by every cell with the same view, attack and examples."""
        o = cell.options

        def run(module: nn.Module, attack: Attack, x: Tensor, y: Tensor, options: CraftOptions) -> tuple[Crafted, bool]:
            k = digest([view.key, cell.attack.key(), idx.tolist(), o.seed, cell.threat.config.bpda, cell.threat.surrogate])
            if view.reusable and k in self._crafted:
                self._crafted.move_to_end(k)
                return self._crafted[k], True
            if o.compile:
                ck = digest(["compiled", id(module)])
                if ck not in self._models:
                    self._models[ck] = torch.compile(module)  # type: ignore[assignment]
                module = self._models[ck]
            crafted = craft(module, attack, x, y, options, idx)
            crafted.origin = cell.key
            if view.reusable:
                self._crafted[k] = crafted
                while len(self._crafted) > 1 and sum(
                    c.x_adv.numel() * c.x_adv.element_size() for c in self._crafted.values()
                ) > self.crafted_cache_bytes:
                    self._crafted.popitem(last=False)
            return crafted, False

        return run
