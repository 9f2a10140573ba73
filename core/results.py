"""The results store: one SQLite file, one row per finished cell, one row per sample.

Tables and columns are derived from ``advx.schema``. Each cell is committed in its own
transaction the moment it finishes, so a matrix killed at any point keeps every finished
cell, and a rerun of the same spec skips them (cells are identified by a key hashed from
everything that defines them). Cells are shared by content: a cell computed under one spec
name serves every spec that contains it, and the ``members`` table records which specs
contain which cells. Per-sample outcomes are kept so that later analyses (worst case per
example over attacks, per-class and per-confidence breakdowns, detection curves) need no
rerun; trainings (with their time) are kept apart from cells.

A file that is not an advx results file (another application's SQLite database, any
other file) is refused and left byte-for-byte unchanged; a read-only file or folder is
read without writing (``ResultStore(path, readonly=True)``, what ``advx results`` uses).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError
from .schema import (
    CELL_COLUMN_NAMES,
    CELL_COLUMNS,
    JSON_COLUMNS,
    EXAMPLE_COLUMNS,
    EXAMPLE_KEYS,
    SAMPLE_COLUMN_NAMES,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    TABLE_COLUMNS,
    TRAINING_COLUMNS,
    format_value,
)

MARKER = "advx-results"


def _ddl() -> str:
    cells = ", ".join(f"{c.name} {c.sql}" + (" PRIMARY KEY" if c.name == "cell_key" else "") for c in CELL_COLUMNS)
    samples = ", ".join(f"{c.name} {c.sql}" for c in SAMPLE_COLUMNS)
    trainings = ", ".join(f"{c.name} {c.sql}" + (" PRIMARY KEY" if c.name == "key" else "") for c in TRAINING_COLUMNS)
    examples = ", ".join(f"{c.name} {c.sql}" for c in EXAMPLE_COLUMNS)
    return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS cells ({cells});
CREATE TABLE IF NOT EXISTS samples (
    cell_key TEXT NOT NULL REFERENCES cells(cell_key) ON DELETE CASCADE, {samples},
    PRIMARY KEY (cell_key, idx)
);
CREATE TABLE IF NOT EXISTS examples (
    cell_key TEXT NOT NULL REFERENCES cells(cell_key) ON DELETE CASCADE, {examples},
    PRIMARY KEY (cell_key, idx)
);
CREATE TABLE IF NOT EXISTS members (spec_name TEXT NOT NULL, cell_key TEXT NOT NULL, PRIMARY KEY (spec_name, cell_key));
CREATE TABLE IF NOT EXISTS trainings ({trainings});
CREATE INDEX IF NOT EXISTS cells_spec ON cells(spec_name);
"""


