"""The result schema: the SQLite shape of a ``CellRow``, a per-sample record and a training row.

The cells table has one column per ``CellRow`` field (``advx.analysis.rows``); metrics
live in its JSON ``metrics`` column by name, so declaring a metric (``advx.analysis.metrics``)
changes no table shape and needs no migration. The ``advx results`` tables and the
Markdown export show ``TABLE_COLUMNS`` (the place labels and every metric declared with a
header); CSV and JSON exports carry ``EXPORT_COLUMNS`` (every field, each metric beside
them). A schema change is a new ``SCHEMA_VERSION`` with a migration in
``advx.store.migrations``.

A cell row's ``status`` is ``done``, ``failed`` (``error`` says why),
``not-applicable`` (``reason`` says why: e.g. a ``member`` threat on a defense that is not
an ensemble) or ``partial``: a sharded cell (``[matrix] shard_size``) some of whose
shards are stored (the ``shards`` table; their per-sample records are in the samples
table) and the others not yet computed. A partial cell has no metrics: they are computed
from every example when its last shard is in, and a rerun computes only the missing
shards. A sharded cell that failed keeps its finished shards for the rerun.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any

from advx.analysis.metrics import METRICS
from advx.analysis.records import SAMPLE_COLUMN_NAMES, SAMPLE_COLUMNS
from advx.analysis.rows import JSON_FIELDS, CellRow

SCHEMA_VERSION = 5


@dataclass(frozen=True)
class Column:
    """One column of a table (or of the result tables shown by the CLI)."""

    name: str
    sql: str = "TEXT"  # TEXT, REAL, INTEGER or BLOB
    json: bool = False  # stored as JSON text, decoded once when read
    header: str | None = None  # heading in result tables (None: not shown by default)
    fmt: str = ""  # format of numbers in tables
    description: str = ""


def _sql(tp: str) -> str:
    if tp.startswith(("float",)):
        return "REAL"
    if tp.startswith(("int",)):
        return "INTEGER"
    return "TEXT"


_HEADERS = {"dataset": "dataset", "model": "model", "defense": "defense", "threat": "threat", "attack": "attack"}
_HINTS = typing.get_type_hints(CellRow)

#: the cells table: one column per CellRow field
CELL_COLUMNS: tuple[Column, ...] = tuple(
    Column(f.name, _sql(str(f.type)), json=f.name in JSON_FIELDS, header=_HEADERS.get(f.name)) for f in fields(CellRow)
)
CELL_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in CELL_COLUMNS)
JSON_COLUMNS = JSON_FIELDS
METRIC_COLUMNS: tuple[Column, ...] = tuple(Column(m.name, m.sql, header=m.header, fmt=m.fmt, description=m.description) for m in METRICS)
BY_NAME = {c.name: c for c in (*CELL_COLUMNS, *METRIC_COLUMNS)}
PLACE_COLUMNS = ("dataset", "model", "defense", "threat", "attack")
#: the columns result tables show by default, in order: the place, then the metrics with a header
TABLE_COLUMNS: tuple[Column, ...] = tuple(BY_NAME[n] for n in PLACE_COLUMNS) + tuple(c for c in METRIC_COLUMNS if c.header)
#: the columns of a CSV export (and the keys of a JSON export's rows)
EXPORT_COLUMNS: tuple[str, ...] = tuple(CellRow(cell_key="", status="").flat())

#: the examples table: the first ``[matrix] keep_examples`` clean and adversarial inputs of
#: each cell (for galleries: ``advx report``, ``advx results --examples``); joined with the
#: samples table on (cell_key, idx) for labels, predictions and confidences. Tensors are
#: stored as zlib-compressed float16 bytes of ``shape``.
EXAMPLE_COLUMNS: tuple[Column, ...] = (
    Column("idx", "INTEGER", description="index of the example in the test split"),
    Column("shape", description="shape of one example, as JSON"),
    Column("x", "BLOB", description="the clean input (zlib-compressed float16)"),
    Column("x_adv", "BLOB", description="the adversarial input (zlib-compressed float16)"),
)
#: keys under which ``execute_cell`` hands the kept examples to ``ResultStore.record`` in the
#: samples dict (tensors of shape (K, *input_shape); not per-sample columns)
EXAMPLE_KEYS = ("example_x", "example_x_adv")

#: the trainings table: one row per trained model or fitted artifact
TRAINING_COLUMNS: tuple[Column, ...] = (
    Column("key", description="training key (the checkpoint's name in the cache)"),
    Column("kind", description="model or artifact"),
    Column("description"),
    Column("seconds", "REAL", fmt=".2f"),
    Column("cached", "INTEGER", description="1 if it was loaded (from the cache, or a model file: Model.pretrained), not trained"),
    Column("recorded"),
)


def read_samples(conn: Any, cell_key: str) -> dict[str, Any]:
    """The per-sample records of one cell as tensors (NULL floats read as NaN), from an SQLite connection."""
    import torch

    rows = conn.execute(f"SELECT {', '.join(SAMPLE_COLUMN_NAMES)} FROM samples WHERE cell_key = ? ORDER BY idx", (cell_key,)).fetchall()
    out = {}
    for i, c in enumerate(SAMPLE_COLUMNS):
        if c.dtype.is_floating_point:
            out[c.name] = torch.tensor([float("nan") if r[i] is None else r[i] for r in rows], dtype=c.dtype)
        else:
            out[c.name] = torch.tensor([r[i] for r in rows], dtype=c.dtype)
    return out


#: the shards table: one row per stored shard of a sharded cell (``[matrix] shard_size``):
#: its place in the cell and what the merge of the shards needs (``advx.engine.shards``)
SHARD_COLUMNS: tuple[Column, ...] = (
    Column("shard", "INTEGER", description="index of the shard in its cell (0-based)"),
    Column("count", "INTEGER", description="shards of the cell"),
    Column("start", "INTEGER", description="position in the cell's evaluation set of the shard's first example"),
    Column("stop", "INTEGER", description="position after its last example"),
    Column("status", description="done or not-applicable"),
    Column("n", "INTEGER", description="examples of the shard"),
    Column("seconds", "REAL", fmt=".2f", description="crafting and scoring time of the shard"),
    Column("train_seconds", "REAL", fmt=".2f", description="trainings done while it ran"),
    Column("attack_seconds", "REAL", fmt=".2f", description="crafting time (the attack's cost)"),
    Column("forwards", "INTEGER", description="forward passes of the attack"),
    Column("backwards", "INTEGER", description="backward passes of the attack"),
    Column("details", json=True, description="attack info, diagnostics (shard 0), silent success, batch size, device, trainings"),
    Column("started"),
    Column("finished"),
)
SHARD_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SHARD_COLUMNS)
SHARDS_DDL = (
    "CREATE TABLE IF NOT EXISTS shards (cell_key TEXT NOT NULL REFERENCES cells(cell_key) ON DELETE CASCADE, "
    + ", ".join(f"{c.name} {c.sql}" for c in SHARD_COLUMNS)
    + ", PRIMARY KEY (cell_key, shard))"
)

def shard_key(cell_key: str, index: int) -> str:
    """The name of shard ``index`` of cell ``cell_key`` in a results file's claims (a shard is
    claimed as a cell is: ``ResultStore.claim``)."""
    return f"{cell_key}#{index}"


def split_shard_key(key: str) -> tuple[str, int | None]:
    """``(cell key, shard index)`` of a claims key (``shard_key``'s inverse; index None for a whole cell)."""
    cell, _, shard = key.partition("#")
    return cell, int(shard) if shard else None


#: the claims table: a cell being computed by a live run (``owner``: host, process and run;
#: ``heartbeat`` and ``expires``: Unix times). Another run skips or waits for a claimed cell;
#: a claim whose owner stopped refreshing it (a killed run) expires and may be taken over.
CLAIMS_DDL = (
    "CREATE TABLE IF NOT EXISTS claims (cell_key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
    "heartbeat REAL NOT NULL, expires REAL NOT NULL)"
)


def format_value(column: str, v: object) -> str:
    """A cell value as result tables show it (``-`` for missing)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        col = BY_NAME.get(column)
        fmt = col.fmt if col is not None and col.fmt and col.fmt != "d" else ".4f"
        return format(v, fmt)
    return str(v)
