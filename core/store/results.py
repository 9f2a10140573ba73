"""The results store: one SQLite file, one ``CellRow`` per finished cell, one row per sample.

Tables and columns are derived from ``advx.store.schema``. Each cell is committed in its own
transaction the moment it finishes, so a matrix killed at any point keeps every finished
cell, and a rerun of the same spec skips them (cells are identified by a key hashed from
everything that defines them). Cells are shared by content: a cell computed under one spec
name serves every spec that contains it, and the ``members`` table records which specs
contain which cells (``current``: the cells of the spec as it was last run; cells of earlier
versions of a spec stay in the file and are listed on request). Per-sample outcomes are kept so that later analyses (worst case per
example over attacks, per-class and per-confidence breakdowns, detection curves) need no
rerun; trainings (with their time) are kept apart from cells. A sharded cell (``[matrix]
shard_size``) is stored shard by shard (``record_shard``: the shards table, its examples'
records in the samples table, the cell ``partial`` until its row is merged and recorded), so
a killed run keeps every finished shard and a rerun computes only the others.

A file that is not an advx results file (another application's SQLite database, any
other file) is refused and left byte-for-byte unchanged; a read-only file or folder is
read without writing (``ResultStore(path, readonly=True)``, what ``advx results`` uses).

Files outlive upgrades: a file of an older schema is migrated forward when opened for
writing (after a backup copy beside it, ``advx.store.migrations``) and read through a
migrated temporary copy when opened read-only; a file of a newer advx is read where its
columns allow and refused for writing. A finished cell is never replaced by a failure.

Several runs may write one file at once and share its work: a run claims each cell before
computing it (``claim``: the ``claims`` table, with the run as owner and a heartbeat that a
thread of the run refreshes), so another run skips the cell or waits for it. A claim whose
run is gone (a process of this host that no longer exists, or no heartbeat for
``claim_ttl`` seconds) is stale and is taken over.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from advx.analysis.rows import CellRow
from advx.contract.errors import ConfigError, DataError
from advx.store.migrations import migrate
from advx.store.schema import (
    CELL_COLUMN_NAMES,
    CELL_COLUMNS,
    CLAIMS_DDL,
    EXAMPLE_COLUMNS,
    EXAMPLE_KEYS,
    EXPORT_COLUMNS,
    SAMPLE_COLUMN_NAMES,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    SHARD_COLUMN_NAMES,
    SHARD_COLUMNS,
    SHARDS_DDL,
    TABLE_COLUMNS,
    TRAINING_COLUMNS,
    format_value,
    shard_key,
    split_shard_key,
    read_samples,
)

MARKER = "advx-results"

#: seconds a claim stays valid without a heartbeat (its run refreshes it every quarter of this)
CLAIM_TTL = 60.0


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
CREATE TABLE IF NOT EXISTS members (
    spec_name TEXT NOT NULL, cell_key TEXT NOT NULL, current INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (spec_name, cell_key)
);
CREATE TABLE IF NOT EXISTS trainings ({trainings});
CREATE INDEX IF NOT EXISTS cells_spec ON cells(spec_name);
{CLAIMS_DDL};
{SHARDS_DDL};
"""


def _writable(path: Path) -> bool:
    """Writable for this user, and not marked read-only (root ignores permissions; we do not)."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _owner_alive(owner: str) -> bool:
    """Whether the run ``owner`` (``host:pid:run``) may still be alive: a process of this host
    that no longer exists (or is a zombie) is not; on another host only its heartbeat tells."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def _pack(t: torch.Tensor) -> bytes:
    return zlib.compress(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes(), 6)


def _unpack(b: bytes, shape: list[int]) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(zlib.decompress(b), dtype=np.float16).copy()).float().reshape(shape)


