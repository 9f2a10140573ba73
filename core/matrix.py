"""The matrix engine: datasets x models x defenses x threat models x attacks, cell by cell.

``run_matrix(spec)`` expands the spec (validating every plugin config first), skips the
cells the results store already holds, and hands the rest to an executor. Cells are
self-describing (plugin names and configs, no live objects), so an executor may run them
anywhere: the default runs them in this process, one after another; executors for several
GPUs or a cluster implement the same ``Executor.map``. Each finished cell is committed to
the store at once; a cell that raises is recorded as failed with its error and the matrix
goes on; an interrupt keeps every finished cell.

Work shared between cells is done once per process: datasets are loaded once, each model
is trained once (and cached on disk, see ``training``), each defense is applied once, and
adversarial examples crafted on a source model are reused for every target that shares
that source (the transfer and undefended threat models).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._version import __version__
from .data import load_split, subset, take
from pydantic import ValidationError

from .errors import AdvxError, ConfigError, format_validation_error
from .evaluate import (
    BUCKETS,
    Crafted,
    breakdown_by_class,
    breakdown_by_confidence,
    craft,
    preflight,
    score,
    summarize_with_cost,
)
from .context import DefenseContext
from .interfaces import Dataset, DatasetInfo, Defense, Model
from .registry import Registry
from .results import ResultStore
from .spec import MatrixOptions, MatrixSpec, PluginRef, expand
from .training import TrainConfig, train_model

Event = Callable[[str, "Cell | None", dict[str, Any]], None]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ThreatRef:
    """A resolved threat model."""

    name: str
    source: PluginRef | None = None
    seed: int | None = None
    defended: bool = False

    def key(self) -> Any:
        return [self.name, self.source.key() if self.source else None, self.seed, self.defended]

    def describe(self) -> str:
        if self.name == "transfer" and self.source is not None:
            return f"transfer<-{self.source.label or self.source.describe()}"
        if self.name == "gray-box" and self.seed is not None:
            return f"gray-box(seed={self.seed})"
        return self.name


@dataclass(frozen=True)
class Cell:
    """One evaluation: an attack on a (dataset, model, defense) under a threat model."""

    dataset: PluginRef
    model: PluginRef
    defense: PluginRef
    threat: ThreatRef
    attack: PluginRef
    options: MatrixOptions

    @property
    def key(self) -> str:
        o = self.options
        return _hash(
            {
                "dataset": self.dataset.key(),
                "model": self.model.key(),
                "defense": self.defense.key(),
                "threat": self.threat.key(),
                "attack": self.attack.key(),
                "samples": o.samples,
                "seed": o.seed,
                "sample_seed": o.sample_seed,
                "bucket_samples": o.bucket_samples,
            }
        )

    def title(self) -> str:
        return " / ".join(
            (self.dataset.describe(), self.model.describe(), self.defense.describe(), self.threat.describe(), self.attack.describe())
        )


def plan(spec: MatrixSpec, registry: Registry) -> list[Cell]:
    """All cells of ``spec``, every plugin config validated (one-line ``ConfigError`` otherwise)."""
    datasets = expand(spec.datasets, "dataset", registry, "datasets")
    models = expand(spec.models, "model", registry, "models")
    defenses = expand(spec.defenses, "defense", registry, "defenses")
    attacks = expand(spec.attacks, "attack", registry, "attacks")
    threats = []
    for i, t in enumerate(spec.threats):
        source = None
        if t.name == "transfer":
            if t.source is None:
                raise ConfigError(f'threats[{i}] "transfer": source: a substitute model table is required, e.g. source = {{ name = "mlp" }}')
            (source,) = expand([t.source], "model", registry, f"threats[{i}].source")[:1]
        elif t.source is not None:
            raise ConfigError(f'threats[{i}] "{t.name}": source: only the transfer threat model takes a source')
        threats.append(ThreatRef(t.name, source, t.seed, t.defended))
    return [
        Cell(d, m, df, t, a, spec.matrix)
        for d in datasets
        for m in models
        for df in defenses
        for t in threats
        for a in attacks
    ]


@dataclass
class Environment:
    """Per-process state of a matrix run: plugins, loaded data, trained models, crafted examples."""

    registry: Registry
    device: torch.device
    cache_dir: str | None = None
    on_event: Event | None = None
    _datasets: dict[str, Dataset] = field(default_factory=dict)
    _test: dict[str, Any] = field(default_factory=dict)
    _models: dict[str, nn.Module] = field(default_factory=dict)
    _crafted: OrderedDict[str, Crafted] = field(default_factory=OrderedDict)
    crafted_cache_bytes: int = int(os.environ.get("ADVX_CRAFTED_CACHE_MB", "1024")) * 2**20

    def emit(self, event: str, cell: Cell | None, **payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, cell, payload)

    def dataset(self, ref: PluginRef) -> Dataset:
        k = _hash(ref.key())
        if k not in self._datasets:
            self._datasets[k] = self.registry.create("dataset", ref.name, ref.config)  # type: ignore[assignment]
        return self._datasets[k]

    def test_split(self, ref: PluginRef):
        k = _hash(ref.key())
        if k not in self._test:
            self._test[k] = load_split(self.dataset(ref), "test")
        return self._test[k]

    def base_model(self, ds: PluginRef, model: PluginRef, seed: int | None = None, cell: Cell | None = None) -> nn.Module:
        train = dict(model.train or {})
        if seed is not None:
            train["seed"] = seed
        k = _hash(["base", ds.key(), model.name, model.config, train])
        if k not in self._models:
            plugin: Model = self.registry.create("model", model.name, model.config)  # type: ignore[assignment]
            what = model.describe() + (f" (seed {seed})" if seed is not None else "")
            epochs = TrainConfig.model_validate(train).epochs
            self.emit("train_start", cell, model=what, epochs=epochs)
            res = train_model(
                self.dataset(ds),
                plugin,
                train,
                self.device,
                cache=self.cache_dir,
                on_epoch=lambda e, s: self.emit("train_epoch", cell, model=what, epoch=e, epochs=epochs, loss=s["loss"]),
            )
            self.emit("train_done", cell, model=what, cached=res.cached, seconds=res.seconds)
            self._models[k] = res.model.to(self.device).eval()
        return self._models[k]

    def defended_model(
        self, ds: PluginRef, model: PluginRef, defense: PluginRef, seed: int | None = None, cell: Cell | None = None
    ) -> nn.Module:
        k = _hash(["defended", ds.key(), model.key(), defense.key(), seed])
        if k not in self._models:
            base = self.base_model(ds, model, seed, cell)
            plugin: Defense = self.registry.create("defense", defense.name, defense.config)  # type: ignore[assignment]
            train = dict(model.train or {})
            if seed is not None:
                train["seed"] = seed
            ref = PluginRef("model", model.name, model.config, train, model.label, model.params)
            ctx = DefenseContext(
                dataset=self.dataset(ds),
                model=self.registry.create("model", ref.name, ref.config),  # type: ignore[arg-type]
                train_config=TrainConfig.model_validate(ref.train or {}),
                device=self.device,
                registry=self.registry,
                cache_dir=self.cache_dir,
            )
            defended = plugin.apply(base, ctx)
            if not isinstance(defended, nn.Module):
                raise AdvxError(f'defense "{defense.name}" returned {type(defended).__name__}, not an nn.Module')
            self._models[k] = defended.to(self.device).eval()
        return self._models[k]

    def source_model(self, cell: Cell, target: nn.Module) -> tuple[nn.Module, Any]:
        """The model the attacker crafts on, and a key identifying it."""
        t = cell.threat
        if t.name == "white-box":
            return target, ["defended", cell.dataset.key(), cell.model.key(), cell.defense.key()]
        if t.name == "undefended":
            return self.base_model(cell.dataset, cell.model, cell=cell), ["base", cell.dataset.key(), cell.model.key()]
        if t.name == "transfer":
            assert t.source is not None
            if t.defended:
                m = self.defended_model(cell.dataset, t.source, cell.defense, cell=cell)
                return m, ["defended", cell.dataset.key(), t.source.key(), cell.defense.key()]
            return self.base_model(cell.dataset, t.source, cell=cell), ["base", cell.dataset.key(), t.source.key()]
        # gray-box: an independently trained copy of the same architecture and defense
        seed = t.seed if t.seed is not None else int((cell.model.train or {}).get("seed", 0)) + 1
        m = self.defended_model(cell.dataset, cell.model, cell.defense, seed=seed, cell=cell)
        return m, ["defended", cell.dataset.key(), cell.model.key(), cell.defense.key(), seed]

    def eval_set(self, cell: Cell, target: nn.Module, info: DatasetInfo) -> tuple[Tensor, Tensor, Tensor]:
        """The evaluation examples ``(x, y, index)`` of a cell."""
        o = cell.options
        test = self.test_split(cell.dataset)
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
        picked = []
        for _, lo, hi in BUCKETS:
            picked.append(((conf >= lo) & (conf < hi)).nonzero().flatten()[: o.bucket_samples])
        idx = torch.cat(picked).sort().values
        return x_all[idx], y_all[idx], idx

    def crafted(self, cell: Cell, source: nn.Module, source_key: Any, x: Tensor, y: Tensor, idx: Tensor, info: DatasetInfo) -> Crafted:
        o = cell.options
        k = _hash([source_key, cell.attack.key(), idx.tolist(), o.seed])
        if k in self._crafted:
            self._crafted.move_to_end(k)
            return self._crafted[k]
        attack = self.registry.create("attack", cell.attack.name, cell.attack.config)
        torch.manual_seed(o.seed)
        crafted = craft(
            source,
            attack,  # type: ignore[arg-type]
            x,
            y,
            info.bounds,
            info.num_classes,
            self.device,
            o.batch_size,
            o.seed,
            on_batch=lambda done, total: self.emit("batch", cell, done=done, total=total),
        )
        # Only examples crafted on a model other than the evaluated one can serve another
        # cell (transfer, undefended, gray-box); they are kept in a byte-bounded LRU.
        if cell.threat.name != "white-box":
            self._crafted[k] = crafted
            while len(self._crafted) > 1 and sum(
                c.x_adv.numel() * c.x_adv.element_size() for c in self._crafted.values()
            ) > self.crafted_cache_bytes:
                self._crafted.popitem(last=False)
        return crafted


def execute_cell(cell: Cell, env: Environment) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
    """Run one cell; return its result row and per-sample records (never raises for cell errors)."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "cell_key": cell.key,
        "dataset": cell.dataset.describe(),
        "model": cell.model.describe(),
        "defense": cell.defense.describe(),
        "threat": cell.threat.describe(),
        "attack": cell.attack.describe(),
        "dataset_config": {"name": cell.dataset.name, **cell.dataset.config},
        "model_config": {"name": cell.model.name, **cell.model.config},
        "train_config": cell.model.train,
        "defense_config": {"name": cell.defense.name, **cell.defense.config},
        "threat_config": {
            "name": cell.threat.name,
            "source": {"name": cell.threat.source.name, **cell.threat.source.config, "train": cell.threat.source.train}
            if cell.threat.source
            else None,
            "seed": cell.threat.seed,
            "defended": cell.threat.defended,
        },
        "attack_config": {"name": cell.attack.name, **cell.attack.config},
        "advx_version": __version__,
        "torch_version": torch.__version__,
        "device": str(env.device) + (f" ({torch.cuda.get_device_name(env.device)})" if env.device.type == "cuda" else ""),
        "seed": cell.options.seed,
        "started": started,
    }
    try:
        ds = env.dataset(cell.dataset)
        info = ds.info()
        target = env.defended_model(cell.dataset, cell.model, cell.defense, cell=cell)
        x, y, idx = env.eval_set(cell, target, info)
        checks = (x, info.bounds, info.num_classes, env.device, cell.options.batch_size)
        preflight(*checks, target)  # before a source model is trained for nothing
        source, source_key = env.source_model(cell, target)
        if source is not target:
            preflight(*checks, source)
        crafted = env.crafted(cell, source, source_key, x, y, idx, info)
        s = score(target, x, y, crafted, env.device, cell.options.batch_size, idx)
        row.update(summarize_with_cost(s, crafted))
        row["metrics"] = {
            "per_class": breakdown_by_class(s, info.num_classes),
            "per_confidence": breakdown_by_confidence(s),
            "crafted_on": cell.threat.describe(),
        }
        row["status"] = "done"
        samples: dict[str, Tensor] | None = {
            "idx": s["index"],
            "label": s["label"],
            "clean_pred": s["clean_pred"],
            "clean_conf": s["clean_conf"],
            "adv_pred": s["adv_pred"],
            "adv_conf": s["adv_conf"],
            "adv_top5": s["adv_top5"].long(),
            "target": s["target"],
            "linf": s["linf"],
            "l2": s["l2"],
            "clean_score": s["clean_score"],
            "adv_score": s["adv_score"],
        }
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the matrix goes on
        row["status"] = "failed"
        row["error"] = str(exc) if isinstance(exc, AdvxError) else f"{type(exc).__name__}: {exc}"
        row["metrics"] = {"traceback": traceback.format_exc(limit=8)}
        samples = None
    row["seconds"] = time.perf_counter() - t0
    row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return row, samples


