"""``run_matrix``: plan a spec, skip what the store holds, execute the rest, commit each cell.

The spec is validated in full before anything else (a rejected spec creates no results
file and trains nothing). Each finished cell is committed to the store the moment it comes
back from the executor, with the trainings it triggered; a cell that raises is recorded
as failed and the matrix goes on; an interrupt keeps every finished cell, and a rerun
resumes. Runs on one results file share its cells: each cell is claimed in the file just
before it is computed (``ResultStore.claim``), so a cell another live run is computing is
waited for, never computed twice.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from advx.runtime.allocator import tune_cpu_allocator
from advx.contract.errors import ConfigError, format_validation_error
from advx.analysis.rows import CellRow
from advx.contract.registry import Registry
from advx.store.results import ResultStore
from advx.engine.spec import MatrixOptions, MatrixSpec
from advx.engine.devices import resolve_devices
from advx.engine.executors import Executor, InProcessExecutor, MultiDeviceExecutor
from advx.engine.plan import Shard, plan
from advx.engine.shards import ShardBook
from advx.engine.workspace import Event


@dataclass
class MatrixResult:
    """What ``run_matrix`` did.

    Attributes:
        spec_name: the ``[matrix] name`` of the spec (``"matrix"`` when the spec has none).
        db: the results file, or ``None`` when no store was given.
        rows: the ``CellRow`` of each cell run now.
        skipped: cells already in the store (not run again).
        failed: cells that failed now.
        not_applicable: cells whose threat model does not apply (recorded with a reason).
        trainings: every training and fitting done now (key, kind, description, seconds, cached).
        elsewhere: cells another run on the same results file computed while this one ran.
        shards: shards of sharded cells (``[matrix] shard_size``) computed now.
    """

    spec_name: str
    db: Path | None
    rows: list[CellRow]
    skipped: int
    failed: int
    not_applicable: int = 0
    trainings: list[dict[str, Any]] = field(default_factory=list)
    elsewhere: int = 0
    shards: int = 0

    @property
    def done(self) -> int:
        return sum(1 for r in self.rows if r.status == "done")


def load_spec(spec: MatrixSpec | dict[str, Any] | str | Path, device: str | None = None, **overrides: Any) -> MatrixSpec:
    """A ``MatrixSpec`` from a spec, a dict of its shape or a TOML path; ``device`` and other
    ``[matrix]`` ``overrides`` (None: keep the spec's) override the spec's."""
    if isinstance(spec, (str, Path)):
        spec = MatrixSpec.from_toml(spec)
    elif isinstance(spec, dict):
        spec = MatrixSpec.from_dict(spec)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        try:
            options = MatrixOptions.model_validate({**spec.matrix.model_dump(), **overrides})
        except ValidationError as exc:
            raise ConfigError(format_validation_error("matrix", exc)) from None
        spec = spec.model_copy(update={"matrix": options})
    if device is not None:
        try:
            options = MatrixOptions.model_validate({**spec.matrix.model_dump(), "device": device})
        except ValidationError as exc:
            raise ConfigError(format_validation_error("--device", exc).replace("--device: device:", "matrix.device:")) from None
        spec = spec.model_copy(update={"matrix": options})
    return spec


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
    overrides the spec's. ``rerun`` recomputes finished cells. ``on_event(event, cell,
    payload)`` receives progress: ``notice`` (a line about the results file, e.g. that it was
    migrated from an older advx), ``plan``, ``cell_start``, ``train_start``,
    ``train_epoch``, ``train_done``, ``batch``, ``cell_done``, ``cell_failed``,
    ``cell_not_applicable``, and for sharded cells (``[matrix] shard_size``) ``cell_start``
    with each ``Shard``, then ``shard_done`` or ``shard_failed``, and the cell's
    ``cell_done``/``cell_failed`` when its last shard is in (``plan`` counts the work as
    ``units``, of which ``shards``). A sharded cell's shards are stored as each finishes.
    """
    spec = load_spec(spec, device)
    tune_cpu_allocator()  # a matrix is thousands of same-sized passes: keep their memory (see advx.runtime.allocator)
    registry = registry or Registry.discover()
    cells = plan(spec, registry)
    # ``[matrix] threads`` is applied by the executor that runs the cells (every executor sets
    # it for its cells and gives the process its own setting back), not here a second time
    return _run(spec, registry, cells, store, executor, on_event, rerun)


def _run(spec: MatrixSpec, registry: Registry, cells: list, store: Any, executor: Executor | None, on_event: Event | None, rerun: bool) -> MatrixResult:
    """``run_matrix`` once the spec is planned: skip what the store holds, execute, commit."""
    devices = resolve_devices(spec.matrix.device)
    own_store = False
    if store is not None and not isinstance(store, ResultStore):
        store = ResultStore(store)
        own_store = True
    if store is not None and store.notice and on_event is not None:
        on_event("notice", None, {"message": store.notice})  # e.g. the file was migrated from an older advx
    try:
        spec_hash = spec.spec_hash()
        if store is not None:
            store.add_members(spec.matrix.name, [c.key for c in cells])
        done = store.done_keys() if (store is not None and not rerun) else set()
        if store is not None and done:
            # cells migrated from an older file get the identity their (unchanged) key stands for
            store.adopt_identity({c.key: c.identity() for c in cells if c.key in done})
        todo = [c for c in cells if c.key not in done]
        skipped = len(cells) - len(todo)
        book = ShardBook(store, rerun, spec.matrix.name, spec_hash)
        units = book.units(todo)  # cells whole, or the shards of sharded cells not stored yet
        if on_event is not None:
            shards = sum(isinstance(u, Shard) for u in units)
            stored = sum(book.stored(c) for c in todo if c.key in book.plans)
            on_event("plan", None, {"cells": len(cells), "todo": len(todo), "skipped": skipped, "units": len(units), "shards": shards, "shards_stored": stored})
        if executor is None:
            if spec.matrix.executor == "ray":
                from advx.engine.ray_executor import RayExecutor

                executor = RayExecutor(spec.matrix.ray_address)
            else:
                executor = MultiDeviceExecutor(devices, cpu_threads=spec.matrix.threads) if len(devices) > 1 else InProcessExecutor()
        result = MatrixResult(spec.matrix.name, store.path if store is not None else None, [], skipped, 0)
        kw: dict[str, Any] = {}
        if store is not None and "claim" in inspect.signature(executor.map).parameters:  # executors of before claims run unclaimed

            def claim(unit: Any) -> str:
                verdict = store.claim(unit.key, rerun=rerun)  # type: ignore[union-attr]
                if verdict == "done" and not isinstance(unit, Shard):  # finished by another run meanwhile
                    result.elsewhere += 1
                return verdict

            kw["claim"] = claim
        for unit, outcome in executor.map(units, registry, devices[0], spec.matrix.cache_dir, on_event, **kw):
            result.trainings.extend(outcome.trainings)
            if isinstance(unit, Shard):
                result.shards += 1
                merged = book.add(unit, outcome)
                if on_event is not None:
                    on_event("shard_failed" if outcome.row.status == "failed" else "shard_done", unit, {"row": outcome.row})
                if merged is None:
                    continue
                cell, row = unit.cell, merged
            else:
                cell, row = unit, outcome.row.replace(spec_name=spec.matrix.name, spec_hash=spec_hash)
                if store is not None and not store.record(row, outcome.samples, outcome.trainings):
                    # another run finished this cell meanwhile: its result stands, not this failure
                    row = store.cell(row.cell_key) or row
            result.rows.append(row)
            status = row.status
            result.failed += status == "failed"
            result.not_applicable += status == "not-applicable"
            if on_event is not None:
                event = {"done": "cell_done", "failed": "cell_failed"}.get(status, "cell_not_applicable")
                on_event(event, cell, {"row": row})
        return result
    finally:
        if own_store:
            store.close()  # type: ignore[union-attr]  (gives back this run's claims)
        elif store is not None and not store.readonly:
            try:
                store.release()
            except Exception:  # noqa: BLE001 - the file is gone: its claims with it
                pass


@dataclass
class DryRun:
    """What ``run_matrix`` would do: cells to run, cells already done, models it would train."""

    spec_name: str
    todo: list[Any]
    done: list[Any]
    trainings: list[tuple[str, bool]]  # (description, already in the training cache)
    shards: dict[str, tuple[list[Any], int]] = field(default_factory=dict)  # sharded cell key -> (shards to run, shard count)


def dry_run(
    spec: MatrixSpec | dict[str, Any] | str | Path,
    *,
    registry: Registry | None = None,
    store: str | Path | None = None,
    device: str | None = None,
    rerun: bool = False,
) -> DryRun:
    """Plan ``spec`` and report what a run would do, without training or attacking anything.

    The results file is only read (and need not exist). Trainings listed are the base
    models of the cells to run and the models their threat models craft on; a defense may
    train more when it is applied (ensemble members, adversarially trained twins).
    """
    from advx.runtime.training import checkpoint_path

    spec = load_spec(spec, device)
    registry = registry or Registry.discover()
    cells = plan(spec, registry)
    dev = resolve_devices(spec.matrix.device)[0]
    finished: set[str] = set()
    todo_shards: dict[str, tuple[list[Any], int]] = {}
    readable = store is not None and Path(store).exists()
    with ResultStore(store, readonly=True) if readable else nullcontext() as s:  # type: ignore[attr-defined]
        if s is not None and not rerun:
            finished = s.done_keys()
        todo = [c for c in cells if c.key not in finished]
        book = ShardBook(s, rerun, spec.matrix.name, "")
        for u in book.units(todo):
            if isinstance(u, Shard):
                todo_shards.setdefault(u.cell.key, ([], u.count))[0].append(u)
    trainings: dict[str, bool] = {}

    def need(ds: Any, model: Any, what: str) -> None:
        dataset = registry.create("dataset", ds.name, ds.config_dict())
        plugin = registry.create("model", model.name, model.config_dict())
        if plugin.pretrained:  # read from its file when the cell runs, never trained
            trainings.setdefault(f"{what} on {ds.describe()} (loaded, not trained)", True)
            return
        path = checkpoint_path(dataset, plugin, model.train, dev, spec.matrix.cache_dir)  # type: ignore[arg-type]
        trainings.setdefault(f"{what} on {ds.describe()}", path.exists())

    for c in todo:
        need(c.dataset, c.model, c.model.describe())
        for n in c.threat.needs(c):
            need(c.dataset, n.model, f"{n.model.describe()} ({n.what})")
        if registry.get("defense", c.defense.name).trains:  # type: ignore[attr-defined]
            trainings.setdefault(f"defense {c.defense.describe()} on {c.model.describe()} (may train further models when applied)", False)
    return DryRun(spec.matrix.name, todo, [c for c in cells if c.key in finished], list(trainings.items()), todo_shards)
