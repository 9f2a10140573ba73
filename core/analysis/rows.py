"""``CellRow``: one finished cell, typed, from the worker that ran it to every reader.

The executing worker builds it, the store writes and reads it (decoding its JSON once,
where it is read from SQLite), and the CLI, the report and the sanity checks read its
fields. Its parts:

* what identifies it: ``cell_key`` and ``identity``, the keys of its parts (``dataset``
  with the data's fingerprint, ``model`` with its training, ``defense``, ``threat``,
  ``attack``, and ``examples``: which test examples were evaluated). Rows are grouped by
  these, never by their display labels, which leave out what the spec did not set;
* what it shows: the labels ``dataset``, ``model``, ``defense``, ``threat``, ``attack``;
* the validated configs of each part, and the traits the attack and the threat model
  declare (the checks read traits from the row, not from classes in this process);
* ``metrics``: every declared metric (``advx.analysis.metrics``) by name, so a new metric is
  a new key, never a new column shape; ``details``: breakdowns (per class, per confidence
  bucket), ROC points, diagnostics, and the traceback of a failure;
* cost and provenance: seconds, trainings, versions, device, timestamps.

``row[name]`` reads a metric or a field by name (what tables and exports show); ``flat()``
is the dict of every field with the metrics beside them (the JSON/CSV export).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class CellRow:
    """One cell's result (see the module docstring)."""

    cell_key: str
    status: str  # done, failed, not-applicable (or partial while its shards are running)
    spec_name: str | None = None
    spec_hash: str | None = None
    # labels, as tables show them
    dataset: str = ""
    model: str = ""
    defense: str = ""
    threat: str = ""
    attack: str = ""
    # identity: the keys of the cell's parts (JSON-able)
    identity: dict[str, Any] = field(default_factory=dict)
    # validated configs and declared traits
    dataset_config: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] | None = None
    defense_config: dict[str, Any] = field(default_factory=dict)
    threat_config: dict[str, Any] = field(default_factory=dict)
    attack_config: dict[str, Any] = field(default_factory=dict)
    attack_traits: dict[str, Any] = field(default_factory=dict)
    threat_traits: dict[str, Any] = field(default_factory=dict)
    # results
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # cost and provenance
    seconds: float | None = None
    train_seconds: float | None = None
    crafted_by: str | None = None
    batch_size: int | None = None
    trainings: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None
    advx_version: str | None = None
    torch_version: str | None = None
    device: str | None = None
    seed: int | None = None
    started: str | None = None
    finished: str | None = None

    # -- reading --------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        return self.cell_key

    @property
    def done(self) -> bool:
        return self.status == "done"

    def metric(self, name: str) -> Any:
        """The value of metric ``name`` (``None`` when undefined for this cell)."""
        return self.metrics.get(name)

    @property
    def robust_accuracy(self) -> float | None:
        return self.metrics.get("robust_accuracy")

    @property
    def clean_accuracy(self) -> float | None:
        return self.metrics.get("clean_accuracy")

    @property
    def n(self) -> int:
        return int(self.metrics.get("n") or 0)

    @property
    def eps(self) -> float | None:
        return self.attack_config.get("eps")

    @property
    def less_knowledge(self) -> bool:
        """The threat model declared that its attacker knows less than the white-box one."""
        return bool(self.threat_traits.get("less_knowledge"))

    @property
    def full_knowledge(self) -> bool:
        """The attacker sees the evaluated model itself (no surrogate, not less knowledge)."""
        return not self.threat_traits.get("less_knowledge") and not self.threat_traits.get("surrogate")

    def part(self, *names: str) -> tuple[str, ...]:
        """The identity keys of the named parts, as hashable text (for grouping)."""
        import json

        return tuple(json.dumps(self.identity.get(n), sort_keys=True, default=str) for n in names)

    def place(self) -> str:
        """The labels of the evaluated model: dataset / model / defense / threat."""
        return f"{self.dataset} / {self.model} / {self.defense} / {self.threat}"

    def title(self) -> str:
        return f"{self.place()} / {self.attack}"

    def __getitem__(self, name: str) -> Any:
        if name in self.metrics:
            return self.metrics[name]
        if name in _FIELD_NAMES:
            return getattr(self, name)
        from advx.analysis.metrics import METRICS

        if any(m.name == name for m in METRICS):
            return None
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            v = self[name]
        except KeyError:
            return default
        return default if v is None else v

    def __contains__(self, name: object) -> bool:
        return name in self.metrics or name in _FIELD_NAMES

    def flat(self) -> dict[str, Any]:
        """Every field, with each metric beside them under its own name (the export's shape)."""
        from advx.analysis.metrics import METRICS

        d = asdict(self)
        metrics = d.pop("metrics")
        out: dict[str, Any] = {}
        for k, v in d.items():
            out[k] = v
            if k == "threat_traits":
                out.update({m.name: metrics.get(m.name) for m in METRICS})
                out.update({k2: v2 for k2, v2 in metrics.items() if k2 not in out})
        return out

    def replace(self, **changes: Any) -> CellRow:
        return replace(self, **changes)

    @classmethod
    def from_flat(cls, d: dict[str, Any]) -> CellRow:
        """A row from the flat shape (``flat()``, a JSON export's rows, a hand-written test row):
        fields by name, every other key a metric. Without ``identity`` the parts' identities
        are rebuilt from the configs and labels given, so that such rows group as cells do."""
        kw = {k: v for k, v in d.items() if k in _FIELD_NAMES and k != "metrics"}
        metrics = dict(d.get("metrics") or {})
        metrics.update({k: v for k, v in d.items() if k not in _FIELD_NAMES})
        kw["metrics"] = metrics
        kw.setdefault("cell_key", "")
        kw.setdefault("status", "done")
        if not kw.get("identity"):
            def part(label: str, *cfgs: str) -> Any:
                found = [d.get(c) for c in cfgs if d.get(c)]
                return found or [d.get(label)]

            kw["identity"] = {
                "dataset": part("dataset", "dataset_config"),
                "model": part("model", "model_config", "train_config"),
                "defense": part("defense", "defense_config"),
                "threat": part("threat", "threat_config"),
                "attack": part("attack", "attack_config"),
                "examples": {},
                "seed": d.get("seed"),
            }
        return cls(**kw)


_FIELD_NAMES = frozenset(f.name for f in fields(CellRow))
#: the fields stored as JSON text
JSON_FIELDS = tuple(
    f.name for f in fields(CellRow) if str(f.type).startswith(("dict", "list"))
)
