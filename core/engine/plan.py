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
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdvxError, ConfigError
from ..registry import Registry
from ..spec import MatrixOptions, MatrixSpec, ModelTable, PluginRef, expand, sweep, validate_strict
from ..threats import ThreatModel, threat_class


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
        o = self.options
        key = digest(
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
                # speed options enter the key only when on, so existing keys stay valid
                **({"kernels": [o.amp, o.channels_last, o.compile]} if (o.amp != "off" or o.channels_last or o.compile) else {}),
            }
        )
        object.__setattr__(self, "_key", key)

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


def plan_threats(spec: MatrixSpec, registry: Registry, errors: list[AdvxError]) -> list[ThreatModel]:
    """The threat models of ``spec``, sweeps expanded, configs validated."""
    out: list[ThreatModel] = []
    for i, table in enumerate(spec.threats):
        prefix = f'threats[{i}] "{table.name}"'
        try:
            cls = threat_class(table.name, f"threats[{i}]")
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
            for p in sweep({k: v for k, v in params.items() if k != "source"}, cls.Config, prefix):
                if source is not None:
                    p = {**p, "source": params["source"]}
                cfg = validate_strict(cls.Config, p, prefix)
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


def plan(spec: MatrixSpec, registry: Registry) -> list[Cell]:
    """All cells of ``spec``; every config validated first (one ``ConfigError`` listing every error)."""
    errors: list[AdvxError] = []
    datasets = expand(spec.datasets, "dataset", registry, "datasets", errors)
    models = expand(spec.models, "model", registry, "models", errors)
    defenses = expand(spec.defenses, "defense", registry, "defenses", errors)
    threats = plan_threats(spec, registry, errors)
    attacks = expand(spec.attacks, "attack", registry, "attacks", errors)
    check_class_counts(datasets, attacks, registry, errors)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigError("; ".join(str(e) for e in errors))
    return [
        Cell(d, m, df, t, a, spec.matrix)
        for d in datasets
        for m in models
        for df in defenses
        for t in threats
        for a in attacks
    ]
