"""Forward migrations of results files: a file written by an older advx is upgraded in place.

Opening a file of an older schema (``ResultStore``) first copies it beside itself
(``results.db.bak-v2``), then runs every migration from its version to ours in one
transaction, and says so in one line. Each migration is one function here, keyed by the
version it starts from; a schema change adds one and keeps the fixture test
(``tests/store/test_migrations.py``, a file written by an earlier advx) green.

Version 2 (advx up to 0.1.0 of 2026-12-06) had one column per metric and a ``metrics``
column holding breakdowns; version 3 keeps metrics by name in JSON (a new metric needs
no migration), names the breakdowns ``details``, defines robust accuracy as the field does
(correct both clean and under attack; version 2's number is kept as ``adversarial_accuracy``), stores what identifies each part of a
cell (``identity``) and the threat model's traits with each row, and marks which cells
of a spec are its current ones (``members.current``). Version 4 adds the ``claims`` table:
the cells a live run is computing (owner, heartbeat, expiry), so that two runs on one file
share the work. Version 5 adds the ``shards`` table: the stored shards of sharded cells
(``[matrix] shard_size``), and the ``partial`` status of a cell some of whose shards are in.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advx.analysis.metrics import METRICS

#: the traits of the threat models advx 0.1.0 had built in (version 2 rows did not store them)
_V2_THREAT_TRAITS = {
    "white-box": {"less_knowledge": False, "surrogate": False},
    "member-mean": {"less_knowledge": False, "surrogate": False},
    "detector-aware": {"less_knowledge": False, "surrogate": False},
    "undefended": {"less_knowledge": True, "surrogate": True},
    "transfer": {"less_knowledge": True, "surrogate": True},
    "gray-box": {"less_knowledge": True, "surrogate": True},
    "member": {"less_knowledge": True, "surrogate": True},
}


def _v2_identity(row: dict[str, Any]) -> dict[str, Any]:
    """The parts of a version 2 cell, rebuilt from its stored configs (as its key hashed them)."""
    ds = json.loads(row["dataset_config"] or "{}")
    model = json.loads(row["model_config"] or "{}")
    train = json.loads(row["train_config"]) if row.get("train_config") else None
    defense = json.loads(row["defense_config"] or "{}")
    threat = json.loads(row["threat_config"] or "{}")
    attack = json.loads(row["attack_config"] or "{}")

    def ref(d: dict[str, Any], extra: list[Any] | None = None) -> list[Any]:
        name = d.pop("name", None)
        d.pop("train", None)
        return [name, d, *(extra or [])]

    return {
        "dataset": ref(dict(ds)),
        "model": ref(dict(model), [train] if train is not None else None),
        "defense": ref(dict(defense)),
        "threat": _threat_key(threat),
        "attack": ref(dict(attack)),
        # version 2 did not store how the examples were chosen: cells with the same count
        # and seed share them (every spec of that version chose them the same way)
        "examples": {"n": row.get("n"), "legacy": True},
        "seed": row.get("seed"),
    }


def _threat_key(threat: dict[str, Any]) -> list[Any]:
    """``ThreatModel.key()`` of a stored threat config: name, config without the source, source key."""
    d = dict(threat)
    name = d.pop("name", None)
    source = d.pop("source", None)
    if source is not None:
        source = dict(source)
        train = source.pop("train", None)
        source = [source.pop("name", None), source] + ([train] if train is not None else [])
    return [name, d, source]


def _standard_robust_accuracy(
    conn: sqlite3.Connection, cell_key: str, metrics: dict[str, Any], details: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Version 2's ``robust_accuracy`` was the accuracy on the adversarial examples: it becomes
    ``adversarial_accuracy``, and ``robust_accuracy`` (correct both clean and under attack) is
    recomputed from the stored per-example records, with the per-class and per-confidence
    breakdowns; without records it is left out rather than guessed."""
    from advx.analysis.metrics import breakdown_by_class, breakdown_by_confidence
    from advx.store.schema import read_samples

    metrics = dict(metrics)
    metrics["adversarial_accuracy"] = metrics.pop("robust_accuracy")
    s = read_samples(conn, cell_key)
    if not len(s["idx"]):
        return metrics, details
    metrics["robust_accuracy"] = float(((s["clean_pred"] == s["label"]) & (s["adv_pred"] == s["label"])).float().mean())
    if details is not None and "per_class" in details:
        k = max([int(c) + 1 for c in details["per_class"] if str(c).isdigit()] + [int(s["label"].max()) + 1])
        details = {**details, "per_class": breakdown_by_class(s, k), "per_confidence": breakdown_by_confidence(s)}
    return metrics, details


