"""The results store: one SQLite file, one row per finished cell, one row per sample.

Each cell is committed in its own transaction the moment it finishes, so a matrix killed
at any point keeps every finished cell, and a rerun of the same spec skips them (cells
are identified by a key hashed from everything that defines them). Per-sample outcomes
(index, label, clean and adversarial prediction and confidence, top-5 hit, target,
perturbation norms) are kept so that later analyses (worst case per example over attacks,
per-class and per-confidence breakdowns) need no rerun.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError

SCHEMA_VERSION = 1

METRIC_COLUMNS = (
    "n",
    "clean_accuracy",
    "robust_accuracy",
    "success_rate",
    "targeted_success_rate",
    "top1_error",
    "top5_error",
    "mean_linf",
    "max_linf",
    "mean_l2",
    "max_l2",
    "detection_auc",
    "seconds",
    "attack_seconds",
    "images_per_second",
    "forwards_per_sample",
    "backwards_per_sample",
)

CELL_COLUMNS = (
    "cell_key",
    "spec_name",
    "spec_hash",
    "status",
    "dataset",
    "model",
    "defense",
    "threat",
    "attack",
    "dataset_config",
    "model_config",
    "train_config",
    "defense_config",
    "threat_config",
    "attack_config",
    *METRIC_COLUMNS,
    "metrics",
    "error",
    "advx_version",
    "torch_version",
    "device",
    "seed",
    "started",
    "finished",
)

SAMPLE_COLUMNS = (
    "idx",
    "label",
    "clean_pred",
    "clean_conf",
    "adv_pred",
    "adv_conf",
    "adv_top5",
    "target",
    "linf",
    "l2",
    "clean_score",
    "adv_score",
)

_REAL = {c for c in METRIC_COLUMNS if c != "n"}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS cells (
    {", ".join(f"{c} {'REAL' if c in _REAL else 'INTEGER' if c in ('n', 'seed') else 'TEXT'}" + (" PRIMARY KEY" if c == "cell_key" else "") for c in CELL_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS samples (
    cell_key TEXT NOT NULL REFERENCES cells(cell_key) ON DELETE CASCADE,
    idx INTEGER NOT NULL, label INTEGER, clean_pred INTEGER, clean_conf REAL,
    adv_pred INTEGER, adv_conf REAL, adv_top5 INTEGER, target INTEGER, linf REAL, l2 REAL,
    clean_score REAL, adv_score REAL,
    PRIMARY KEY (cell_key, idx)
);
CREATE INDEX IF NOT EXISTS cells_spec ON cells(spec_name);
"""

TABLE_COLUMNS = (
    "dataset",
    "model",
    "defense",
    "threat",
    "attack",
    "status",
    "n",
    "clean_accuracy",
    "robust_accuracy",
    "success_rate",
    "targeted_success_rate",
    "mean_linf",
    "mean_l2",
    "seconds",
    "images_per_second",
    "forwards_per_sample",
    "backwards_per_sample",
)


