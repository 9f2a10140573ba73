"""``MatrixSpec``: what a matrix evaluates, read from TOML or built in Python.

A spec lists datasets, models, defenses, threat models and attacks, each table naming a
plugin and giving its config. A list value sweeps: ``eps = [0.1, 0.2, 0.3]`` makes three
attack configs (the cartesian product when several fields are lists), except for fields
whose declared type is itself a list. Every plugin config is validated when the spec is
expanded, before anything runs, and an invalid value fails with one line naming the table,
the plugin and the field: ``attacks[1] "bim": alpha: Input should be greater than 0``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, format_validation_error
from .registry import Registry
from .training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

THREATS = ("white-box", "undefended", "transfer", "gray-box")


class MatrixOptions(BaseModel):
    """The ``[matrix]`` table."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("matrix", description="name of the matrix, stored with every result")
    samples: int = Field(1000, ge=1, description="evaluation samples per cell (capped at the test split)")
    batch_size: int = Field(256, ge=1, description="examples per attack batch")
    device: str = Field(
        "cpu",
        description="cpu, cuda or cuda:N; several, comma-separated (cuda:0,cuda:1) or cuda:all, run cells in parallel",
    )
    seed: int = Field(0, description="seed of sample selection and of randomised attacks")
    sample_seed: int | None = Field(
        None, description="draw the evaluation samples at random with this seed (default: the first N)"
    )
    bucket_samples: int | None = Field(
        None,
        ge=1,
        description=(
            "select up to this many samples per clean-confidence bucket (High >= 30%, Medium 15-30%, "
            "Low < 15%) instead of the first N (seed 001)"
        ),
    )
    cache_dir: str | None = Field(None, description="where trained checkpoints are cached (default: user cache)")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        import re

        parts = [p.strip() for p in v.split(",")]
        if not all(re.fullmatch(r"cpu|cuda(:\d+|:all)?|mps", p) for p in parts):
            raise ValueError("must be 'cpu', 'cuda', 'cuda:N', 'cuda:all' or a comma-separated list of them")
        return ",".join(parts)


class PluginTable(BaseModel):
    """One ``[[datasets]]`` / ``[[defenses]]`` / ``[[attacks]]`` table: a plugin name + its config."""

    model_config = ConfigDict(extra="allow")

    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelTable(PluginTable):
    """A ``[[models]]`` table: plugin name, config, and ``train = {...}``."""

    train: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, description="a name other tables can refer to (threat sources)")


class ThreatTable(BaseModel):
    """A ``[[threats]]`` table: how much the attacker knows of the evaluated model.

    * ``white-box``: the attack sees the whole defended model (default);
    * ``undefended``: the attack sees the trained base model, not the defense;
    * ``transfer``: crafted on ``source``, a substitute model trained independently
      (seed 004: model E -> model F);
    * ``gray-box``: crafted on an independently trained copy of the same architecture and
      defense, trained with ``seed``.
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["white-box", "undefended", "transfer", "gray-box"]
    source: ModelTable | None = Field(None, description="substitute model of the transfer threat model")
    seed: int | None = Field(None, description="training seed of the gray-box copy (default: the model's seed + 1)")
    defended: bool = Field(False, description="transfer: apply the cell's defense to the substitute too")


class MatrixSpec(BaseModel):
    """A whole matrix: ``[matrix]`` options and the plugin tables."""

    model_config = ConfigDict(extra="forbid")

    matrix: MatrixOptions = Field(default_factory=MatrixOptions)
    datasets: list[PluginTable] = Field(min_length=1)
    models: list[ModelTable] = Field(min_length=1)
    defenses: list[PluginTable] = Field(default_factory=lambda: [PluginTable(name="none")])
    threats: list[ThreatTable] = Field(default_factory=lambda: [ThreatTable(name="white-box")])
    attacks: list[PluginTable] = Field(min_length=1)

    @classmethod
    def from_toml(cls, path: str | Path) -> MatrixSpec:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"spec file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"spec file {str(path)!r} cannot be read: {exc.strerror}") from None
        return cls.from_toml_string(text, source=str(path))

    @classmethod
    def from_toml_string(cls, text: str, source: str = "<spec>") -> MatrixSpec:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<spec>") -> MatrixSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(source, exc)) from None

    def spec_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --- expansion into concrete plugin configs ------------------------------------------------


def _is_list_type(annotation: Any) -> bool:
    """Whether a config field itself takes a list (so a list value is not a sweep)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset, typing.Sequence):
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_is_list_type(a) for a in typing.get_args(annotation))
    return annotation in (list, tuple)


def sweep(params: dict[str, Any], config_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Expand list values into the cartesian product of configs."""
    keys, choices = [], []
    for k, v in params.items():
        field = config_cls.model_fields.get(k)
        is_sweep = isinstance(v, list) and not (
            field is not None and _is_list_type(field.annotation) and not (v and isinstance(v[0], list))
        )
        keys.append(k)
        choices.append(v if is_sweep else [v])
        if is_sweep and not v:
            raise ConfigError(f"{k}: an empty list sweeps nothing")
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


@dataclass(frozen=True)
class PluginRef:
    """A resolved plugin: kind, name and validated config (as JSON-able dict)."""

    kind: str
    name: str
    config: dict[str, Any]
    train: dict[str, Any] | None = None  # models only
    label: str | None = None
    params: tuple[tuple[str, Any], ...] = ()  # the values the spec set explicitly (for display)

    def key(self) -> Any:
        return [self.name, self.config] + ([self.train] if self.train is not None else [])

    def describe(self) -> str:
        """Name plus the config values that differ from the defaults."""
        if not self.params:
            return self.name
        return self.name + "(" + ", ".join(f"{k}={v}" for k, v in self.params) + ")"


def expand(
    tables: list[PluginTable], kind: str, registry: Registry, where: str
) -> list[PluginRef]:
    out = []
    for i, table in enumerate(tables):
        cls = registry.get(kind, table.name)  # type: ignore[arg-type]
        for params in sweep(table.params(), cls.Config):
            prefix = f'{where}[{i}] "{table.name}"'
            try:
                cfg = cls.Config.model_validate(params)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(prefix, exc)) from None
            full = cfg.model_dump(mode="json")
            shown = tuple((k, full[k]) for k in params)
            train = None
            label = None
            if isinstance(table, ModelTable):
                try:
                    train = TrainConfig.model_validate(table.train).model_dump(mode="json")
                except ValidationError as exc:
                    raise ConfigError(format_validation_error(prefix + " train", exc)) from None
                label = table.label
            out.append(PluginRef(kind, table.name, full, train, label, shown))
    return out