def v2_to_v3(conn: sqlite3.Connection) -> str:
    from advx.store.schema import CELL_COLUMNS

    cur = conn.execute("SELECT * FROM cells")
    names = [d[0] for d in cur.description]
    old = [dict(zip(names, r)) for r in cur.fetchall()]
    conn.execute("ALTER TABLE cells RENAME TO cells_v2")
    cols = ", ".join(f"{c.name} {c.sql}" + (" PRIMARY KEY" if c.name == "cell_key" else "") for c in CELL_COLUMNS)
    conn.execute(f"CREATE TABLE cells ({cols})")
    metric_names = [m.name for m in METRICS]
    for r in old:
        new: dict[str, Any] = {c.name: r.get(c.name) for c in CELL_COLUMNS if c.name in r and c.name != "metrics"}
        metrics = {k: r[k] for k in metric_names if k in r and r[k] is not None}
        details = json.loads(r["metrics"]) if r.get("metrics") else None
        if "robust_accuracy" in metrics:
            metrics, details = _standard_robust_accuracy(conn, r["cell_key"], metrics, details)
        new["metrics"] = json.dumps(metrics, sort_keys=True)
        new["details"] = None if details is None else json.dumps(details, sort_keys=True)
        new["identity"] = json.dumps(_v2_identity(r), sort_keys=True, default=str)
        threat = json.loads(r.get("threat_config") or "{}").get("name")
        new["threat_traits"] = json.dumps(_V2_THREAT_TRAITS.get(threat, {}), sort_keys=True)
        keys = list(new)
        conn.execute(f"INSERT INTO cells({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})", [new[k] for k in keys])
    # samples and examples reference cells(cell_key): rebuild them against the new table
    for table in ("samples", "examples"):
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
            ddl = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()[0]
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v2")
            conn.execute(ddl.replace("cells_v2", "cells"))
            conn.execute(f"INSERT INTO {table} SELECT * FROM {table}_v2")
            conn.execute(f"DROP TABLE {table}_v2")
    conn.execute("DROP TABLE cells_v2")
    conn.execute("DROP INDEX IF EXISTS cells_spec")
    conn.execute("CREATE INDEX IF NOT EXISTS cells_spec ON cells(spec_name)")
    conn.execute("ALTER TABLE members ADD COLUMN current INTEGER NOT NULL DEFAULT 1")
    return (
        f"{len(old)} cells: metrics by name, breakdowns as details, identities and threat traits rebuilt from the stored "
        "configs, robust accuracy recomputed as the share correct both clean and under attack (the old number is "
        "adversarial_accuracy)"
    )


def v3_to_v4(conn: sqlite3.Connection) -> str:
    from advx.store.schema import CLAIMS_DDL

    conn.execute(CLAIMS_DDL)
    return "a claims table (the cells a live run is computing)"


def v4_to_v5(conn: sqlite3.Connection) -> str:
    from advx.store.schema import SHARDS_DDL

    conn.execute(SHARDS_DDL)
    return "a shards table (the stored shards of cells split by [matrix] shard_size)"


#: version -> the migration to version + 1
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], str]] = {2: v2_to_v3, 3: v3_to_v4, 4: v4_to_v5}


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.bak-v{version}")


def migrate(path: Path, version: int, target: int) -> str:
    """Upgrade the file at ``path`` from ``version`` to ``target`` in one transaction, after a
    backup copy; return the one line that says so."""
    from advx.contract.errors import DataError

    steps = list(range(version, target))
    missing = [v for v in steps if v not in MIGRATIONS]
    if missing:
        raise DataError(
            f"{str(path)!r} has results schema {version}, which this advx cannot migrate (no migration from {missing[0]}); "
            "use a new --db file"
        )
    backup = backup_path(path, version)
    shutil.copy2(path, backup)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN IMMEDIATE")
        try:
            notes = [MIGRATIONS[v](conn) for v in steps]
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(target),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return (
        f"{str(path)!r}: results schema {version} migrated to {target} ({'; '.join(notes)}); "
        f"the file as it was is kept in {str(backup)!r}"
    )
