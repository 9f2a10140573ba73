"""Sharded cells (``[matrix] shard_size``): the merged row equals the cell computed whole, example
by example, in every executor; shards are stored as each finishes, a partial cell is shown as
such, and a rerun computes only the missing shards."""

from __future__ import annotations

import sqlite3
from typing import ClassVar

import pytest
import torch

import advx
from advx import Attack, AttackConfig
from advx.engine.executors import InProcessExecutor, MultiDeviceExecutor
from advx.engine.plan import Shard, shards

#: metrics that are times (they differ run to run); every other one must be equal
TIMES = {"attack_seconds", "images_per_second"}


def spec(tmp_path, shard_size=None, samples=300, **matrix):
    m = {
        "name": "shards", "samples": samples, "batch_size": 50, "cache_dir": str(tmp_path / "cache"), "keep_examples": 4,
        "seed": 3, "threads": 1, **matrix,
    }
    if shard_size is not None:
        m["shard_size"] = shard_size
    return {
        "matrix": m,
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 1}}],
        # random starts and random targets: both must follow the examples, not the shards
        "attacks": [
            {"name": "pgd", "eps": 0.1, "alpha": 0.02, "steps": 5, "random_start": True},
            {"name": "pgd", "eps": 0.1, "alpha": 0.02, "steps": 3, "label_mode": "random-target"},
        ],
    }


def records(db, key):
    with advx.ResultStore(db, readonly=True) as store:
        return store.samples(key)


