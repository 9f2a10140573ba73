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
import os
import sys
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from advx.contract.errors import AdvxError, ConfigError, format_validation_error
from advx.contract.interfaces import DEFAULTS, PluginConfig
from advx.contract.registry import Registry
from advx.runtime.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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
    keep_examples: int = Field(
        8,
        ge=0,
        le=1000,
        description=(
            "keep the first K clean and adversarial inputs of each cell in the results file, for the report's "
            "gallery and `advx results --examples` (0: none; not part of the cell key)"
        ),
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="local: this machine (one process, or one per device); ray: Ray tasks (pip install 'advx[distributed]')",
    )
    ray_address: str | None = Field(None, description="address of an existing Ray cluster (default: start a local one)")
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off",
        description="run attacks under autocast in this precision (speed; can change results, which is why it is part of the cell key)",
    )
    channels_last: bool = Field(False, description="models and batches in channels-last memory format (speed on some hardware)")
    compile: bool = Field(False, description="torch.compile the attacked module (speed after a compilation per model)")
    min_batch_size: int = Field(
        1,
        ge=1,
        description="out of memory: a batch is retried at half the size, down to this floor (then the cell fails)",
    )
    cell_timeout: float = Field(
        21600.0,
        gt=0,
        description=(
            "seconds a cell may run, the trainings it triggers included, before it is stopped and recorded as "
            "failed with this cause (default 6 hours; not part of the cell key)"
        ),
    )
    heartbeat_timeout: float = Field(
        60.0,
        gt=0,
        description=(
            "seconds a worker process (--device with several devices) may stay silent (stopped, hung) before it "
            "is killed, its cell recorded as failed and a fresh worker started for the rest"
        ),
    )
    threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch CPU threads of every cell and training, in every executor (default: all cores in one process, "
            "the cores split between CPU workers, one per Ray task); CPU training is not bit-identical across "
            "thread counts, so set it for the same numbers whatever the executor"
        ),
    )
    shard_size: int | None = Field(
        None,
        ge=1,
        description=(
            "split each cell's examples into shards of this many (a multiple of batch_size): the unit of work of "
            "every executor, stored as each finishes, so a killed run loses only the shards that were running and a "
            "rerun computes only the missing ones (default: no sharding; not part of the cell key)"
        ),
    )
    diagnostics: bool = Field(
        True,
        description=(
            "measure, per cell, the checks the sanity flags need: gradient health, random forward, convergence "
            "(the attack with twice its steps on 32 examples) and silent success"
        ),
    )

    @field_validator("shard_size")
    @classmethod
    def _check_shard_size(cls, v: int | None, info: ValidationInfo) -> int | None:
        # a shard of whole batches: batch positions, and the per-batch seeds that follow them,
        # are then those of the unsharded cell (``CraftOptions.first``)
        batch = info.data.get("batch_size")
        if v is not None and batch and v % batch:
            raise ValueError(f"must be a multiple of batch_size = {batch} (got {v})")
        return v

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
    """A ``[[threats]]`` table: a threat model's name and its config (see ``advx.contract.threats``).

    ``white-box`` (default), ``undefended``, ``transfer`` (``source`` = a model table,
    ``defended``), ``gray-box`` (``seed``), ``member`` (``index``), ``member-mean`` and
    ``detector-aware`` (``alpha``); every one takes ``bpda``. List values sweep, as in
    plugin tables.
    """

    model_config = ConfigDict(extra="allow")

    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MatrixSpec(BaseModel):
    """A whole matrix: ``[matrix]`` options and the plugin tables."""

    model_config = ConfigDict(extra="forbid")

    matrix: MatrixOptions = Field(default_factory=MatrixOptions)
    datasets: list[PluginTable] = Field(min_length=1)
    models: list[ModelTable] = Field(min_length=1)
    defenses: list[PluginTable] = Field(default_factory=lambda: [PluginTable(name=DEFAULTS["defense"])])
    threats: list[ThreatTable] = Field(default_factory=lambda: [ThreatTable(name=DEFAULTS["threat"])])
    attacks: list[PluginTable] = Field(min_length=1)

    @classmethod
    def from_toml(cls, path: str | Path) -> MatrixSpec:
        """A spec file; ``extends = "other.toml"`` in it is resolved against its folder."""
        path = Path(path)
        return cls.from_dict(_load_extending(_read_toml(path), path.parent, (path,)), str(path))

    @classmethod
    def from_toml_string(cls, text: str, source: str = "<spec>") -> MatrixSpec:
        """A spec given as text; a relative ``extends`` is resolved against the current folder
        (a string has none of its own)."""
        return cls.from_dict(_load_extending(_parse_toml(text, source), Path(), (Path(source),)), source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<spec>") -> MatrixSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(source, exc)) from None

    def spec_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --- reading a spec file, and the spec it extends ------------------------------------------


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"spec file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"spec file {str(path)!r} cannot be read: {exc.strerror}") from None
    return _parse_toml(text, str(path))


def _load_extending(data: dict[str, Any], folder: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``data`` merged over the spec it ``extends`` (itself merged over what it extends...).

    A variant must name itself in ``[matrix] name``: results are stored and selected by spec
    name, so a quick variant that inherited its full spec's name would mix its cells into the
    full spec's results. ``chain`` holds the files read so far, to refuse a cycle.
    """
    if "extends" not in data:
        return data
    data = dict(data)
    target, here = data.pop("extends"), chain[-1]
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{here}: extends: must be the name of a spec file (a string), got {target!r}")
    if not isinstance(data.get("matrix"), dict) or "name" not in data["matrix"]:
        raise ConfigError(
            f"{here}: [matrix] name: a spec that extends another must give its own name (results are stored by spec name)"
        )
    path = Path(os.path.normpath(folder / target))
    seen = [p.resolve() for p in chain]
    if path.resolve() in seen:
        loop = " -> ".join(str(p) for p in chain[seen.index(path.resolve()) :] + (path,))
        raise ConfigError(f"{here}: extends: the spec files extend each other in a cycle: {loop}")
    if not path.is_file():
        raise ConfigError(f"{here}: extends: spec file {str(path)!r} does not exist")
    base = _load_extending(_read_toml(path), path.parent, chain + (path,))
    return _merge_over(base, data, str(here))


def _merge_over(base: dict[str, Any], over: dict[str, Any], source: str, loc: str = "") -> dict[str, Any]:
    """``over`` merged over ``base``, as ``extends`` does: a table merges key by key (recursively),
    a scalar or a list replaces, and so does an array of tables (``[[attacks]]``: replaced whole).
    A table whose keys are indices (``[attacks.1]``) patches those elements of an inherited array
    of tables instead, so a variant can change one field of one table without copying the rest.
    """
    out = dict(base)
    for key, value in over.items():
        old, at = out.get(key), f"{loc}{key}"
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = _merge_over(old, value, source, at + ".")
        elif isinstance(value, dict) and isinstance(old, list) and old and all(isinstance(t, dict) for t in old):
            out[key] = list(old)
            for i, patch in value.items():
                if not (i.isdigit() and int(i) < len(old)):
                    raise ConfigError(
                        f"{source}: {at}.{i}: over an inherited array of {len(old)} table(s), a table names an element "
                        f"by its index (0-{len(old) - 1}), as in [{at}.0]; [[{at}]] replaces the whole array"
                    )
                if not isinstance(patch, dict):
                    raise ConfigError(f"{source}: {at}.{i}: must be a table of the fields to change, got {patch!r}")
                out[key][int(i)] = _merge_over(old[int(i)], patch, source, f"{at}.{i}.")
        else:
            out[key] = value
    return out


# --- expansion into concrete plugin configs ------------------------------------------------


def _is_list_type(annotation: Any) -> bool:
    """Whether a config field itself takes a list (so a list value is not a sweep)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset, typing.Sequence):
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_is_list_type(a) for a in typing.get_args(annotation))
    return annotation in (list, tuple)


