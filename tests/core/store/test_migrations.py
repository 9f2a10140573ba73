"""Results files survive an upgrade of advx: a file written by advx 0.1.0 (results schema 2,
committed in tests/fixtures/results/) is opened, read, resumed into and exported.

Every later schema change must keep these tests green by adding a migration
(``advx.store.migrations``), never by regenerating the fixture.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import advx
from advx.analysis.metrics import METRICS
from advx.contract.errors import DataError
from advx.store.schema import SCHEMA_VERSION

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "results"
V2_DB = FIXTURES / "results-v2.db"
V2_JSON = FIXTURES / "results-v2.json"  # `advx results results-v2.db --format json` by advx 0.1.0
V2_SPEC = FIXTURES / "fixture-v2.toml"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def v2(tmp_path):
    db = tmp_path / "results.db"
    shutil.copy2(V2_DB, db)
    return db


def test_opening_an_older_file_migrates_it_after_a_backup(v2):
    before = _sha(v2)
    with advx.ResultStore(v2) as store:
        assert store.notice and "schema 2 migrated to" in store.notice and "bak-v2" in store.notice
        assert "\n" not in store.notice
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert "claims table" in store.notice and store.claims() == []  # version 4: runs claim cells
    backup = v2.with_name("results.db.bak-v2")
    assert _sha(backup) == before  # the file as it was, byte for byte
    with advx.ResultStore(v2) as store:  # a second open has nothing to migrate
        assert store.notice is None


def test_every_stored_number_reads_as_before(v2):
    old = {r["cell_key"]: r for r in json.loads(V2_JSON.read_text())}
    with advx.ResultStore(v2) as store:
        rows = store.cells()
        assert len(rows) == len(old) == 18
        for row in rows:
            was = old[row.cell_key]
            assert row.status == was["status"]
            assert (row.dataset, row.model, row.defense, row.threat, row.attack) == (
                was["dataset"], was["model"], was["defense"], was["threat"], was["attack"]
            )
            for m in METRICS:
                if m.name in ("robust_accuracy", "adversarial_accuracy"):
                    continue
                assert row[m.name] == was.get(m.name), (row.cell_key, m.name)
            # version 2's robust accuracy was the accuracy on adversarial examples: kept under its
            # own name; the standard one (correct clean and under attack) recomputed from the records
            assert row["adversarial_accuracy"] == was.get("robust_accuracy")
            if row.status == "done":
                s = store.samples(row.cell_key)
                both = ((s["clean_pred"] == s["label"]) & (s["adv_pred"] == s["label"])).float().mean()
                assert row.robust_accuracy == pytest.approx(float(both)) and row.robust_accuracy <= row.clean_accuracy
                assert row.details["per_class"].keys() == was["metrics"]["per_class"].keys()
                for c, v in row.details["per_class"].items():
                    assert v["adversarial_accuracy"] == pytest.approx(was["metrics"]["per_class"][c]["robust_accuracy"])
            else:
                assert row.details == (was["metrics"] or {})
            assert row.attack_config == was["attack_config"]
            # traits the old file never stored, rebuilt for the threat models it had
            assert row.less_knowledge == (row.threat_config["name"] in ("undefended", "member"))
            if row.status == "done":
                assert len(store.samples(row.cell_key)["idx"]) == row.n == 60
        assert store.examples(rows[0].cell_key)["x"].shape[0] == 2
        assert store.worst_case([r for r in rows if r.threat == "white-box" and r.defense == "none"]) is not None


def test_a_rerun_resumes_into_the_migrated_file(v2, tmp_path):
    spec = advx.MatrixSpec.from_toml(V2_SPEC)
    spec = spec.model_copy(update={"matrix": spec.matrix.model_copy(update={"cache_dir": str(tmp_path / "cache")})})
    dry = advx.engine.dry_run(spec, store=v2)  # says which cells a rerun will recompute
    assert {c.attack.name for c in dry.todo} == {"pgd"} and len(dry.todo) == 6 and len(dry.done) == 12
    res = advx.run_matrix(spec, store=v2)
    # fgsm and the not-applicable cells kept their keys: skipped. pgd gained a setting since 0.1.0
    # (early_exit, and per-example random starts): its numbers differ, so its cells are new ones
    assert res.skipped == 12 and {r.attack_config["name"] for r in res.rows} == {"pgd"} and len(res.rows) == 6
    with advx.ResultStore(v2) as store:
        # the resumed cells now carry the identity the current plan computes for their key
        assert all(not r.identity["examples"].get("legacy") for r in store.cells("fixture-v2"))
        assert len(store.cells("fixture-v2")) == 18
        # the 0.1.0 pgd cells stay readable, listed as cells of an earlier version of the spec
        earlier = store.earlier_cells("fixture-v2")
        assert len(earlier) == 6 and {r.attack_config["name"] for r in earlier} == {"pgd"}


def test_exports_of_the_migrated_file(v2):
    with advx.ResultStore(v2) as store:
        exported = json.loads(store.export("json"))
        csv = store.export("csv")
        md = store.export("markdown")
    old = {r["cell_key"]: r for r in json.loads(V2_JSON.read_text())}
    for r in exported:
        assert r["adversarial_accuracy"] == old[r["cell_key"]]["robust_accuracy"]
    assert csv.splitlines()[0].startswith("cell_key,status") and len(csv.splitlines()) == 19
    assert "robust_accuracy" in md.splitlines()[0]


def test_reading_an_older_file_read_only_never_writes_it(v2):
    before = _sha(v2)
    with advx.ResultStore(v2, readonly=True) as store:
        assert len(store.cells()) == 18
        assert "read through a migrated copy" in store.notice
    assert _sha(v2) == before
    assert not v2.with_name("results.db.bak-v2").exists()


def test_a_file_from_a_newer_advx_is_read_but_never_written(v2):
    with advx.ResultStore(v2):
        pass
    with sqlite3.connect(v2) as c:
        c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        c.execute("ALTER TABLE cells ADD COLUMN something_new TEXT")
    with advx.ResultStore(v2, readonly=True) as store:
        assert len(store.cells()) == 18
    with pytest.raises(DataError, match="newer advx") as exc:
        advx.ResultStore(v2)
    assert "\n" not in str(exc.value)


def test_a_failed_migration_leaves_the_file_as_it_was(v2, monkeypatch):
    from advx.store import migrations

    def broken(conn):
        conn.execute("DELETE FROM samples")
        raise RuntimeError("half way")

    monkeypatch.setitem(migrations.MIGRATIONS, 2, broken)
    before = _sha(v2)
    with pytest.raises(RuntimeError):
        advx.ResultStore(v2)
    with sqlite3.connect(v2) as c:
        assert c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
        assert c.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    assert _sha(v2.with_name("results.db.bak-v2")) == before


def test_a_new_metric_needs_no_migration(tmp_path, monkeypatch):
    from advx.analysis import metrics

    spec = {
        "matrix": {"name": "m", "samples": 20, "batch_size": 20, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 1}}],
        "attacks": [{"name": "fgsm", "eps": [0.05, 0.1]}],
    }
    db = tmp_path / "r.db"
    advx.run_matrix({**spec, "attacks": [{"name": "fgsm", "eps": 0.05}]}, store=db)
    extra = metrics.MetricDef("always_one", lambda s, cost: 1.0)
    monkeypatch.setattr(metrics, "METRICS", [*metrics.METRICS, extra])
    monkeypatch.setattr(advx.engine.pipeline, "summarize", lambda s, cost=None: {m.name: m.fn(s, cost) for m in metrics.METRICS})
    res = advx.run_matrix(spec, store=db)  # the same file, one metric more: no refusal, no migration
    assert res.skipped == 1 and res.rows[0]["always_one"] == 1.0
    with advx.ResultStore(db) as store:
        assert store.notice is None
        assert sorted(r.get("always_one", 0.0) for r in store.cells()) == [0.0, 1.0]


V4_DB = FIXTURES / "results-v4.db"  # 2 digits cells written by advx before sharded cells (results schema 4)


def test_a_version_4_file_gets_the_shards_table_and_keeps_its_cells(tmp_path):
    db = tmp_path / "results.db"
    shutil.copy2(V4_DB, db)
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT cell_key, status, metrics FROM cells ORDER BY cell_key").fetchall()
        samples = conn.execute("SELECT COUNT(*) FROM samples").fetchone()
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shards'").fetchall()
    with advx.ResultStore(db) as store:
        assert "schema 4 migrated to 5" in store.notice and "shards table" in store.notice
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION) == "5"
        rows = store.cells()
        assert sorted((r.cell_key, r.status) for r in rows) == [(k, s) for k, s, _ in before]
        assert {r.cell_key: r.metrics for r in rows} == {k: json.loads(m) for k, _, m in before}
        assert all(store.shard_records(r.cell_key) == [] for r in rows)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM samples").fetchone() == samples
        assert conn.execute("SELECT COUNT(*) FROM shards").fetchone() == (0,)
    assert db.with_name("results.db.bak-v4").exists()