def assert_same_cells(db_a, rows_a, db_b, rows_b):
    by = {r.cell_key: r for r in rows_b}
    assert len(rows_a) == len(rows_b)
    for a in rows_a:
        b = by[a.cell_key]
        assert a.status == b.status == "done"
        assert {k: v for k, v in a.metrics.items() if k not in TIMES} == {k: v for k, v in b.metrics.items() if k not in TIMES}
        for part in ("per_class", "per_confidence", "diagnostics"):
            assert a.details.get(part) == b.details.get(part), part
        ra, rb = records(db_a, a.cell_key), records(db_b, a.cell_key)
        assert set(ra) == set(rb)
        for k in ra:
            assert torch.equal(ra[k].nan_to_num(-9.0), rb[k].nan_to_num(-9.0)), k


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The cells computed whole, in process (the reference)."""
    tmp = tmp_path_factory.mktemp("whole")
    res = advx.run_matrix(spec(tmp), store=tmp / "whole.db")
    return tmp, res


def test_shard_size_must_be_whole_batches_and_is_not_part_of_the_key(tmp_path):
    with pytest.raises(advx.ConfigError, match=r"matrix\.shard_size: .*must be a multiple of batch_size = 50 \(got 120\)") as err:
        advx.run_matrix(spec(tmp_path, 120))
    assert "\n" not in str(err.value)
    with pytest.raises(advx.ConfigError, match=r"matrix\.shard_size: .*greater than or equal to 1"):
        advx.run_matrix(spec(tmp_path, 0))
    registry = advx.Registry.discover()
    from advx.engine.plan import plan
    from advx.engine.run import load_spec

    whole = plan(load_spec(spec(tmp_path)), registry)
    sharded = plan(load_spec(spec(tmp_path, 100)), registry)
    assert [c.key for c in whole] == [c.key for c in sharded]  # the same cells: a sharded run resumes an unsharded one
    got = shards(sharded[0])
    assert [(s.start, s.stop) for s in got] == [(0, 100), (100, 200), (200, 300)] and shards(whole[0]) == []
    # the last shard is cut at the cell's examples (digits holds 500 test images by default)
    assert [(s.start, s.stop) for s in shards(plan(load_spec(spec(tmp_path, 200, samples=5000)), registry)[0])] == [(0, 200), (200, 400), (400, 500)]


def test_sharded_in_process_equals_the_cell_computed_whole(tmp_path, whole):
    ref_dir, ref = whole
    db = tmp_path / "sharded.db"
    events = []
    res = advx.run_matrix(spec(tmp_path, 100), store=db, executor=InProcessExecutor(), on_event=lambda e, c, p: events.append((e, c)))
    assert res.shards == 6 and res.done == 2
    assert_same_cells(ref_dir / "whole.db", ref.rows, db, res.rows)
    # progress: every shard started and done, each cell done once, after its last shard
    assert sum(e == "cell_start" and isinstance(c, Shard) for e, c in events) == 6
    assert sum(e == "shard_done" for e, _ in events) == 6 and sum(e == "cell_done" for e, _ in events) == 2
    with advx.ResultStore(db, readonly=True) as store:
        for row in res.rows:
            shard_rows = store.shard_records(row.cell_key)
            assert [(s["shard"], s["start"], s["stop"], s["n"]) for s in shard_rows] == [(0, 0, 100, 100), (1, 100, 200, 100), (2, 200, 300, 100)]
            # the cost is the shards' sum, and the kept examples are the cell's first
            assert sum(s["forwards"] for s in shard_rows) == round(row.metrics["forwards_per_sample"] * 300)
            assert store.examples(row.cell_key)["idx"].tolist() == [0, 1, 2, 3]
            assert row.details["shards"] == {"count": 3, "shard_size": 100}
    # without a results file the shards are merged in memory, to the same numbers
    mem = advx.run_matrix(spec(tmp_path, 100))
    assert {r.cell_key: r.metrics["robust_accuracy"] for r in mem.rows} == {r.cell_key: r.metrics["robust_accuracy"] for r in ref.rows}


@pytest.mark.slow
def test_sharded_over_two_worker_processes_equals_the_cell_computed_whole(tmp_path, whole):
    ref_dir, ref = whole
    db = tmp_path / "workers.db"
    res = advx.run_matrix(spec(tmp_path, 100), store=db, executor=MultiDeviceExecutor(["cpu", "cpu"], cpu_threads=1))
    assert res.shards == 6
    assert_same_cells(ref_dir / "whole.db", ref.rows, db, res.rows)
    # the model was trained once (by one worker; the other read it from the cache)
    with advx.ResultStore(db, readonly=True) as store:
        assert sum(not t["cached"] for t in store.trainings()) == 1


class StopAfter(InProcessExecutor):
    """The in-process executor, interrupted (as by Ctrl-C) after ``n`` units."""

    def __init__(self, n):
        self.n = n

    def map(self, cells, *a, **k):
        for i, out in enumerate(super().map(cells, *a, **k)):
            yield out
            if i + 1 == self.n:
                raise KeyboardInterrupt


def test_an_interrupted_cell_is_partial_and_a_rerun_computes_only_the_missing_shards(tmp_path, whole, capsys):
    ref_dir, ref = whole
    db = tmp_path / "r.db"
    s = spec(tmp_path, 100)
    s["attacks"] = s["attacks"][:1]
    with pytest.raises(KeyboardInterrupt):
        advx.run_matrix(s, store=db, executor=StopAfter(2))
    with advx.ResultStore(db, readonly=True) as store:
        (row,) = store.cells()
        assert row.status == "partial" and row.metrics == {} and row.details == {"shards": {"stored": 2, "count": 3}}
        assert not row.done and store.done_keys() == set()
        assert store.intervals([row]) == {}  # no numbers for a partial cell
    # advx results shows it as partial, not as finished
    from advx.cli import main

    assert main(["results", str(db)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "partial #1" in out and "2 of 3 shards stored" in out
    from advx.report import write_report

    write_report(db, tmp_path / "r.html")
    page = " ".join((tmp_path / "r.html").read_text().split())
    assert "1 partial (shards missing)" in page and "2 of 3 shards stored" in page
    # the dry run names the missing shard, the rerun computes it alone
    from advx.engine import dry_run

    plan = dry_run(s, store=db)
    (key,) = plan.shards
    assert [x.index for x in plan.shards[key][0]] == [2]
    res = advx.run_matrix(s, store=db)
    assert res.shards == 1 and res.done == 1
    assert_same_cells(ref_dir / "whole.db", [r for r in ref.rows if r.cell_key == key], db, res.rows)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)


class FailsOnce(Attack):
    """FGSM that raises on the third batch it is given, in this process (then never again)."""

    name: ClassVar[str] = "fails-once"
    calls: ClassVar[int] = 0

    class Config(AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        type(self).calls += 1
        if type(self).calls == 3:
            raise RuntimeError("boom")
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
        return (x + self.config.eps * g.sign()).clamp(*bounds)


def test_a_failed_shard_fails_its_cell_and_keeps_the_others_for_the_rerun(tmp_path):
    reg = advx.Registry.discover()
    reg.add("attack", FailsOnce, package="tests")
    db = tmp_path / "r.db"
    s = spec(tmp_path, 100, diagnostics=False)
    s["attacks"] = [{"name": "fails-once"}]
    first = advx.run_matrix(s, registry=reg, store=db)
    (row,) = first.rows
    assert first.failed == 1 and row.status == "failed"
    assert "shard 2/3 (examples 100-199)" in row.error and "boom" in row.error
    with advx.ResultStore(db, readonly=True) as store:
        assert [r["shard"] for r in store.shard_records(row.cell_key)] == [0, 2]  # the others are kept
        assert store.cells()[0].status == "failed"
    with sqlite3.connect(db) as conn:  # and shard 1 lost too: the rerun computes two shards
        conn.execute("DELETE FROM shards WHERE shard = 0")
        conn.execute("DELETE FROM samples WHERE idx < 100")
    events = []

    def on_event(event, unit, payload):  # once the rerun stored a shard, the cell is partial again, not failed
        if event == "cell_start":
            with advx.ResultStore(db, readonly=True) as store:
                events.append(store.cells()[0].status)

    res = advx.run_matrix(s, registry=reg, store=db, on_event=on_event)
    assert res.shards == 2 and res.done == 1 and events == ["failed", "partial"]
    with advx.ResultStore(db, readonly=True) as store:
        assert store.cells()[0].status == "done" and store.cells()[0].error is None
    whole = tmp_path / "whole.db"
    s["matrix"].pop("shard_size")
    ref = advx.run_matrix(s, registry=reg, store=whole)
    assert_same_cells(whole, ref.rows, db, res.rows)


class FailsWhenTold(Attack):
    """FGSM that raises while ``fail`` is set."""

    name: ClassVar[str] = "fails-when-told"
    fail: ClassVar[bool] = False

    class Config(AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        if type(self).fail:
            raise RuntimeError("boom")
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
        return (x + self.config.eps * g.sign()).clamp(*bounds)


@pytest.mark.parametrize("shard_size", [None, 100])
def test_a_failed_rerun_returns_the_finished_cell_the_store_keeps(tmp_path, shard_size):
    """A failure never replaces a finished cell (``ResultStore.record``); the run then reports
    the stored row (``ResultStore.cell``), whole or sharded."""
    reg = advx.Registry.discover()
    reg.add("attack", FailsWhenTold, package="tests")
    db = tmp_path / "r.db"
    s = spec(tmp_path, shard_size, samples=200, diagnostics=False)
    s["attacks"] = [{"name": "fails-when-told"}]
    (done,) = advx.run_matrix(s, registry=reg, store=db).rows
    FailsWhenTold.fail = True
    try:
        res = advx.run_matrix(s, registry=reg, store=db, rerun=True)
    finally:
        FailsWhenTold.fail = False
    (row,) = res.rows
    assert res.failed == 0 and row.status == "done" and row.error is None
    assert (row.cell_key, row.metrics) == (done.cell_key, done.metrics)


def test_a_whole_cell_result_replaces_its_shards(tmp_path):
    db = tmp_path / "r.db"
    s = spec(tmp_path, 100)
    s["attacks"] = s["attacks"][:1]
    with pytest.raises(KeyboardInterrupt):
        advx.run_matrix(s, store=db, executor=StopAfter(1))
    s["matrix"].pop("shard_size")
    res = advx.run_matrix(s, store=db)  # the same cell, unsharded: computed whole
    assert res.shards == 0 and res.done == 1
    with advx.ResultStore(db, readonly=True) as store:
        assert store.shard_records(res.rows[0].cell_key) == []
        assert len(store.samples(res.rows[0].cell_key)["idx"]) == 300


def test_bucket_samples_sharded_equals_whole_with_an_empty_trailing_shard(tmp_path):
    """``bucket_samples`` selects the examples with the model: the plan bounds their count (3
    buckets), and a shard past the end of the examples selected computes nothing."""
    s = spec(tmp_path, None, bucket_samples=100, batch_size=25, diagnostics=False)
    s["attacks"] = s["attacks"][:1]
    whole = advx.run_matrix(s, store=tmp_path / "whole.db")
    s["matrix"]["shard_size"] = 100
    sharded = advx.run_matrix(s, store=tmp_path / "sharded.db")
    assert sharded.shards == 3
    with advx.ResultStore(tmp_path / "sharded.db", readonly=True) as store:
        n = [e["n"] for e in store.shard_records(sharded.rows[0].cell_key)]
    assert n[0] == 100 and sum(n) == len(records(tmp_path / "whole.db", whole.rows[0].cell_key)["idx"]) < 300 and n[-1] < 100
    assert_same_cells(tmp_path / "whole.db", whole.rows, tmp_path / "sharded.db", sharded.rows)


class GlobalNoise(Attack):
    """A random perturbation drawn from torch's global generator (which ``craft`` seeds per batch)."""

    name: ClassVar[str] = "global-noise"

    class Config(AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        return (x + self.config.eps * (2 * torch.rand_like(x) - 1)).clamp(*bounds)


def test_a_shard_crafts_with_the_batch_seeds_of_its_position_in_the_cell():
    from dataclasses import replace

    from advx.runtime.crafting import CraftOptions, craft

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    x, y = torch.rand(120, 1, 4, 4), torch.randint(0, 4, (120,))
    attack = GlobalNoise(GlobalNoise.Config())
    o = CraftOptions((0.0, 1.0), 4, batch_size=20, seed=5)
    whole = craft(model, attack, x, y, o).x_adv
    shard = craft(model, attack, x[60:100], y[60:100], replace(o, first=60), torch.arange(60, 100)).x_adv
    assert torch.equal(shard, whole[60:100])
    # without its position the shard would draw the first batches' noise
    assert not torch.equal(craft(model, attack, x[60:100], y[60:100], o, torch.arange(60, 100)).x_adv, whole[60:100])