def _writable(path: Path) -> bool:
    """Writable for this user, and not marked read-only (root ignores permissions; we do not)."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _pack(t: torch.Tensor) -> bytes:
    return zlib.compress(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes(), 6)


def _unpack(b: bytes, shape: list[int]) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(zlib.decompress(b), dtype=np.float16).copy()).float().reshape(shape)


class ResultStore:
    """An SQLite results file (created on first use unless ``readonly``)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        p = str(self.path)
        if self.path.is_dir():
            raise ConfigError(f"results path {p!r} is a directory, not a file")
        if readonly:
            if not self.path.exists():
                raise ConfigError(f"results file {p!r} does not exist")
        else:
            folder = self.path.parent if str(self.path.parent) else Path(".")
            if not folder.exists():
                raise ConfigError(f"results path {p!r}: folder {str(folder)!r} does not exist")
            if self.path.exists() and not _writable(self.path):
                raise ConfigError(f"results file {p!r} is read-only: advx cannot write results there (use --db elsewhere)")
            if not self.path.exists() and not _writable(folder):
                raise ConfigError(f"results path {p!r}: folder {str(folder)!r} is not writable (use --db elsewhere)")
        has_tables = self._check_file()
        try:
            if readonly and not has_tables:
                # An empty file (``touch``ed, or created by another tool's first connect)
                # reads as an empty results file rather than failing on its first query.
                self.conn = sqlite3.connect(":memory:")
                self.conn.executescript(_ddl())
            elif readonly:
                self.conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, timeout=30)
            else:
                self.conn = sqlite3.connect(p, timeout=30)
                self.conn.execute("PRAGMA foreign_keys = ON")
                self._check_columns()
                self.conn.executescript(_ddl())
                self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (MARKER,))
                self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self.conn.commit()
            if readonly:
                self._check_columns()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{p!r} is not an advx results file ({exc})") from None

    def _check_file(self) -> bool:
        """Refuse, without writing a byte, any existing file that is not an advx results file;
        True when the file holds tables (False: missing, empty, or an SQLite file without any)."""
        p = str(self.path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise DataError(f"{p!r} is not an advx results file (not an SQLite database); use another --db path")
        conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return False
            if "cells" not in tables or "meta" not in tables:
                raise DataError(f"{p!r} is an SQLite database of another application, not advx results; use another --db path")
            version = dict(conn.execute("SELECT key, value FROM meta").fetchall()).get("schema_version")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{p!r} is not an advx results file ({exc})") from None
        finally:
            conn.close()
        if version is not None and version != str(SCHEMA_VERSION):
            raise DataError(
                f"{p!r} was written by another advx version (results schema {version}, this advx reads {SCHEMA_VERSION}); "
                "use a new --db file"
            )
        return True

    def _check_columns(self) -> None:
        """A file written by an advx with another schema is refused, never half-updated."""
        for table, wanted in (("cells", CELL_COLUMN_NAMES), ("samples", SAMPLE_COLUMN_NAMES)):
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in wanted if c not in have]
            if have and missing:
                raise DataError(
                    f"{str(self.path)!r} was written by another advx version (table {table} lacks "
                    f"{', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); use a new --db file"
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
        """Keys of the cells that are finished (done or not applicable): a rerun skips them."""
        return {r[0] for r in self.conn.execute("SELECT cell_key FROM cells WHERE status IN ('done', 'not-applicable')")}

    def add_members(self, spec_name: str, keys: Sequence[str]) -> None:
        """Record that spec ``spec_name`` contains the cells ``keys``."""
        with self._tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO members(spec_name, cell_key) VALUES (?, ?)", ((spec_name, k) for k in keys))

    def record(
        self,
        row: dict[str, Any],
        samples: dict[str, torch.Tensor] | None = None,
        trainings: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Write one cell (its samples and trainings) in one transaction, replacing an earlier attempt.

        Kept examples come in ``samples`` under ``advx.schema.EXAMPLE_KEYS`` (the first K
        clean and adversarial inputs) and go to the examples table.
        """
        values = []
        for c in CELL_COLUMNS:
            v = row.get(c.name)
            if c.json and v is not None:
                v = json.dumps(v, sort_keys=True, default=str)
            values.append(v)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._tx() as conn:
            conn.execute("DELETE FROM samples WHERE cell_key = ?", (row["cell_key"],))
            conn.execute("DELETE FROM examples WHERE cell_key = ?", (row["cell_key"],))
            conn.execute(
                f"INSERT OR REPLACE INTO cells({', '.join(CELL_COLUMN_NAMES)}) VALUES ({', '.join('?' * len(CELL_COLUMNS))})",
                values,
            )
            if row.get("spec_name"):
                conn.execute("INSERT OR IGNORE INTO members(spec_name, cell_key) VALUES (?, ?)", (row["spec_name"], row["cell_key"]))
            if samples:
                # NaN (no detector) is stored as NULL
                cols = [
                    [None if isinstance(v, float) and v != v else v for v in samples[c].tolist()] for c in SAMPLE_COLUMN_NAMES
                ]
                conn.executemany(
                    f"INSERT INTO samples(cell_key, {', '.join(SAMPLE_COLUMN_NAMES)}) VALUES (?, {', '.join('?' * len(SAMPLE_COLUMNS))})",
                    ((row["cell_key"], *vals) for vals in zip(*cols)),
                )
            if samples and all(k in samples for k in EXAMPLE_KEYS):
                xs, advs = (samples[k] for k in EXAMPLE_KEYS)
                conn.executemany(
                    "INSERT INTO examples(cell_key, idx, shape, x, x_adv) VALUES (?, ?, ?, ?, ?)",
                    (
                        (row["cell_key"], int(i), json.dumps(list(x.shape)), _pack(x), _pack(a))
                        for i, x, a in zip(samples["idx"].tolist(), xs, advs)
                    ),
                )
            for t in trainings:
                # the first record of a key is the one that trained (later ones loaded it)
                conn.execute(
                    "INSERT OR IGNORE INTO trainings(key, kind, description, seconds, cached, recorded) VALUES (?, ?, ?, ?, ?, ?)",
                    (t["key"], t["kind"], t["description"], t["seconds"], int(bool(t["cached"])), now),
                )

    # -- reading ------------------------------------------------------------------------------

    def spec_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT spec_name FROM members ORDER BY spec_name")]

    def cells(self, spec_name: str | None = None, status: str | None = None, decode: bool = False) -> list[dict[str, Any]]:
        """Cell rows (of spec ``spec_name``: every cell it contains, whichever spec computed it).

        ``decode`` returns the JSON columns as Python objects instead of text.
        """
        q, args, conds = "SELECT * FROM cells", [], []
        if spec_name:
            if spec_name not in self.spec_names():
                known = ", ".join(repr(n) for n in self.spec_names()) or "none"
                raise ConfigError(f"no spec named {spec_name!r} in {str(self.path)!r}; the file holds: {known}")
            conds.append("cell_key IN (SELECT cell_key FROM members WHERE spec_name = ?)")
            args.append(spec_name)
        if status:
            conds.append("status = ?")
            args.append(status)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY started, rowid"
        cur = self.conn.execute(q, args)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        if decode:
            for r in rows:
                for k in JSON_COLUMNS:
                    if isinstance(r.get(k), str):
                        r[k] = json.loads(r[k])
        return rows

    def trainings(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM trainings ORDER BY recorded, rowid")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def samples(self, cell_key: str) -> dict[str, torch.Tensor]:
        cur = self.conn.execute(f"SELECT {', '.join(SAMPLE_COLUMN_NAMES)} FROM samples WHERE cell_key = ? ORDER BY idx", (cell_key,))
        rows = cur.fetchall()
        out = {}
        for i, c in enumerate(SAMPLE_COLUMNS):
            if c.dtype.is_floating_point:
                out[c.name] = torch.tensor([float("nan") if r[i] is None else r[i] for r in rows], dtype=c.dtype)
            else:
                out[c.name] = torch.tensor([r[i] for r in rows], dtype=c.dtype)
        return out

    def examples(self, cell_key: str) -> dict[str, torch.Tensor] | None:
        """The kept examples of a cell: ``idx``, ``x``, ``x_adv`` (float32, (K, *shape)) and the
        per-sample columns of those examples; ``None`` when none were kept."""
        if not self._has_table("examples"):
            return None
        rows = self.conn.execute("SELECT idx, shape, x, x_adv FROM examples WHERE cell_key = ? ORDER BY idx", (cell_key,)).fetchall()
        if not rows:
            return None
        out: dict[str, torch.Tensor] = {
            "idx": torch.tensor([r[0] for r in rows], dtype=torch.int64),
            "x": torch.stack([_unpack(r[2], json.loads(r[1])) for r in rows]),
            "x_adv": torch.stack([_unpack(r[3], json.loads(r[1])) for r in rows]),
        }
        samples = self.samples(cell_key)
        if len(samples["idx"]):
            pos = {int(i): n for n, i in enumerate(samples["idx"].tolist())}
            at = torch.tensor([pos.get(int(i), -1) for i in out["idx"]])
            if bool((at >= 0).all()):
                out.update({k: v[at] for k, v in samples.items() if k != "idx"})
        return out

    def cells_with_examples(self) -> set[str]:
        """Keys of the cells that have kept examples."""
        if not self._has_table("examples"):
            return set()
        return {r[0] for r in self.conn.execute("SELECT DISTINCT cell_key FROM examples")}

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def meta(self) -> dict[str, str]:
        """The file's meta table (format, schema version, and e.g. ``spec:NAME`` provenance as JSON)."""
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, key: str, value: str) -> None:
        """Set one meta entry (``advx run`` records where each spec came from: ``spec:NAME``)."""
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

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
        """The results as ``csv`` (every column), ``json`` (every column, JSON decoded) or ``markdown`` (the table columns)."""
        if fmt == "json":
            return json.dumps(self.cells(spec_name, decode=True), indent=2)
        rows = self.cells(spec_name)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(CELL_COLUMN_NAMES), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            return buf.getvalue()
        if fmt == "markdown":
            names = [c.name for c in TABLE_COLUMNS]
            cols = names[:5] + ["status"] + names[5:]  # the place, then its status and numbers
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for r in rows:
                lines.append("| " + " | ".join(format_value(c, r.get(c)) for c in cols) + " |")
            return "\n".join(lines) + "\n"
        raise ConfigError(f"unknown format {fmt!r}; use csv, json or markdown")
