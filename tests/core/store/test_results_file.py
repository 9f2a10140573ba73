"""The results file as users meet it: spec membership, read-only files, files of other applications, empty files, exports by extension."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import advx
from advx.cli import main


ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "experiments" / "digits-demo" / "full.toml"


def test_spec_membership_is_recorded_per_spec(tmp_path, capsys, tiny):
    db = tmp_path / "r.db"
    advx.run_matrix(tiny("first"), store=db)
    second = tiny("second", attacks=[{"name": "fgsm", "eps": [0.1, 0.2]}])
    res = advx.run_matrix(second, store=db)
    assert (res.done, res.skipped) == (1, 1)  # the shared cell was not recomputed...
    with advx.ResultStore(db) as store:
        assert len(store.cells("second")) == 2  # ...yet belongs to "second" too
        assert len(store.cells("first")) == 1
        with pytest.raises(advx.ConfigError, match="no spec named 'thrid'.*'first', 'second'"):
            store.cells("thrid")
    assert main(["results", str(db), "--spec", "second"]) == 0
    assert "2 cells" in capsys.readouterr().out


def test_read_only_results(tmp_path, capsys, tiny):
    db = tmp_path / "r.db"
    advx.run_matrix(tiny(), store=db)
    before = db.read_bytes()
    db.chmod(stat.S_IRUSR | stat.S_IRGRP)
    try:
        assert main(["results", str(db)]) == 0  # reads it
        assert main(["run", str(DEMO), "--db", str(db)]) == 1
        err = capsys.readouterr().err
        assert "read-only" in err and "cannot write" in err and "not an advx results" not in err
    finally:
        db.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert db.read_bytes() == before


def test_rejected_spec_creates_no_results_file(tmp_path, tiny):
    db = tmp_path / "r.db"
    bad = tiny(attacks=[{"name": "fgsm", "eps": -1}])
    with pytest.raises(advx.ConfigError):
        advx.run_matrix(bad, store=db)
    assert not db.exists()
    spec = tmp_path / "bad.toml"
    spec.write_text('[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\n[[attacks]]\nname = "fgsm"\neps = "0.1"\n')
    assert main(["run", str(spec), "--db", str(db)]) == 1
    assert not db.exists()


def test_foreign_sqlite_file_is_refused_unchanged(tmp_path, tiny):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        c.execute("INSERT INTO users VALUES (1, 'ada')")
    before = db.read_bytes()
    with pytest.raises(advx.DataError, match="another application"):
        advx.ResultStore(db)
    with pytest.raises(advx.DataError, match="another application"):
        advx.run_matrix(tiny(), store=db)
    assert db.read_bytes() == before


@pytest.mark.parametrize("how", ["touched", "sqlite without tables"])
def test_an_empty_results_file_reads_as_empty_and_is_left_unchanged(tmp_path, how):
    """``touch r.db`` or a bare ``sqlite3 r.db`` leaves a file with no tables: reading it
    (``advx results``, ``--dry-run``) shows no cells instead of failing on a missing table."""
    db = tmp_path / "r.db"
    if how == "touched":
        db.touch()
    else:
        sqlite3.connect(db).execute("SELECT 1").fetchall()
    before = db.read_bytes()
    with advx.ResultStore(db, readonly=True) as store:
        assert store.cells() == []
    spec = tmp_path / "s.toml"
    spec.write_text('[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\n[[attacks]]\nname = "fgsm"\neps = 0.1\n')
    assert main(["run", str(spec), "--db", str(db), "--dry-run"]) == 0
    assert db.read_bytes() == before


def test_output_format_from_extension(tmp_path, capsys, tiny):
    db = tmp_path / "r.db"
    advx.run_matrix(tiny(), store=db)
    assert main(["results", str(db), "-o", str(tmp_path / "r.csv")]) == 0
    assert (tmp_path / "r.csv").read_text().startswith("cell_key,")
    assert main(["results", str(db), "-o", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())[0]["status"] == "done"
    assert main(["results", str(db), "-o", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text().startswith("| dataset")
    assert main(["results", str(db), "-o", str(tmp_path / "r.txt")]) == 1
    assert "cannot tell the format" in capsys.readouterr().err
    assert not (tmp_path / "r.txt").exists()
