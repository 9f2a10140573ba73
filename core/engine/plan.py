"""Planning: a ``MatrixSpec`` becomes the list of ``Cell``s it defines.

Every plugin config, training config and threat-model config is validated here, strictly
(TOML types are kept: ``eps = "0.1"`` is an error), and kept as pydantic objects in the
cells until execution. Everything that can be known from the spec is checked before any
model loads, and every error of the spec is reported together in one line, each naming
its table and field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from advx.analysis.metrics import BUCKETS
from advx.contract.errors import AdvxError, ConfigError
from advx.contract.interfaces import Dataset
from advx.contract.registry import Registry
from advx.engine.spec import MatrixOptions, MatrixSpec, ModelTable, PluginRef, expand, sweep_indexed, validate_strict
from advx.contract.threats import ThreatModel
from advx.store.schema import shard_key


def digest(obj: Any) -> str:
    """A short, stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass(frozen=True, eq=False)
class Cell:
    """One evaluation: an attack on a (dataset, model, defense) under a threat model.

    Self-describing (plugin names and validated configs, no live objects), so an executor
    may run it in another process or on another machine.
    """

    dataset: PluginRef
    model: PluginRef
    defense: PluginRef
    threat: ThreatModel
    attack: PluginRef
    options: MatrixOptions
    _key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", digest(self._key_parts()))

    def examples(self) -> dict[str, Any]:
        """What selects the evaluated examples of the test split (cells sharing it share them).

        ``samples`` counts only up to the test split's size (more selects the same examples)
        and not at all when ``bucket_samples`` selects them."""
        o = self.options
        samples: int | None = o.samples
        if o.bucket_samples is not None:
            samples = None
        elif samples is not None and self.dataset.test_size is not None:
            samples = min(samples, self.dataset.test_size)
        return {"samples": samples, "sample_seed": o.sample_seed, "bucket_samples": o.bucket_samples}

    def _key_parts(self) -> dict[str, Any]:
        o = self.options
        return {
            "dataset": self.dataset.key(),
            "model": self.model.key(),
            "defense": self.defense.key(),
            "threat": self.threat.key(),
            "attack": self.attack.key(),
            **self.examples(),
            "seed": o.seed,
            # speed options enter the key only when on, so existing keys stay valid
            **({"kernels": [o.amp, o.channels_last, o.compile]} if (o.amp != "off" or o.channels_last or o.compile) else {}),
        }

    def identity(self) -> dict[str, Any]:
        """The keys of the cell's parts, stored with its row: rows are grouped by these."""
        parts = self._key_parts()
        return {
            "dataset": parts["dataset"],
            "model": parts["model"],
            "defense": parts["defense"],
            "threat": parts["threat"],
            "attack": parts["attack"],
            "examples": self.examples(),
            "seed": parts["seed"],
            **({"kernels": parts["kernels"]} if "kernels" in parts else {}),
        }

    @property
    def key(self) -> str:
        """Hash of everything that defines the cell's result (not batch size or device)."""
        return self._key

    def title(self) -> str:
        return " / ".join(
            (self.dataset.describe(), self.model.describe(), self.defense.describe(), self.threat.label(), self.attack.describe())
        )

    def model_group(self) -> str:
        """Cells of one group share a trained, defended model (executors keep them together)."""
        return digest([self.dataset.key(), self.model.key(), self.defense.key()])


@dataclass(frozen=True, eq=False)
class Shard:
    """Examples ``[start, stop)`` (positions in the cell's evaluation set) of a cell: shard
    ``index`` of ``count``, a unit of work of every executor (``[matrix] shard_size``).

    Self-describing like its cell; ``key`` (the cell's key and the index) names it in the
    claims of a results file. A shard past the end of the cell's examples (the evaluation
    set of ``bucket_samples`` is known only once the model is) computes nothing."""

    cell: Cell
    index: int
    start: int
    stop: int
    count: int

    @property
    def key(self) -> str:
        return shard_key(self.cell.key, self.index)

    @property
    def options(self) -> MatrixOptions:
        return self.cell.options

    @property
    def attack(self) -> PluginRef:
        return self.cell.attack

    def title(self) -> str:
        return f"{self.cell.title()} [shard {self.index + 1}/{self.count}]"

    def model_group(self) -> str:
        return self.cell.model_group()


#: a cell's work: the cell whole, or one of its shards
Unit = Cell | Shard


def cell_of(unit: Unit) -> Cell:
    return unit.cell if isinstance(unit, Shard) else unit


