"""Executing one cell: from its models to its result row.

The steps, each owned by one kernel module: the defended model (``workspace``), whether
the threat model applies (``threats``), the evaluation examples, the attacker's view
(``threats``), then the attack on the model as ``advx.evaluate`` runs it
(``pipeline.attack_model``: the guards, crafting, reused where another cell crafted the
same examples, scoring, the metrics and the diagnostics). ``execute_cell`` never raises
for a cell's own errors: a failing cell becomes a row with status ``failed`` and the
error, naming the plugin that raised.

Times: ``seconds`` covers crafting and scoring (and applying a defense); the training and
fitting that happened while the cell ran are in ``train_seconds`` and ``trainings``, so
the first cell of a run is comparable with the rest.

A cell runs for at most ``[matrix] cell_timeout`` seconds, its trainings included: past
that it is stopped (an alarm, where the cell runs on a process's main thread on POSIX) and
recorded as failed with that cause. Executors with worker processes also enforce it from
outside, for a cell stuck where Python cannot interrupt it.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from advx._version import __version__
from advx.contract.errors import AdvxError
from advx.runtime.guards import preflight
from advx.contract.interfaces import Attack
from advx.engine.pipeline import attack_model
from advx.store.schema import EXAMPLE_KEYS
from advx.analysis.rows import CellRow
from advx.engine.plan import Cell, Shard, Unit, cell_of
from advx.engine.workspace import Workspace


@dataclass
class CellOutcome:
    """A finished cell (or shard): its result row, per-sample records and the trainings it triggered.

    For a shard (``advx.engine.plan.Shard``), ``row`` is the shard's own (its metrics cover
    its examples only and are not kept) and ``shard`` what the merge of the cell's shards
    needs (``advx.engine.shards``): positions, cost, and the details measured on it."""

    row: CellRow
    samples: dict[str, Tensor] | None = None
    trainings: list[dict[str, Any]] = field(default_factory=list)
    shard: dict[str, Any] | None = None


def base_row(cell: Cell, device: torch.device) -> dict[str, Any]:
    """The fields of a row known before the cell runs (``CellRow`` keyword arguments)."""
    return {
        "cell_key": cell.key,
        "status": "failed",
        "identity": cell.identity(),
        "threat_traits": cell.threat.traits(),
        "dataset": cell.dataset.describe(),
        "model": cell.model.describe(),
        "defense": cell.defense.describe(),
        "threat": cell.threat.label(),
        "attack": cell.attack.describe(),
        "dataset_config": cell.dataset.as_dict(),
        "model_config": {"name": cell.model.name, **cell.model.config_dict()},
        "train_config": cell.model.train.model_dump(mode="json") if cell.model.train else None,
        "defense_config": cell.defense.as_dict(),
        "threat_config": cell.threat.as_dict(),
        "attack_config": cell.attack.as_dict(),
        "advx_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "seed": cell.options.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def failed_outcome(unit: Unit, device: str | torch.device, error: str) -> CellOutcome:
    """A cell or shard that could not run to its end (its worker died, hung or was killed): a
    failed row with the cause."""
    row = base_row(cell_of(unit), torch.device(device))
    row.update(error=error, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return CellOutcome(CellRow(**row), shard=_shard_record(unit) if isinstance(unit, Shard) else None)


def _shard_record(shard: Shard, **kw: Any) -> dict[str, Any]:
    return {"index": shard.index, "count": shard.count, "start": shard.start, "stop": shard.stop, **kw}


class CellTimeout(AdvxError):
    """A cell ran past ``[matrix] cell_timeout``."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise ``CellTimeout`` in this thread after ``seconds``: POSIX, on the main thread, when no
    other timer is set (elsewhere nothing happens, and a worker's driver enforces the limit)."""
    usable = (
        seconds is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise CellTimeout(f"the cell ran past [matrix] cell_timeout = {seconds:g} s and was stopped")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def execute_cell(unit: Unit, ws: Workspace) -> CellOutcome:
    """Run one cell, or one shard of a cell; return its row, records and trainings (never
    raises for cell errors), within ``[matrix] cell_timeout`` (a shard's limit is the cell's)."""
    try:
        with deadline(unit.options.cell_timeout):
            return _execute_cell(cell_of(unit), ws, unit if isinstance(unit, Shard) else None)
    except CellTimeout as exc:  # past the cell's own handler (it was building its row)
        return failed_outcome(unit, ws.device, str(exc))


def _execute_cell(cell: Cell, ws: Workspace, shard: Shard | None = None) -> CellOutcome:
    """A cell, or the examples ``[shard.start, shard.stop)`` of its evaluation set: crafted
    with the batch seeds of their positions in the cell (``CraftOptions.first``), the
    diagnostics on the cell's first examples (shard 0's), the kept examples among the
    cell's first ``keep_examples``."""
    t0 = time.perf_counter()
    record: dict[str, Any] | None = _shard_record(shard) if shard is not None else None
    first_training = len(ws.trainings)
    row = base_row(cell, ws.device)
    samples: dict[str, Tensor] | None = None
    stage = f'dataset "{cell.dataset.name}"'
    try:
        ds = ws.dataset(cell.dataset)
        info = ds.info()
        stage = f'defense "{cell.defense.name}" on model "{cell.model.name}"'
        target = ws.defended_model(cell.dataset, cell.model, cell.defense, cell=cell)
        attack: Attack = ws.plugin(cell.attack)  # type: ignore[assignment]
        row["attack_traits"] = attack.traits()
        reason = cell.threat.not_applicable(target)
        if reason is not None:
            row["status"] = "not-applicable"
            row["reason"] = f"{cell.threat.name}: {reason}"
        else:
            stage = "the evaluation set"
            x, y, idx = ws.eval_set(cell, target)
            options = ws.craft_options(cell, info)
            first, diagnostics = 0, cell.options.diagnostics
            if shard is not None:
                first, diagnostics = shard.start, diagnostics and shard.index == 0
                x, y, idx = x[shard.start : shard.stop], y[shard.start : shard.stop], idx[shard.start : shard.stop]
                options = replace(options, first=first)
                record["num_classes"] = info.num_classes  # type: ignore[index]
                if not len(x):  # past the end of an evaluation set smaller than the plan's bound
                    raise _EmptyShard
            # before a source model is trained for nothing
            preflight(x, info.bounds, info.num_classes, ws.device, cell.options.batch_size, target)
            stage = f'threat model "{cell.threat.name}"'
            view = cell.threat.attack_view(ws, cell, target)
            stages = {
                "checks": f'threat model "{cell.threat.name}"',
                "attack": f'attack "{cell.attack.name}"',
                "scoring": f'scoring on defense "{cell.defense.name}"',
                "diagnostics": f'diagnostics of attack "{cell.attack.name}"',
            }

            def on_stage(name: str) -> None:
                nonlocal stage
                stage = stages[name]

            out = attack_model(
                attack, target, x, y, options, view=view.module, index=idx, crafter=ws.crafter(cell, view, idx),
                diagnostics=diagnostics, eot=cell.threat.eot_draws(view.module),
                where=f'defense "{cell.defense.name}"', checked=(target,), on_stage=on_stage,
            )
            crafted, samples = out.crafted, out.samples
            row["metrics"] = out.metrics
            row["crafted_by"] = crafted.origin if out.reused else None
            row["batch_size"] = crafted.batch_size
            row["details"] = {**out.details, "crafted_on": cell.threat.label()}
            row["status"] = "done"
            k = max(0, min(cell.options.keep_examples - first, len(x)))
            if record is not None:
                cost = out.crafted.cost
                record.update(
                    n=len(x), reused=out.reused, attack_seconds=cost.seconds, forwards=cost.forwards, backwards=cost.backwards,
                    details={k_: v for k_, v in out.details.items() if k_ in ("attack_info", "diagnostics")},
                    silent_success=out.crafted.silent_success,
                )
            if k:
                # the first K inputs, for galleries (ResultStore.record puts them in the examples table)
                clean_key, adv_key = EXAMPLE_KEYS
                samples[clean_key] = x[:k].detach().to("cpu", torch.float16)
                samples[adv_key] = crafted.x_adv[:k].detach().to("cpu", torch.float16)
    except _EmptyShard:
        row["status"] = "done"
        record.update(n=0, reused=False, attack_seconds=0.0, forwards=0, backwards=0, details={}, silent_success=None)  # type: ignore[union-attr]
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the matrix goes on
        row["status"] = "failed"
        if isinstance(exc, CellTimeout):
            row["error"] = f"{exc} (in {stage})"
        else:
            row["error"] = str(exc) if isinstance(exc, AdvxError) else f"{stage} raised {type(exc).__name__}: {exc}"
        row["details"] = {"traceback": traceback.format_exc(limit=8)}
        samples = None
    trainings = ws.trainings[first_training:]
    train_seconds = sum(t.seconds for t in trainings)
    row["seconds"] = max(time.perf_counter() - t0 - train_seconds, 0.0)
    row["train_seconds"] = train_seconds
    row["trainings"] = [t.as_dict() for t in trainings]
    row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return CellOutcome(CellRow(**row), samples, [t.as_dict() for t in trainings], record)


class _EmptyShard(Exception):
    """A shard past the end of its cell's examples (raised and caught in ``_execute_cell``)."""