class ResultStore:
    """An SQLite results file (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"results path {str(self.path)!r} is a directory, not a file")
        if self.path.parent and not self.path.parent.exists():
            raise ConfigError(f"results path {str(self.path)!r}: folder {str(self.path.parent)!r} does not exist")
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._check_columns()
            self.conn.executescript(SCHEMA)
            self.conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self.conn.commit()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{str(self.path)!r} is not an advx results database ({exc})") from None

    def _check_columns(self) -> None:
        """A file written by an advx with another schema is refused, never half-updated."""
        for table, wanted in (("cells", CELL_COLUMNS), ("samples", SAMPLE_COLUMNS)):
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in wanted if c not in have]
            if have and missing:
                raise DataError(
                    f"{str(self.path)!r} was written by another advx version (table {table} lacks "
                    f"{', '.join(missing)}); use a new --db file"
                )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self.conn
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise

    # -- writing ------------------------------------------------------------------------------

    def done_keys(self) -> set[str]:
        """Keys of the cells that finished successfully (a rerun skips them)."""
        return {r[0] for r in self.conn.execute("SELECT cell_key FROM cells WHERE status = 'done'")}

    def record(self, row: dict[str, Any], samples: dict[str, torch.Tensor] | None = None) -> None:
        """Write one cell (and its samples) in one transaction, replacing an earlier attempt."""
        values = []
        for c in CELL_COLUMNS:
            v = row.get(c)
            if isinstance(v, (dict, list)):
                v = json.dumps(v, sort_keys=True)
            values.append(v)
        with self._tx() as conn:
            conn.execute("DELETE FROM samples WHERE cell_key = ?", (row["cell_key"],))
            conn.execute(
                f"INSERT OR REPLACE INTO cells({', '.join(CELL_COLUMNS)}) VALUES ({', '.join('?' * len(CELL_COLUMNS))})",
                values,
            )
            if samples:
                # NaN (no detector) is stored as NULL
                cols = [
                    [None if isinstance(v, float) and v != v else v for v in samples[c].tolist()]
                    for c in SAMPLE_COLUMNS
                ]
                conn.executemany(
                    f"INSERT INTO samples(cell_key, {', '.join(SAMPLE_COLUMNS)}) VALUES (?, {', '.join('?' * len(SAMPLE_COLUMNS))})",
                    ((row["cell_key"], *vals) for vals in zip(*cols)),
                )

    # -- reading ------------------------------------------------------------------------------

    def cells(self, spec_name: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM cells", []
        conds = []
        if spec_name:
            conds.append("spec_name = ?")
            args.append(spec_name)
        if status:
            conds.append("status = ?")
            args.append(status)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY started, rowid"
        cur = self.conn.execute(q, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def samples(self, cell_key: str) -> dict[str, torch.Tensor]:
        cur = self.conn.execute(
            f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE cell_key = ? ORDER BY idx", (cell_key,)
        )
        rows = cur.fetchall()
        out = {}
        for i, c in enumerate(SAMPLE_COLUMNS):
            if c in ("clean_conf", "adv_conf", "linf", "l2", "clean_score", "adv_score"):
                out[c] = torch.tensor([float("nan") if r[i] is None else r[i] for r in rows], dtype=torch.float32)
            else:
                out[c] = torch.tensor([r[i] for r in rows], dtype=torch.int64)
        out["index"] = out["idx"]
        return out

    def worst_case(self, cells: Sequence[dict[str, Any]]) -> float | None:
        """Robust accuracy against the union of ``cells``' attacks, per example (mean of min).

        An example counts as robust only if no attack fooled it; the cells must share the
        evaluated examples (same dataset, model, defense, samples).
        """
        robust: dict[int, bool] = {}
        for cell in cells:
            for idx, label, adv in self.conn.execute(
                "SELECT idx, label, adv_pred FROM samples WHERE cell_key = ?", (cell["cell_key"],)
            ):
                robust[idx] = robust.get(idx, True) and adv == label
        return sum(robust.values()) / len(robust) if robust else None

    def export(self, fmt: str, spec_name: str | None = None) -> str:
        """The results table as ``csv``, ``json`` or ``markdown``."""
        rows = self.cells(spec_name)
        if fmt == "json":
            for r in rows:
                for k in ("dataset_config", "model_config", "train_config", "defense_config", "threat_config", "attack_config", "metrics"):
                    if r.get(k):
                        r[k] = json.loads(r[k])
            return json.dumps(rows, indent=2)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(CELL_COLUMNS), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            return buf.getvalue()
        if fmt == "markdown":
            head = "| " + " | ".join(TABLE_COLUMNS) + " |"
            sep = "|" + "---|" * len(TABLE_COLUMNS)
            lines = [head, sep]
            for r in rows:
                lines.append("| " + " | ".join(format_value(c, r.get(c)) for c in TABLE_COLUMNS) + " |")
            return "\n".join(lines) + "\n"
        raise ConfigError(f"unknown format {fmt!r}; use csv, json or markdown")


def format_value(column: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if column in ("seconds",):
            return f"{v:.2f}"
        if column in ("images_per_second",):
            return f"{v:.0f}"
        if column in ("forwards_per_sample", "backwards_per_sample"):
            return f"{v:.1f}"
        return f"{v:.4f}"
    return str(v)