def sweep(params: dict[str, Any], config_cls: type[BaseModel], where: str = "") -> list[dict[str, Any]]:
    """Expand list values into the cartesian product of configs."""
    return [combo for combo, _ in sweep_indexed(params, config_cls, where)]


def sweep_indexed(params: dict[str, Any], config_cls: type[BaseModel], where: str = "") -> list[tuple[dict[str, Any], dict[str, str]]]:
    """``sweep``, each config with the names of its swept values' places (``{"eps": "eps[1]"}``),
    so that an invalid value of a list is named by its position."""
    keys, choices, swept = [], [], []
    for k, v in params.items():
        field = config_cls.model_fields.get(k)
        is_sweep = isinstance(v, list) and not (
            field is not None and _is_list_type(field.annotation) and not (v and isinstance(v[0], list))
        )
        keys.append(k)
        choices.append(list(enumerate(v)) if is_sweep else [(None, v)])
        swept.append(is_sweep)
        if is_sweep and not v:
            raise ConfigError(f"{where + ': ' if where else ''}{k}: an empty list sweeps nothing")
    out = []
    for combo in itertools.product(*choices):
        names = {k: f"{k}[{i}]" for k, (i, _), s in zip(keys, combo, swept) if s}
        out.append(({k: v for k, (_, v) in zip(keys, combo)}, names))
    return out


