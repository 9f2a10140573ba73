"""Executing one cell: from its models to its result row.

The steps, each owned by one kernel module: the defended model (``workspace``), whether
the threat model applies (``threats``), the evaluation examples, the guards
(``guards.preflight``, ``guards.check_requires``), the attacker's view (``threats``),
crafting (``crafting``, reused where another cell crafted the same examples), scoring
(``scoring``) and the metrics (``metrics``). ``execute_cell`` never raises for a cell's
own errors: a failing cell becomes a row with status ``failed`` and the error, naming
the plugin that raised.

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
from advx.analysis.diagnostics import PROBE, convergence, gradient_health, random_forward
from advx.runtime.guards import check_requires, preflight
from advx.contract.protocols import bpda
from advx.contract.interfaces import Attack
from advx.store.schema import EXAMPLE_KEYS
from advx.analysis.metrics import breakdown_by_class, breakdown_by_confidence, roc_points, summarize
from advx.analysis.scoring import score
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


def _with_bpda(module: torch.nn.Module, enabled: bool, fn: Any) -> Any:
    with bpda(module, enabled):
        return fn()


def diagnose(
    cell: Cell, ws: Workspace, attack: Attack, target: torch.nn.Module, view: torch.nn.Module, x: Tensor, y: Tensor,
    crafted: Any, reused: bool, info: Any,
) -> dict[str, Any]:
    """The cell's evaluation diagnostics (see ``advx.analysis.diagnostics``), on the first ``PROBE`` examples."""
    n = min(PROBE, len(x))
    xp, yp = x[:n].to(ws.device), y[:n].to(ws.device)
    out: dict[str, Any] = {
        # measured as the attack sees the module: through BPDA when the threat model uses it
        "gradients": _with_bpda(view, cell.threat.config.bpda, lambda: gradient_health(view, xp, yp)),
        # the module the attack sees: an undefended or transfer attacker facing a random
        # defense crafts on a deterministic model and needs no EOT
        "random_forward": random_forward(view, xp),
        "eot": cell.threat.eot_draws(view),
        "silent_success": crafted.silent_success,
    }
    if not reused:
        out["convergence"] = convergence(
            attack, view, x[:n], y[:n], crafted.x_adv[:n], crafted.target[:n], info.bounds, info.num_classes, ws.device, cell.options.seed
        )
    return out


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
            checks = (x, info.bounds, info.num_classes, ws.device, cell.options.batch_size)
            preflight(*checks, target)  # before a source model is trained for nothing
            stage = f'threat model "{cell.threat.name}"'
            view = cell.threat.attack_view(ws, cell, target)
            if view.module is not target:
                preflight(*checks, view.module)
            check_requires(attack.name, attack.requires, view.module, cell.threat.config.bpda, f'defense "{cell.defense.name}"')
            stage = f'attack "{cell.attack.name}"'
            crafted, reused = ws.crafted(cell, attack, view, x, y, idx, info)
            stage = f'scoring on defense "{cell.defense.name}"'
            samples = score(target, x, y, crafted, ws.device, crafted.batch_size or cell.options.batch_size, idx)
            row["metrics"] = summarize(samples, None if reused else crafted.cost)
            row["crafted_by"] = crafted.origin if reused else None
            row["batch_size"] = crafted.batch_size
            details: dict[str, Any] = {
                "per_class": breakdown_by_class(samples, info.num_classes),
                "per_confidence": breakdown_by_confidence(samples),
                "crafted_on": cell.threat.label(),
            }
            if row["metrics"].get("detection_auc") is not None:
                details["roc"] = roc_points(samples["clean_score"], samples["adv_score"])
            if crafted.info:
                details["attack_info"] = {k: v.tolist() for k, v in crafted.info.items()}
            if cell.options.diagnostics:
                stage = f'diagnostics of attack "{cell.attack.name}"'
                details["diagnostics"] = diagnose(cell, ws, attack, target, view.module, x, y, crafted, reused, info)
            row["details"] = details
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