class Executor(ABC):
    """Runs cells and yields ``(cell, row, samples)`` as each finishes, in any order."""

    @abstractmethod
    def map(
        self, cells: Sequence[Cell], registry: Registry, device: torch.device, cache_dir: str | None, on_event: Event | None
    ) -> Iterator[tuple[Cell, dict[str, Any], dict[str, Tensor] | None]]: ...


class InProcessExecutor(Executor):
    """The default: every cell in this process, in order, sharing one ``Environment``."""

    def map(self, cells, registry, device, cache_dir, on_event):
        env = Environment(registry, device, cache_dir, on_event)
        for cell in cells:
            env.emit("cell_start", cell)
            row, samples = execute_cell(cell, env)
            yield cell, row, samples


@dataclass
class MatrixResult:
    """What ``run_matrix`` did."""

    spec_name: str
    db: Path | None
    rows: list[dict[str, Any]]
    skipped: int
    failed: int

    @property
    def done(self) -> int:
        return sum(1 for r in self.rows if r.get("status") == "done")


def resolve_devices(spec_device: str) -> list[torch.device]:
    """``"cuda:0,cuda:1"`` / ``"cuda:all"`` / ``"cpu"`` -> checked devices."""
    out: list[torch.device] = []
    for part in spec_device.split(","):
        if part == "cuda:all":
            if not torch.cuda.is_available():
                raise ConfigError("device 'cuda:all': CUDA is not available on this machine (use --device cpu)")
            out += [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
        else:
            out.append(resolve_device(part))
    return out


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def run_matrix(
    spec: MatrixSpec | dict[str, Any] | str | Path,
    *,
    registry: Registry | None = None,
    store: ResultStore | str | Path | None = None,
    executor: Executor | None = None,
    on_event: Event | None = None,
    device: str | None = None,
    rerun: bool = False,
) -> MatrixResult:
    """Run every cell of ``spec`` not already in ``store``; commit each cell as it finishes.

    ``spec`` is a ``MatrixSpec``, a dict of the same shape, or a TOML file path. ``store``
    is a ``ResultStore`` or a path (default: none, results only returned). ``device``
    overrides the spec's. ``rerun`` recomputes finished cells.
    """
    if isinstance(spec, (str, Path)):
        spec = MatrixSpec.from_toml(spec)
    elif isinstance(spec, dict):
        spec = MatrixSpec.from_dict(spec)
    if device is not None:
        try:
            options = MatrixOptions.model_validate({**spec.matrix.model_dump(), "device": device})
        except ValidationError as exc:
            raise ConfigError(format_validation_error("--device", exc).replace("--device: device:", "matrix.device:")) from None
        spec = spec.model_copy(update={"matrix": options})
    registry = registry or Registry.discover()
    cells = plan(spec, registry)
    devices = resolve_devices(spec.matrix.device)
    dev = devices[0]
    own_store = False
    if store is not None and not isinstance(store, ResultStore):
        store = ResultStore(store)
        own_store = True
    done = store.done_keys() if (store is not None and not rerun) else set()
    todo = [c for c in cells if c.key not in done]
    skipped = len(cells) - len(todo)
    if on_event is not None:
        on_event("plan", None, {"cells": len(cells), "todo": len(todo), "skipped": skipped})
    spec_hash = spec.spec_hash()
    rows, failed = [], 0
    if executor is None:
        if len(devices) > 1:
            from .parallel import MultiDeviceExecutor

            executor = MultiDeviceExecutor(devices)
        else:
            executor = InProcessExecutor()
    try:
        for cell, row, samples in executor.map(todo, registry, dev, spec.matrix.cache_dir, on_event):
            row["spec_name"] = spec.matrix.name
            row["spec_hash"] = spec_hash
            if store is not None:
                store.record(row, samples)
            rows.append(row)
            if row["status"] == "failed":
                failed += 1
            if on_event is not None:
                on_event("cell_done" if row["status"] == "done" else "cell_failed", cell, {"row": row})
    finally:
        if own_store:
            store.close()  # type: ignore[union-attr]
    return MatrixResult(spec.matrix.name, store.path if store is not None else None, rows, skipped, failed)
