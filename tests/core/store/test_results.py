"""The store never destroys work: a failure never replaces a finished cell, and write problems
are said before any work (a read-only folder) or plainly (a file deleted mid-run)."""

from __future__ import annotations

import os

import pytest

import advx


def _row(status, key="k", **kw):
    return advx.CellRow.from_flat({"cell_key": key, "status": status, "spec_name": "s", "robust_accuracy": 0.5, **kw})


def test_a_failure_never_replaces_a_finished_cell(tmp_path):
    with advx.ResultStore(tmp_path / "r.db") as store:
        assert store.record(_row("done"))
        assert not store.record(_row("failed", error="boom"))
        (row,) = store.cells()
        assert row.status == "done" and row.robust_accuracy == 0.5
        # a failure replaces a failure, and a finished cell replaces both
        assert store.record(_row("failed", key="f", error="one")) and store.record(_row("failed", key="f", error="two"))
        assert store.record(_row("done", key="f"))
        assert {r.cell_key: r.status for r in store.cells()} == {"k": "done", "f": "done"}


def test_an_existing_file_in_a_read_only_folder_is_refused_at_start(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    with advx.ResultStore(folder / "r.db") as store:
        store.record(_row("done"))
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(advx.ConfigError, match="not writable .*journal") as exc:
            advx.ResultStore(folder / "r.db")
        assert "\n" not in str(exc.value)
        with advx.ResultStore(folder / "r.db", readonly=True) as store:  # reading still works
            assert len(store.cells()) == 1
    finally:
        os.chmod(folder, 0o755)


def test_a_file_deleted_mid_run_is_said_plainly(tmp_path):
    db = tmp_path / "r.db"
    store = advx.ResultStore(db)
    try:
        store.record(_row("done"))
        db.unlink()
        with pytest.raises(advx.DataError, match="was deleted"):
            store.record(_row("done", key="k2"))
    finally:
        store.close()