@dataclass(frozen=True)
class PluginRef:
    """A resolved plugin: kind, name and its validated config object (kept from planning to execution)."""

    kind: str
    name: str
    config: PluginConfig
    train: TrainConfig | None = None  # models only
    label: str | None = None
    params: tuple[tuple[str, Any], ...] = ()  # the values the spec set explicitly (for display)
    train_params: tuple[tuple[str, Any], ...] = ()  # training values shown to tell models apart (see expand)
    #: datasets, set when planned: what identifies the data (``Dataset.identity``: the config
    #: values that select it and the files' fingerprints) and the size of the test split
    identity: Any = None
    test_size: int | None = None

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def key(self) -> Any:
        if self.identity is not None:
            return self.identity
        return [self.name, self.config_dict()] + ([self.train.model_dump(mode="json")] if self.train is not None else [])

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **config}`` (and ``train`` for models), as stored with results."""
        d: dict[str, Any] = {"name": self.name, **self.config_dict()}
        if self.train is not None:
            d["train"] = self.train.model_dump(mode="json")
        return d

    def describe(self) -> str:
        """Name plus the config values that the spec set; a nested plugin table (a defense
        inside a defense) reads as its own description, ``member_defense=distillation``."""
        shown = [(k, v) for k, v in self.params] + [(f"train.{k}", v) for k, v in self.train_params]
        if not shown:
            return self.name
        return self.name + "(" + ", ".join(f"{k}={_describe_value(v)}" for k, v in shown) + ")"

    def with_seed(self, seed: int) -> PluginRef:
        """This model trained with another seed (the gray-box attacker's copy)."""
        assert self.train is not None
        return replace(self, train=self.train.model_copy(update={"seed": seed}))


def _describe_value(v: Any) -> str:
    if isinstance(v, dict) and isinstance(v.get("name"), str):
        rest = {k: x for k, x in v.items() if k != "name"}
        inner = ", ".join(f"{k}={_describe_value(x)}" for k, x in sorted(rest.items()))
        return v["name"] + (f"({inner})" if inner else "")
    return str(v)


def validate_strict(config_cls: type[BaseModel], params: dict[str, Any], where: str, names: dict[str, str] | None = None) -> BaseModel:
    """Validate spec values strictly (``eps = "0.1"`` is an error, not a silent conversion);
    ``names`` shows swept values by their position (``eps[1]``, from ``sweep_indexed``)."""
    try:
        return config_cls.model_validate_json(json.dumps(params, default=str), strict=True)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(where, exc, names)) from None


def expand(tables: list[PluginTable], kind: str, registry: Registry, where: str, errors: list[AdvxError] | None = None) -> list[PluginRef]:
    """Resolve tables into validated ``PluginRef``s, sweeping list values.

    With ``errors`` given, every invalid table is recorded there and skipped, so that a
    spec's errors are reported together; otherwise the first raises ``ConfigError``.
    """
    out = []
    for i, table in enumerate(tables):
        prefix = f'{where}[{i}] "{table.name}"'
        try:
            cls = registry.get(kind, table.name)  # type: ignore[arg-type]
            configs = sweep_indexed(table.params(), cls.Config, prefix)
        except AdvxError as exc:
            if errors is None:
                raise
            msg = str(exc) if str(exc).startswith(prefix) else f"{prefix}: {exc}"
            errors.append(type(exc)(msg))
            continue
        train = None
        if isinstance(table, ModelTable):
            try:
                train = validate_strict(TrainConfig, table.train, prefix + " train")
            except ConfigError as exc:
                if errors is None:
                    raise
                errors.append(exc)
                continue
        for params, names in configs:
            try:
                cfg = validate_strict(cls.Config, params, prefix, names)
            except ConfigError as exc:
                if errors is None:
                    raise
                errors.append(exc)
                continue
            if kind == "attack" and getattr(cfg, "targeted", False) and not getattr(cls, "supports_targeted", True):
                msg = f"{prefix}: label_mode: {cfg.label_mode!r} is targeted, but this attack cannot target; use 'true' or 'predicted'"  # type: ignore[attr-defined]
                if errors is None:
                    raise ConfigError(msg)
                errors.append(ConfigError(msg))
                continue
            full = cfg.model_dump(mode="json")
            shown = tuple((k, full[k]) for k in params)
            label = table.label if isinstance(table, ModelTable) else None
            out.append(PluginRef(kind, table.name, cfg, train, label, shown))  # type: ignore[arg-type]
    return _tell_apart_by_training(out) if kind == "model" else out


def _tell_apart_by_training(models: list[PluginRef]) -> list[PluginRef]:
    """Models that read the same but train differently (a spread over training seeds) get the
    training values that differ among them in their description, ``mnist-cnn(train.seed=100)``,
    so that their cells' labels (and ``advx results`` selections) differ too. Models that
    already read differently keep their description as it was."""
    by_text: dict[str, list[int]] = {}
    for i, m in enumerate(models):
        by_text.setdefault(m.describe(), []).append(i)
    out = list(models)
    for same in (s for s in by_text.values() if len(s) > 1):
        dumps = [models[i].train.model_dump(mode="json") for i in same]  # type: ignore[union-attr]
        differing = [k for k in dumps[0] if len({json.dumps(d[k], sort_keys=True) for d in dumps}) > 1]
        for i, d in zip(same, dumps):
            out[i] = replace(models[i], train_params=tuple((k, d[k]) for k in differing))
    return out
