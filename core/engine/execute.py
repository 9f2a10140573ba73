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
from dataclasses import dataclass, field
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
from advx.engine.plan import Cell
from advx.engine.workspace import Workspace


@dataclass
class CellOutcome:
    """A finished cell: its result row, per-sample records and the trainings it triggered."""

    row: CellRow
    samples: dict[str, Tensor] | None = None
    trainings: list[dict[str, Any]] = field(default_factory=list)


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


def failed_outcome(cell: Cell, device: str | torch.device, error: str) -> CellOutcome:
    """A cell that could not run to its end (its worker died, hung or was killed): a failed row with the cause."""
    row = base_row(cell, torch.device(device))
    row.update(error=error, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return CellOutcome(CellRow(**row))


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


def execute_cell(cell: Cell, ws: Workspace) -> CellOutcome:
    """Run one cell; return its row, records and trainings (never raises for cell errors),
    within ``[matrix] cell_timeout``."""
    try:
        with deadline(cell.options.cell_timeout):
            return _execute_cell(cell, ws)
    except CellTimeout as exc:  # past the cell's own handler (it was building its row)
        return failed_outcome(cell, ws.device, str(exc))


def _execute_cell(cell: Cell, ws: Workspace) -> CellOutcome:
    t0 = time.perf_counter()
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
                diagnostics=cell.options.diagnostics, eot=cell.threat.eot_draws(view.module),
                where=f'defense "{cell.defense.name}"', checked=(target,), on_stage=on_stage,
            )
            crafted, samples = out.crafted, out.samples
            row["metrics"] = out.metrics
            row["crafted_by"] = crafted.origin if out.reused else None
            row["batch_size"] = crafted.batch_size
            row["details"] = {**out.details, "crafted_on": cell.threat.label()}
            row["status"] = "done"
            k = cell.options.keep_examples
            if k:
                # the first K inputs, for galleries (ResultStore.record puts them in the examples table)
                clean_key, adv_key = EXAMPLE_KEYS
                samples[clean_key] = x[:k].detach().to("cpu", torch.float16)
                samples[adv_key] = crafted.x_adv[:k].detach().to("cpu", torch.float16)
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
    return CellOutcome(CellRow(**row), samples, [t.as_dict() for t in trainings])