def shards(cell: Cell) -> list[Shard]:
    """The shards of ``cell`` (``[matrix] shard_size``; none when it is not set).

    The cell's examples are counted from the plan: ``samples`` capped at the test split's
    size, or for ``bucket_samples`` the most the buckets can hold (its trailing shards may
    then be empty)."""
    o = cell.options
    if o.shard_size is None:
        return []
    test = cell.dataset.test_size
    if o.bucket_samples is not None:
        n = o.bucket_samples * len(BUCKETS)
        n = min(n, test) if test is not None else n
    else:
        n = cell.examples()["samples"] or o.samples
    count = max(1, -(-n // o.shard_size))
    return [Shard(cell, i, i * o.shard_size, min((i + 1) * o.shard_size, n), count) for i in range(count)]


def plan_threats(spec: MatrixSpec, registry: Registry, errors: list[AdvxError]) -> list[ThreatModel]:
    """The threat models of ``spec``, sweeps expanded, configs validated."""
    out: list[ThreatModel] = []
    for i, table in enumerate(spec.threats):
        prefix = f'threats[{i}] "{table.name}"'
        try:
            cls: type[ThreatModel] = registry.get("threat", table.name)  # type: ignore[assignment]
            params = table.params()
            source = None
            if cls.takes_source:
                raw = params.get("source")
                if raw is None:
                    raise ConfigError(f'{prefix}: source: a substitute model table is required, e.g. source = {{ name = "mlp" }}')
                if isinstance(raw, list):
                    raise ConfigError(f"{prefix}: source: one model table, not a list")
                refs = expand([ModelTable.model_validate(raw)], "model", registry, f"threats[{i}].source")
                if len(refs) != 1:
                    raise ConfigError(f"{prefix}: source: sweeps are not allowed in a substitute model")
                source = refs[0]
            elif "source" in params:
                raise ConfigError(f"{prefix}: source: only the transfer threat model takes a source")
            for p, names in sweep_indexed({k: v for k, v in params.items() if k != "source"}, cls.Config, prefix):
                if source is not None:
                    p = {**p, "source": params["source"]}
                cfg = validate_strict(cls.Config, p, prefix, names)
                out.append(cls(cfg, source))  # type: ignore[arg-type]
        except AdvxError as exc:
            errors.append(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed source table
            errors.append(ConfigError(f"{prefix}: {exc}".splitlines()[0]))
    return out


def check_class_counts(datasets: list[PluginRef], attacks: list[PluginRef], registry: Registry, errors: list[AdvxError]) -> None:
    """Record an error for every attack that needs more classes than a dataset of the spec has
    (``Attack.min_classes``: the DLR loss needs 3, its targeted form 4), so the spec is
    refused when it is read, not cell by cell mid-run. A dataset whose class count cannot be
    read yet (a folder that is not there) is left to its cells, which check it again."""
    for d in datasets:
        try:
            k = registry.get("dataset", d.name)(d.config).info().num_classes  # type: ignore[call-arg]
        except Exception:  # noqa: BLE001 - the cells report what is wrong with the dataset
            continue
        for a in attacks:
            need = registry.get("attack", a.name).min_classes(a.config)  # type: ignore[attr-defined]
            if k < need:
                errors.append(
                    ConfigError(
                        f'attack "{a.describe()}" needs at least {need} classes (as configured), but dataset '
                        f'"{d.describe()}" has {k}'
                    )
                )


def identify(ref: PluginRef, registry: Registry, errors: list[AdvxError]) -> PluginRef:
    """``ref`` with its data's identity and test size: the files are located (downloaded where
    allowed) and fingerprinted now, so that missing data fails the plan before any work and
    changed files change the cell keys."""
    try:
        plugin: Dataset = registry.create("dataset", ref.name, ref.config_dict())  # type: ignore[assignment]
        return replace(ref, identity=plugin.identity(), test_size=plugin.test_size())
    except AdvxError as exc:
        errors.append(exc)
    except Exception as exc:  # noqa: BLE001 - a broken dataset plugin is named, not a traceback
        errors.append(ConfigError(f'dataset "{ref.name}" raised {type(exc).__name__}: {exc}'.splitlines()[0]))
    return ref


def plan(spec: MatrixSpec, registry: Registry, locate_data: bool = True) -> list[Cell]:
    """All cells of ``spec``; every config validated first (one ``ConfigError`` listing every error).

    The datasets' files are located and fingerprinted (``identify``), so missing data fails
    here; ``locate_data=False`` only validates the configs (the cells' keys are then not
    those a run computes: for checking a spec's shape, never for running it).
    """
    errors: list[AdvxError] = []
    datasets = expand(spec.datasets, "dataset", registry, "datasets", errors)
    if locate_data:
        datasets = [identify(d, registry, errors) for d in datasets]
    models = expand(spec.models, "model", registry, "models", errors)
    defenses = expand(spec.defenses, "defense", registry, "defenses", errors)
    threats = plan_threats(spec, registry, errors)
    attacks = expand(spec.attacks, "attack", registry, "attacks", errors)
    check_class_counts(datasets, attacks, registry, errors)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigError("; ".join(dict.fromkeys(str(e) for e in errors)))
    return [
        Cell(d, m, df, t, a, spec.matrix)
        for d in datasets
        for m in models
        for df in defenses
        for t in threats
        for a in attacks
    ]