class ResultStore:
    """An SQLite results file (created on first use unless ``readonly``).

    ``notice`` is the one line to show the user about the file (a migration done), or None.
    """

    def __init__(self, path: str | Path, readonly: bool = False, claim_ttl: float = CLAIM_TTL) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.notice: str | None = None
        self._tmp: Path | None = None
        #: this run's name in the claims table: host, process, and a random part per store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.claim_ttl = claim_ttl
        self._waited: set[str] = set()  # cells found claimed by another live run
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
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
            if not _writable(folder):
                # SQLite writes its journal beside the file: an existing file in a read-only
                # folder fails at its first write, after the first cell's work
                what = "is not writable" if not self.path.exists() else "is not writable (SQLite needs it for its journal)"
                raise ConfigError(f"results path {p!r}: folder {str(folder)!r} {what} (use --db elsewhere)")
        has_tables, version = self._check_file()
        source = self.path
        if has_tables and version is not None and version < SCHEMA_VERSION:
            if readonly:
                # read through a migrated copy: reading never writes the user's file
                import tempfile

                fd, tmp = tempfile.mkstemp(suffix=".db", prefix="advx-migrated-")
                os.close(fd)
                self._tmp = Path(tmp)
                import shutil

                shutil.copy2(self.path, self._tmp)
                migrate(self._tmp, version, SCHEMA_VERSION)
                backup = self._tmp.with_name(f"{self._tmp.name}.bak-v{version}")
                backup.unlink(missing_ok=True)
                source = self._tmp
                self.notice = f"{p!r} has results schema {version}; read through a migrated copy (open it for writing to migrate it)"
            else:
                self.notice = migrate(self.path, version, SCHEMA_VERSION)
        self.newer = has_tables and version is not None and version > SCHEMA_VERSION
        if self.newer and not readonly:
            raise DataError(
                f"{p!r} was written by a newer advx (results schema {version}, this advx writes {SCHEMA_VERSION}); "
                "upgrade advx to add to it, or use another --db file"
            )
        try:
            if readonly and not has_tables:
                # An empty file (``touch``ed, or created by another tool's first connect)
                # reads as an empty results file rather than failing on its first query.
                self.conn = sqlite3.connect(":memory:")
                self.conn.executescript(_ddl())
            elif readonly:
                self.conn = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True, timeout=30)
            else:
                self.conn = sqlite3.connect(p, timeout=30)
                self.conn.execute("PRAGMA foreign_keys = ON")
                self.conn.executescript(_ddl())
                self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (MARKER,))
                self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self.conn.commit()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{p!r} is not an advx results file ({exc})") from None
        self._columns = {r[1] for r in self.conn.execute("PRAGMA table_info(cells)")}

    def _check_file(self) -> tuple[bool, int | None]:
        """Refuse, without writing a byte, any existing file that is not an advx results file;
        (whether the file holds tables, its schema version)."""
        p = str(self.path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False, None
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise DataError(f"{p!r} is not an advx results file (not an SQLite database); use another --db path")
        conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return False, None
            if "cells" not in tables or "meta" not in tables:
                raise DataError(f"{p!r} is an SQLite database of another application, not advx results; use another --db path")
            version = dict(conn.execute("SELECT key, value FROM meta").fetchall()).get("schema_version")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{p!r} is not an advx results file ({exc})") from None
        finally:
            conn.close()
        try:
            return True, int(version) if version is not None else None
        except ValueError:
            raise DataError(f"{p!r} has an unreadable results schema version {version!r}") from None

    def close(self) -> None:
        """Stop the claims' heartbeat, give back this run's claims, close the file."""
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
            self._beat = None
        if not self.readonly:
            try:
                self.release()
            except (sqlite3.Error, DataError):  # the file is gone or locked: the claims expire anyway
                pass
        self.conn.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        if not self.path.exists() and not self.readonly:
            raise DataError(f"results file {str(self.path)!r} was deleted while advx was writing to it; finished cells are lost with it")
        try:
            if immediate and not self.conn.in_transaction:
                self.conn.execute("BEGIN IMMEDIATE")  # read and write as one step: no other run between them
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
        """Record that spec ``spec_name`` now contains the cells ``keys`` (its earlier cells are
        kept, no longer current)."""
        with self._tx() as conn:
            conn.execute("UPDATE members SET current = 0 WHERE spec_name = ?", (spec_name,))
            conn.executemany(
                "INSERT INTO members(spec_name, cell_key, current) VALUES (?, ?, 1) "
                "ON CONFLICT(spec_name, cell_key) DO UPDATE SET current = 1",
                ((spec_name, k) for k in keys),
            )

    def adopt_identity(self, identities: dict[str, dict[str, Any]]) -> int:
        """Give migrated cells (whose identity was rebuilt from their configs) the identity the
        current plan computes for the same key; return how many changed."""
        n = 0
        with self._tx() as conn:
            for key, ident in identities.items():
                row = conn.execute("SELECT identity FROM cells WHERE cell_key = ?", (key,)).fetchone()
                if row is None or not row[0] or '"legacy": true' not in row[0]:
                    continue
                conn.execute("UPDATE cells SET identity = ? WHERE cell_key = ?", (json.dumps(ident, sort_keys=True, default=str), key))
                n += 1
        return n

    # -- claims: several runs on one file ----------------------------------------------------

    def claim(self, cell_key: str, rerun: bool = False) -> str:
        """Claim a cell before computing it: ``"run"`` (it is this run's now), ``"wait"`` (a live
        run is computing it: ask again later) or ``"done"`` (finished, or finished by the run
        this one waited for, whatever its status: skip it). With ``rerun`` (``advx run
        --rerun``) a cell finished before is this run's to recompute; one another live run
        computes is still waited for. Starts the heartbeat that keeps this run's claims alive."""
        now = time.time()
        cell, shard = split_shard_key(cell_key)
        with self._tx(immediate=True) as conn:
            st = conn.execute("SELECT status FROM cells WHERE cell_key = ?", (cell,)).fetchone()
            if shard is not None and not rerun and st is not None and st[0] not in ("done", "not-applicable"):
                stored = conn.execute("SELECT 1 FROM shards WHERE cell_key = ? AND shard = ?", (cell, shard)).fetchone()
                st = ("done",) if stored is not None else st
            if st is not None and ((st[0] in ("done", "not-applicable") and not rerun) or cell_key in self._waited):
                return "done"
            held = conn.execute("SELECT owner, expires FROM claims WHERE cell_key = ?", (cell_key,)).fetchone()
            if held is not None and held[0] != self.owner and held[1] > now and _owner_alive(held[0]):
                self._waited.add(cell_key)
                return "wait"
            conn.execute(
                "INSERT OR REPLACE INTO claims(cell_key, owner, heartbeat, expires) VALUES (?, ?, ?, ?)",
                (cell_key, self.owner, now, now + self.claim_ttl),
            )
        self._start_heartbeat()
        return "run"

    def release(self, cell_key: str | None = None) -> None:
        """Give back this run's claim of ``cell_key`` (None: all of them)."""
        with self._tx() as conn:
            if cell_key is None:
                conn.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
            else:
                conn.execute("DELETE FROM claims WHERE cell_key = ? AND owner = ?", (cell_key, self.owner))

    def claims(self) -> list[dict[str, Any]]:
        """The claims in the file: ``cell_key``, ``owner``, ``heartbeat``, ``expires``."""
        if not self._has_table("claims"):
            return []
        cur = self.conn.execute("SELECT cell_key, owner, heartbeat, expires FROM claims ORDER BY cell_key")
        return [dict(zip(("cell_key", "owner", "heartbeat", "expires"), r)) for r in cur.fetchall()]

    def refresh_claims(self, conn: sqlite3.Connection | None = None) -> None:
        """Push the expiry of this run's claims ``claim_ttl`` seconds ahead (the heartbeat)."""
        conn = conn or self.conn
        now = time.time()
        conn.execute("UPDATE claims SET heartbeat = ?, expires = ? WHERE owner = ?", (now, now + self.claim_ttl, self.owner))
        conn.commit()

    def _start_heartbeat(self) -> None:
        if self._beat is not None:
            return

        def beat() -> None:
            # a connection of its own: SQLite connections belong to their thread
            conn = sqlite3.connect(str(self.path), timeout=self.claim_ttl / 4)
            try:
                while not self._stop.wait(self.claim_ttl / 4):
                    try:
                        self.refresh_claims(conn)
                    except sqlite3.Error:  # busy or gone: the next beat tries again, or the claims expire
                        pass
            finally:
                conn.close()

        self._stop.clear()
        self._beat = threading.Thread(target=beat, name="advx-claims-heartbeat", daemon=True)
        self._beat.start()

    def status(self, cell_key: str) -> str | None:
        r = self.conn.execute("SELECT status FROM cells WHERE cell_key = ?", (cell_key,)).fetchone()
        return None if r is None else r[0]

    def record(
        self,
        row: CellRow,
        samples: dict[str, torch.Tensor] | None = None,
        trainings: Sequence[dict[str, Any]] = (),
        sharded: bool = False,
    ) -> bool:
        """Write one cell (its samples and trainings) in one transaction, replacing an earlier
        attempt; return False (writing nothing of the cell) when a failure would replace a
        finished cell: a finished cell is never overwritten by a failure.

        Kept examples come in ``samples`` under ``advx.store.schema.EXAMPLE_KEYS`` (the first K
        clean and adversarial inputs) and go to the examples table. ``sharded``: the row of a
        sharded cell (merged from its shards, or failed in one): its stored shards and their
        kept examples stay (a failed one's shards serve the rerun), and its samples are
        rewritten only when given; otherwise a whole cell's row replaces any shards of it.
        """
        values = []
        for c in CELL_COLUMNS:
            v = getattr(row, c.name)
            if c.json and v is not None:
                v = json.dumps(v, sort_keys=True, default=str)
            values.append(v)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        key = row.cell_key
        with self._tx() as conn:
            conn.execute("DELETE FROM claims WHERE cell_key = ? AND owner = ?", (key, self.owner))
            if row.status == "failed":
                prev = conn.execute("SELECT status FROM cells WHERE cell_key = ?", (key,)).fetchone()
                if prev is not None and prev[0] in ("done", "not-applicable"):
                    return False
            if not sharded:
                conn.execute("DELETE FROM shards WHERE cell_key = ?", (key,))
                conn.execute("DELETE FROM examples WHERE cell_key = ?", (key,))
            if not sharded or samples:
                conn.execute("DELETE FROM samples WHERE cell_key = ?", (key,))
            # an upsert, not INSERT OR REPLACE: a replaced row would take its shards' records with it (ON DELETE CASCADE)
            conn.execute(
                f"INSERT INTO cells({', '.join(CELL_COLUMN_NAMES)}) VALUES ({', '.join('?' * len(CELL_COLUMNS))}) "
                f"ON CONFLICT(cell_key) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in CELL_COLUMN_NAMES if n != 'cell_key')}",
                values,
            )
            if row.spec_name:
                conn.execute("INSERT OR IGNORE INTO members(spec_name, cell_key, current) VALUES (?, ?, 1)", (row.spec_name, key))
            self._write_samples(conn, key, samples)
            self._write_trainings(conn, trainings, now)
        return True

    def record_shard(
        self,
        row: CellRow,
        entry: dict[str, Any],
        samples: dict[str, torch.Tensor] | None = None,
        trainings: Sequence[dict[str, Any]] = (),
        reopen: bool = True,
    ) -> None:
        """Store one finished shard of a sharded cell in one transaction: its ``entry`` in the
        shards table (``advx.store.schema.SHARD_COLUMNS``, ``details`` a dict), its per-sample
        records and kept examples, its trainings. The cell gets a ``partial`` row (from the
        shard's ``row``, without metrics) unless it has one: a failed cell becomes partial
        again when ``reopen`` (a rerun computing its missing shards; not when it failed in
        this run), and a finished one (``--rerun``) stands until the merge replaces it."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        key = row.cell_key
        values = {**entry, "details": json.dumps(entry.get("details") or {}, sort_keys=True, default=str)}
        shard = {"index": entry["shard"], "count": entry["count"]}
        with self._tx() as conn:
            conn.execute("DELETE FROM claims WHERE cell_key = ? AND owner = ?", (shard_key(key, shard["index"]), self.owner))
            if reopen:
                conn.execute("UPDATE cells SET status = 'partial', error = NULL, metrics = '{}' WHERE cell_key = ? AND status = 'failed'", (key,))
            if conn.execute("SELECT 1 FROM cells WHERE cell_key = ?", (key,)).fetchone() is None:
                partial = row.replace(status="partial", metrics={}, details={}, error=None, reason=None, seconds=None, trainings=[])
                cols = [getattr(partial, c.name) for c in CELL_COLUMNS]
                cols = [json.dumps(v, sort_keys=True, default=str) if c.json and v is not None else v for c, v in zip(CELL_COLUMNS, cols)]
                conn.execute(f"INSERT INTO cells({', '.join(CELL_COLUMN_NAMES)}) VALUES ({', '.join('?' * len(CELL_COLUMNS))})", cols)
                if row.spec_name:
                    conn.execute("INSERT OR IGNORE INTO members(spec_name, cell_key, current) VALUES (?, ?, 1)", (row.spec_name, key))
            conn.execute(
                f"INSERT OR REPLACE INTO shards(cell_key, {', '.join(SHARD_COLUMN_NAMES)}) VALUES (?, {', '.join('?' * len(SHARD_COLUMNS))})",
                (key, *(values.get(c) for c in SHARD_COLUMN_NAMES)),
            )
            stored = conn.execute("SELECT COUNT(*) FROM shards WHERE cell_key = ?", (key,)).fetchone()[0]
            conn.execute(
                "UPDATE cells SET details = ? WHERE cell_key = ? AND status = 'partial'",
                (json.dumps({"shards": {"stored": stored, "count": shard["count"]}}), key),
            )
            self._write_samples(conn, key, samples, replace=True)
            self._write_trainings(conn, trainings, now)

    def shard_records(self, cell_key: str) -> list[dict[str, Any]]:
        """The stored shards of a cell, in order (``details`` decoded)."""
        if not self._has_table("shards"):
            return []
        cur = self.conn.execute(f"SELECT {', '.join(SHARD_COLUMN_NAMES)} FROM shards WHERE cell_key = ? ORDER BY shard", (cell_key,))
        out = []
        for r in cur.fetchall():
            d = dict(zip(SHARD_COLUMN_NAMES, r))
            d["details"] = json.loads(d["details"]) if d["details"] else {}
            out.append(d)
        return out

    @staticmethod
    def _write_samples(conn: sqlite3.Connection, key: str, samples: dict[str, torch.Tensor] | None, replace: bool = False) -> None:
        """The per-sample records and kept examples in ``samples`` (``replace``: over those of the same examples)."""
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        if samples:
            # NaN (no detector) is stored as NULL
            cols = [
                [None if isinstance(v, float) and v != v else v for v in samples[c].tolist()] for c in SAMPLE_COLUMN_NAMES
            ]
            conn.executemany(
                f"{verb} INTO samples(cell_key, {', '.join(SAMPLE_COLUMN_NAMES)}) VALUES (?, {', '.join('?' * len(SAMPLE_COLUMNS))})",
                ((key, *vals) for vals in zip(*cols)),
            )
        if samples and all(k in samples for k in EXAMPLE_KEYS):
            xs, advs = (samples[k] for k in EXAMPLE_KEYS)
            conn.executemany(
                f"{verb} INTO examples(cell_key, idx, shape, x, x_adv) VALUES (?, ?, ?, ?, ?)",
                (
                    (key, int(i), json.dumps(list(x.shape)), _pack(x), _pack(a))
                    for i, x, a in zip(samples["idx"].tolist(), xs, advs)
                ),
            )

    @staticmethod
    def _write_trainings(conn: sqlite3.Connection, trainings: Sequence[dict[str, Any]], now: str) -> None:
        for t in trainings:
            # one record per key: the one that trained, whichever came back first (a worker
            # that waited for another's training loaded it from the cache)
            conn.execute(
                "INSERT INTO trainings(key, kind, description, seconds, cached, recorded) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET description = excluded.description, seconds = excluded.seconds, "
                "cached = 0, recorded = excluded.recorded WHERE trainings.cached = 1 AND excluded.cached = 0",
                (t["key"], t["kind"], t["description"], t["seconds"], int(bool(t["cached"])), now),
            )

    # -- reading ------------------------------------------------------------------------------

    def spec_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT spec_name FROM members ORDER BY spec_name")]

    def _row(self, d: dict[str, Any]) -> CellRow:
        """Decode one SQLite row into a ``CellRow`` (JSON parsed once, here; unknown columns of a
        newer advx ignored)."""
        kw: dict[str, Any] = {}
        for c in CELL_COLUMNS:
            if c.name not in d:
                continue
            v = d[c.name]
            if c.json:
                v = json.loads(v) if isinstance(v, str) else v
                if v is None and c.name not in ("train_config",):
                    v = [] if c.name == "trainings" else {}
            kw[c.name] = v
        return CellRow(**kw)

    def cells(self, spec_name: str | None = None, status: str | None = None, history: bool = False) -> list[CellRow]:
        """Cell rows (of spec ``spec_name``: the cells of the spec as last run, whichever spec
        computed them; with ``history`` also the cells of its earlier versions)."""
        q, args, conds = "SELECT * FROM cells", [], []
        if spec_name:
            if spec_name not in self.spec_names():
                known = ", ".join(repr(n) for n in self.spec_names()) or "none"
                raise ConfigError(f"no spec named {spec_name!r} in {str(self.path)!r}; the file holds: {known}")
            current = "" if history else " AND current = 1"
            conds.append(f"cell_key IN (SELECT cell_key FROM members WHERE spec_name = ?{current})")
            args.append(spec_name)
        if status:
            conds.append("status = ?")
            args.append(status)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        return self._rows(q + " ORDER BY started, rowid", args)

    def cell(self, cell_key: str) -> CellRow | None:
        """The stored row of one cell, or ``None`` when the file holds no such cell (as
        ``status``): one indexed read, where filtering ``cells()`` would decode every row."""
        rows = self._rows("SELECT * FROM cells WHERE cell_key = ?", [cell_key])
        return rows[0] if rows else None

    def _rows(self, query: str, args: Sequence[Any]) -> list[CellRow]:
        """Run a ``SELECT * FROM cells`` query and decode its rows (the one place that pairs
        the columns the file has with their names, whatever version wrote it)."""
        cur = self.conn.execute(query, args)
        names = [d[0] for d in cur.description]
        return [self._row(dict(zip(names, r))) for r in cur.fetchall()]

    def earlier_cells(self, spec_name: str) -> list[CellRow]:
        """Cells of earlier versions of spec ``spec_name`` that its current version no longer has."""
        current = {r.cell_key for r in self.cells(spec_name)}
        return [r for r in self.cells(spec_name, history=True) if r.cell_key not in current]
    def trainings(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM trainings ORDER BY recorded, rowid")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def samples(self, cell_key: str) -> dict[str, torch.Tensor]:
        return read_samples(self.conn, cell_key)

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

    def worst_case(self, cells: Sequence[CellRow]) -> float | None:
        """Robust accuracy against the union of ``cells``' attacks, per example (mean of min):
        the share of ``worst_case_examples`` that stay robust (None for no examples)."""
        from advx.analysis.groups import robust_share

        return robust_share(self.worst_case_examples(cells))

    def worst_case_examples(self, cells: Sequence[CellRow]) -> dict[int, bool]:
        """Per example (by index): robust under every one of ``cells``' attacks (and right on
        the clean input). The evidence behind ``worst_case``, kept so that its interval is a
        bootstrap over the same examples (``advx.analysis.intervals.proportion_interval``).

        An example counts as robust only if no attack fooled it; the cells must share the
        evaluated examples and model (same dataset and data, model and training, defense,
        examples), or a ``ConfigError`` says which part differs.
        """
        shared = ("dataset", "model", "defense", "examples")
        if cells:
            first = cells[0]
            for c in cells[1:]:
                for part in shared:
                    if c.part(part) != first.part(part):
                        raise ConfigError(
                            f"worst case over cells that do not share their {part}: {first.title()} and {c.title()}"
                        )
        robust: dict[int, bool] = {}
        for cell in cells:
            for idx, label, clean, adv in self.conn.execute(
                "SELECT idx, label, clean_pred, adv_pred FROM samples WHERE cell_key = ?", (cell.cell_key,)
            ):
                # robust as the field defines it: right on the clean input and under every attack
                robust[idx] = robust.get(idx, clean == label) and adv == label
        return robust

    def intervals(self, rows: Sequence[CellRow], **kw: Any) -> dict[str, dict[str, tuple[float, float]]]:
        """95% bootstrap intervals of each finished row's proportions and AUCs, by cell key,
        computed here from the per-example records (``advx.analysis.intervals``; never stored)."""
        from advx.analysis.intervals import intervals

        return {r.cell_key: intervals(self.samples(r.cell_key), **kw) for r in rows if r.done}

    def _details_with_intervals(self, row: CellRow) -> dict[str, Any]:
        """``row.details`` with each breakdown group's intervals beside its metrics
        (``<metric>_ci_low`` / ``_ci_high`` in ``per_class[c]`` and ``per_confidence[bucket]``):
        the bootstrap over the group's own examples (``advx.analysis.intervals.breakdown_intervals``)."""
        from advx.analysis.intervals import breakdown_intervals, ci_columns

        details = copy.deepcopy(row.details)
        for kind, groups in breakdown_intervals(self.samples(row.cell_key)).items():
            for name, got in groups.items():
                if isinstance(details.get(kind), dict) and isinstance(details[kind].get(name), dict):
                    for m, bounds in got.items():
                        details[kind][name].update(zip(ci_columns(m), bounds))
        return details

    def export(self, fmt: str, spec_name: str | None = None, ci: bool = False) -> str:
        """The results as ``csv`` (every column), ``json`` (every column, JSON decoded) or ``markdown`` (the table columns).

        With ``ci`` each proportion and AUC gets its 95% interval: ``<metric>_ci_low`` and
        ``<metric>_ci_high`` columns in CSV and JSON, ``value [low, high]`` in Markdown."""
        from advx.analysis.intervals import INTERVAL_METRICS, ci_columns, with_interval

        rows = self.cells(spec_name)
        cis = self.intervals(rows) if ci else {}
        extra = [col for m in INTERVAL_METRICS for col in ci_columns(m)] if ci else []

        def flat(r: CellRow) -> dict[str, Any]:
            d = r.flat()
            if ci:
                got = cis.get(r.cell_key, {})
                for m in INTERVAL_METRICS:
                    d.update(zip(ci_columns(m), got.get(m, (None, None))))
                if fmt != "markdown" and r.done and r.details:
                    d["details"] = self._details_with_intervals(r)
            return d

        if fmt == "json":
            return json.dumps([flat(r) for r in rows], indent=2, default=str)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS) + extra, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _csv_value(v) for k, v in flat(r).items()})
            return buf.getvalue()
        if fmt == "markdown":
            names = [c.name for c in TABLE_COLUMNS]
            cols = names[:5] + ["status"] + names[5:]  # the place, then its status and numbers
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for r in rows:
                got = cis.get(r.cell_key, {})
                lines.append("| " + " | ".join(with_interval(format_value(c, r.get(c)), got.get(c)) for c in cols) + " |")
            return "\n".join(lines) + "\n"
        raise ConfigError(f"unknown format {fmt!r}; use csv, json or markdown")


def _csv_value(v: Any) -> Any:
    """A CSV field: JSON for structures, floats without float32 noise (0.984, not 0.984000027179718).

    A float that is exactly a float32 was computed in float32 (accuracies, norms): it is
    written as the shortest decimal that reads back as that float32 (``0.984``); any other
    float as the shortest decimal that reads back as itself (``repr``)."""
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, float):
        import numpy as np

        single = np.float32(v)
        return str(single) if math.isfinite(v) and float(single) == v else repr(v)
    return v
