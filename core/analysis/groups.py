"""Grouping finished cells by what they are, and labelling groups so that readers can tell them apart.

Tables, the worst case and the sanity checks group rows by the identity of their parts
(``CellRow.identity``: the data with its fingerprint, the model with its training, the
defense, the threat model with its source, the examples), never by display labels, which
show only what a spec set. Where two groups share a label, the label gets what differs
(``[train.epochs=3]``), so no number is shown beside a description that is not its own.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from advx.analysis.rows import CellRow

def robust_share(robust: Mapping[int, bool]) -> float | None:
    """The worst case's number: the share of examples robust under every attack of a group
    (``ResultStore.worst_case_examples``), ``None`` for no examples."""
    return sum(robust.values()) / len(robust) if robust else None


#: the parts that make a place: the evaluated model and the attacker's knowledge of it
PLACE_PARTS = ("dataset", "model", "defense", "threat", "examples", "seed")
#: the parts that make the evaluated model and its examples (a row of the report's matrix)
MODEL_PARTS = ("dataset", "model", "defense", "examples")
_CONFIG_OF = (
    ("dataset", "dataset_config", "dataset."),
    ("model", "model_config", "model."),
    ("model", "train_config", "train."),
    ("defense", "defense_config", "defense."),
    ("threat", "threat_config", "threat."),
    ("attack", "attack_config", "attack."),
)


def constraint(row: CellRow) -> str:
    """The threat constraint of a row: its norm and eps, or unbounded (minimum-norm attacks)."""
    norm = row.attack_traits.get("norm", "?")
    return f"{norm} eps={row.eps:g}" if row.eps is not None else f"{norm} unbounded"


def differences(a: CellRow, b: CellRow, parts: Sequence[str]) -> str:
    """What tells ``a`` apart from ``b`` among ``parts``, as ``key=value`` of ``a`` (at most three)."""
    out = []
    for part, cfg, prefix in _CONFIG_OF:
        if part not in parts:
            continue
        da, db = getattr(a, cfg) or {}, getattr(b, cfg) or {}
        for k in sorted(set(da) | set(db)):
            if da.get(k) != db.get(k):
                out.append(f"{prefix}{k}={json.dumps(da.get(k), default=str)}")
    if not out:
        for part in parts:
            if a.part(part) != b.part(part):
                what = {"dataset": "other data (files changed)", "examples": "other examples", "seed": f"seed={a.seed}"}
                out.append(what.get(part, f"another {part}"))
    return ", ".join(out[:3]) or "another identity"


def distinct_labels(rows: Sequence[CellRow], parts: Sequence[str], label: Callable[[CellRow], str]) -> dict[str, str]:
    """``label(row)`` per cell key, with what differs appended where rows of one label differ in ``parts``."""
    by_label: dict[str, dict[tuple[str, ...], CellRow]] = defaultdict(dict)
    for r in rows:
        by_label[label(r)].setdefault(r.part(*parts), r)
    out: dict[str, str] = {}
    for r in rows:
        groups = by_label[label(r)]
        if len(groups) == 1:
            out[r.cell_key] = label(r)
        else:
            other = next(o for k, o in groups.items() if k != r.part(*parts))
            out[r.cell_key] = f"{label(r)} [{differences(r, other, parts)}]"
    return out


def place_labels(rows: Sequence[CellRow]) -> dict[str, str]:
    """The place label of each row (dataset / model / defense / threat), told apart where needed."""
    return distinct_labels(rows, PLACE_PARTS, CellRow.place)


def place_groups(
    rows: Sequence[CellRow], key: Callable[[CellRow], str], keep: Callable[[CellRow], bool] = lambda r: True
) -> list[tuple[str, str, list[CellRow]]]:
    """(place label, key, cells): the finished cells (with a robust accuracy, and ``keep``) of
    one place (by identity) and one ``key(cell)``, in order of first appearance: the groups
    per-example analyses compare (they share model and examples)."""
    done = [r for r in rows if r.done and r.robust_accuracy is not None and keep(r)]
    labels = place_labels(done)
    groups: dict[tuple, list[CellRow]] = defaultdict(list)
    for r in done:
        groups[(r.part(*PLACE_PARTS), key(r))].append(r)
    return [(labels[cells[0].cell_key], k, cells) for (_, k), cells in groups.items()]


def worst_case_groups(rows: Sequence[CellRow], min_size: int = 2) -> list[tuple[str, str, list[CellRow]]]:
    """(place label, constraint, cells): finished cells of one place and one threat constraint,
    the groups a per-example worst case is taken over (they share model and examples)."""
    return [g for g in place_groups(rows, constraint) if len(g[2]) >= min_size]
