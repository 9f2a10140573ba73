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


def test_one_cell_is_read_by_its_key(tmp_path, monkeypatch):
    with advx.ResultStore(tmp_path / "r.db") as store:
        store.record(_row("done", robust_accuracy=0.25))
        store.record(_row("failed", key="f", error="boom"))
        assert store.cell("missing") is None
        monkeypatch.setattr(store, "cells", None)  # not by reading every row and filtering
        row = store.cell("k")
        assert (row.cell_key, row.status, row.robust_accuracy, row.spec_name) == ("k", "done", 0.25, "s")
        assert (store.cell("f").status, store.cell("f").error) == ("failed", "boom")


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


# -- claims: two runs on one file share the work ------------------------------------------------


def test_a_claimed_cell_is_skipped_or_waited_for_by_another_run(tmp_path):
    db = tmp_path / "r.db"
    with advx.ResultStore(db) as first, advx.ResultStore(db) as second:
        assert first.claim("a") == "run" and first.claim("a") == "run"  # its own claim, again
        assert second.claim("a") == "wait"  # a live run is computing it
        assert [c["owner"] for c in second.claims()] == [first.owner]
        first.record(_row("done", key="a"))  # recording gives the claim back
        assert second.claims() == [] and second.claim("a") == "done"
        # the run waited for failed the cell: that failure stands for this round, no second try
        assert first.claim("b") == "run" and second.claim("b") == "wait"
        first.record(_row("failed", key="b", error="boom"))
        assert second.claim("b") == "done"
        # a failed cell nobody waited for is computed again (a rerun retries failures)
        first.record(_row("failed", key="c", error="boom"))
        assert second.claim("c") == "run"


def test_closing_a_store_gives_its_claims_back(tmp_path):
    db = tmp_path / "r.db"
    with advx.ResultStore(db) as first:
        assert first.claim("a") == "run"
    with advx.ResultStore(db) as second:
        assert second.claims() == [] and second.claim("a") == "run"


def _foreign_claim(db, key, owner, ttl):
    import sqlite3
    import time

    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO claims VALUES (?, ?, ?, ?)", (key, owner, time.time(), time.time() + ttl))


def test_a_stale_claim_is_taken_over(tmp_path):
    import time

    db = tmp_path / "r.db"
    advx.ResultStore(db).close()
    _foreign_claim(db, "remote", "another-host:123:abcd", 0.5)  # no heartbeat will come
    import socket

    _foreign_claim(db, "dead", f"{socket.gethostname()}:{2**22 + 7}:abcd", 3600)  # no such process here
    with advx.ResultStore(db) as store:
        assert store.claim("dead") == "run"  # its run is gone: taken over at once
        assert store.claim("remote") == "wait"  # another host's run: only its heartbeat tells
        time.sleep(0.6)
        assert store.claim("remote") == "run"
        assert {c["cell_key"]: c["owner"] for c in store.claims()} == {"dead": store.owner, "remote": store.owner}


def test_the_heartbeat_keeps_a_live_runs_claims(tmp_path):
    import time

    db = tmp_path / "r.db"
    with advx.ResultStore(db, claim_ttl=2.0) as first, advx.ResultStore(db) as second:
        assert first.claim("a") == "run"
        before = first.claims()[0]["expires"]
        time.sleep(3.0)  # longer than the claim lives without its heartbeat
        assert first.claims()[0]["expires"] > before
        assert second.claim("a") == "wait"


def test_the_training_record_kept_is_the_one_that_trained(tmp_path):
    loaded = {"key": "m", "kind": "model", "description": "mlp", "seconds": 0.1, "cached": True}
    trained = {**loaded, "seconds": 9.0, "cached": False}
    with advx.ResultStore(tmp_path / "r.db") as store:
        store.record(_row("done", key="a"), trainings=[loaded])  # the worker that waited came back first
        store.record(_row("done", key="b"), trainings=[trained])
        store.record(_row("done", key="c"), trainings=[loaded])
        (rec,) = store.trainings()
        assert rec["cached"] == 0 and rec["seconds"] == 9.0
