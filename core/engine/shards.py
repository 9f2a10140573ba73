"""Sharded cells: a cell's examples split into shards (``[matrix] shard_size``), each stored as
it finishes, and the cell's row computed from all of them when the last is in.

A shard (``advx.engine.plan.Shard``) is the unit of work of every executor: a run hands out
the shards of its sharded cells that the results file does not hold yet, so a run killed
mid-cell loses at most the shards that were running, and a rerun computes only the missing
ones. Shards are crafted with the batch seeds of their positions in the cell
(``CraftOptions.first``) and random draws are keyed by example (``ExampleNoise``), so the
merged cell equals the cell computed whole, example by example.

The merge (``merge``) measures the cell from the records of every example with the one
definition of a row's numbers (``advx.engine.pipeline.measure``): the detection AUC, the
breakdowns, and the intervals and worst case computed later from the stored records, need
every example, not an average over shards. Cost is summed over shards; the diagnostics are
shard 0's (the probes use the cell's first examples), with silent success summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from advx.analysis.rows import CellRow
from advx.engine.execute import CellOutcome, base_row
from advx.engine.pipeline import measure
from advx.engine.plan import Cell, Shard, Unit, shards
from advx.runtime.crafting import Cost
from advx.store.schema import EXAMPLE_KEYS


def entry(row: CellRow, shard: dict[str, Any]) -> dict[str, Any]:
    """The shards-table record (``advx.store.schema.SHARD_COLUMNS``) of a finished shard: its
    row and what ``execute_cell`` returned for it (``CellOutcome.shard``)."""
    return {
        "shard": shard["index"], "count": shard["count"], "start": shard["start"], "stop": shard["stop"],
        "status": row.status, "n": shard.get("n", 0), "seconds": row.seconds, "train_seconds": row.train_seconds,
        "attack_seconds": shard.get("attack_seconds", 0.0), "forwards": shard.get("forwards", 0),
        "backwards": shard.get("backwards", 0), "started": row.started, "finished": row.finished,
        "details": {
            **(shard.get("details") or {}), "silent_success": shard.get("silent_success"), "batch_size": row.batch_size,
            "crafted_by": row.crafted_by, "device": row.device, "attack_traits": row.attack_traits, "reason": row.reason,
            "num_classes": shard.get("num_classes"), "reused": bool(shard.get("reused")), "trainings": row.trainings,
        },
    }


def merge(cell: Cell, entries: Sequence[dict[str, Any]], samples: dict[str, Tensor]) -> CellRow:
    """The row of ``cell`` from the entries of all its shards (in order) and the per-sample
    records of all its examples."""
    first = entries[0]["details"]
    row = base_row(cell, torch.device("cpu"))
    row.update(
        status="done", device=first.get("device"), attack_traits=first.get("attack_traits") or {},
        started=min(e["started"] for e in entries if e["started"]), finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=sum(e["seconds"] or 0.0 for e in entries), train_seconds=sum(e["train_seconds"] or 0.0 for e in entries),
        trainings=[t for e in entries for t in e["details"].get("trainings") or []],
    )
    applies = [e for e in entries if e["status"] != "not-applicable"]
    if not applies:
        row.update(status="not-applicable", reason=first.get("reason"))
        return CellRow(**row)
    used = [e for e in applies if e["n"]]
    reused = any(e["details"].get("reused") for e in used)
    cost = None if reused else Cost(sum(e["attack_seconds"] for e in used), sum(e["forwards"] for e in used), sum(e["backwards"] for e in used))
    metrics, details = measure(samples, cost, applies[0]["details"]["num_classes"])
    infos = [e["details"]["attack_info"] for e in used if e["details"].get("attack_info")]
    if infos:
        details["attack_info"] = {k: [v for info in infos for v in info.get(k, [])] for k in infos[0]}
    diagnostics = applies[0]["details"].get("diagnostics")
    if diagnostics is not None:
        silent = [e["details"].get("silent_success") for e in used]
        diagnostics = {**diagnostics, "silent_success": None if any(s is None for s in silent) else sum(silent)}
        details["diagnostics"] = diagnostics
    details["crafted_on"] = cell.threat.label()
    details["shards"] = {"count": len(entries), "shard_size": cell.options.shard_size}
    head = applies[0]["details"]
    row.update(metrics=metrics, details=details, crafted_by=head.get("crafted_by"), batch_size=head.get("batch_size"))
    return CellRow(**row)


def _cat(parts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k not in EXAMPLE_KEYS}


class ShardBook:
    """The shards of a run's sharded cells: which to compute, where each goes when it finishes,
    and the cell's row once all are in.

    With a results file, shards are stored there (``ResultStore.record_shard``) and the merge
    reads every shard from it, those of earlier or concurrent runs included (whichever run
    stores a cell's last shard merges it); without one, they are kept here. ``rerun``: shards
    stored before are computed again.
    """

    def __init__(self, store: Any, rerun: bool, spec_name: str, spec_hash: str) -> None:
        self.store = store
        self.rerun = rerun
        self.spec = {"spec_name": spec_name, "spec_hash": spec_hash}
        self.plans: dict[str, list[Shard]] = {}
        self.kept: dict[str, dict[int, tuple[dict[str, Any], dict[str, Tensor]]]] = {}  # without a store
        self.failed: set[str] = set()

    def units(self, cells: Sequence[Cell]) -> list[Unit]:
        """The work of ``cells``: each cell whole, or its shards not stored yet."""
        out: list[Unit] = []
        for cell in cells:
            plan = shards(cell)
            if not plan:
                out.append(cell)
                continue
            self.plans[cell.key] = plan
            have = {e["shard"] for e in self._stored(cell.key)} if not self.rerun else set()
            out.extend(s for s in plan if s.index not in have)
        return out

    def stored(self, cell: Cell) -> int:
        """Shards of ``cell`` already stored (not computed by this run)."""
        return 0 if self.rerun else len(self._stored(cell.key))

    def _stored(self, key: str) -> list[dict[str, Any]]:
        """Stored entries of cell ``key`` that match this run's plan (a changed ``shard_size``
        stores other ranges: those are computed again)."""
        if self.store is None:
            return [e for e, _ in self.kept.get(key, {}).values()]
        plan = {(s.index, s.start, s.stop, s.count) for s in self.plans.get(key, [])}
        return [e for e in self.store.shard_records(key) if (e["shard"], e["start"], e["stop"], e["count"]) in plan]

    def add(self, shard: Shard, outcome: CellOutcome) -> CellRow | None:
        """Store a finished shard; return the cell's row when it completes it (merged) or when
        it failed (the first failure of the cell: its other shards are kept for the rerun)."""
        cell = shard.cell
        row = outcome.row.replace(**self.spec)
        if row.status == "failed":
            if cell.key in self.failed:
                return None
            self.failed.add(cell.key)
            row = row.replace(error=f"shard {shard.index + 1}/{shard.count} (examples {shard.start}-{shard.stop - 1}): {row.error}")
            if self.store is not None and not self.store.record(row, None, outcome.trainings, sharded=True):
                return self.store.cell(row.cell_key) or row  # finished by another run
            return row
        e = entry(row, {**(outcome.shard or {}), "index": shard.index, "count": shard.count, "start": shard.start, "stop": shard.stop})
        if self.store is not None:
            self.store.record_shard(row, e, outcome.samples, outcome.trainings, reopen=cell.key not in self.failed)
        else:
            self.kept.setdefault(cell.key, {})[shard.index] = (e, outcome.samples or {})
        if cell.key in self.failed:
            return None
        entries = sorted(self._stored(cell.key), key=lambda x: x["shard"])
        if [x["shard"] for x in entries] != list(range(shard.count)):
            return None
        if self.store is not None:
            samples = self.store.samples(cell.key)
        else:
            samples = _cat([self.kept[cell.key][i][1] for i in range(shard.count)])
        merged = merge(cell, entries, samples).replace(**self.spec)
        if self.store is not None:
            self.store.record(merged, None, (), sharded=True)
        return merged
