"""The Ray executor: a local 2-CPU cluster gives the in-process executor's rows; a dying task is
retried or recorded as failed with its cause. Skipped where Ray is not installed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import advx
from advx import Attack, AttackConfig

ray = pytest.importorskip("ray")


class DiesOnce(Attack):
    """FGSM whose worker process dies the first time it runs for a given marker file (none: it
    does not die), after sleeping ``seconds``."""

    name: ClassVar[str] = "dies-once"

    class Config(AttackConfig):
        eps: float = 0.1
        marker: str = ""
        always: bool = False
        seconds: float = 0.0

    def perturb(self, model, x, y, bounds, targeted=False):
        import time

        time.sleep(self.config.seconds)
        marker = Path(self.config.marker)
        if not self.config.marker:
            marker = Path(os.devnull)
        if self.config.always or not marker.exists():
            marker.touch()
            os._exit(1)  # the worker dies mid-task, as a killed node would
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
        return (x + self.config.eps * g.sign()).clamp(*bounds)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def spec(tmp_path, attacks, executor):
    return {
        "matrix": {"name": "ray", "samples": 48, "batch_size": 24, "cache_dir": str(tmp_path / "cache"), "executor": executor},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 2}}],
        "threats": [{"name": "white-box"}, {"name": "gray-box"}],
        "attacks": attacks,
    }


def test_ray_rows_equal_in_process_rows(tmp_path, cluster):
    attacks = [{"name": "fgsm", "eps": 0.1}, {"name": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 3}]
    db = tmp_path / "ray.db"
    via_ray = advx.run_matrix(spec(tmp_path, attacks, "ray"), store=db)
    local = advx.run_matrix(spec(tmp_path, attacks, "local"))
    assert via_ray.done == local.done == 4
    keys = ("robust_accuracy", "clean_accuracy", "mean_l2", "success_rate")
    ours = {r["cell_key"]: tuple(r[k] for k in keys) for r in via_ray.rows}
    assert ours == {r["cell_key"]: tuple(r[k] for k in keys) for r in local.rows}
    # each model trained once for the cluster: the model and its gray-box copy
    with advx.ResultStore(db) as store:
        trained = [t for t in store.trainings() if not t["cached"]]
        assert len(trained) == 2 and len(store.cells("ray", status="done")) == 4


def test_a_dying_task_is_retried_or_recorded_with_its_cause(tmp_path, cluster):
    reg = advx.Registry.discover()
    reg.add("attack", DiesOnce, package="tests")
    attacks = [
        {"name": "dies-once", "marker": str(tmp_path / "once")},
        {"name": "dies-once", "marker": str(tmp_path / "always"), "always": True},
    ]
    s = spec(tmp_path, attacks, "ray")
    s["threats"] = [{"name": "white-box"}]
    res = advx.run_matrix(s, registry=reg, store=tmp_path / "r.db")
    by = {r["attack_config"]["always"]: r for r in res.rows}
    assert by[False]["status"] == "done"  # died, retried, finished
    assert by[True]["status"] == "failed" and "failed after 2 tries" in by[True]["error"]
    assert "Worker" in by[True]["error"] or "died" in by[True]["error"].lower()


def test_missing_ray_is_one_line(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(advx.ConfigError, match=r"pip install 'advx\[distributed\]'"):
        advx.run_matrix(spec(tmp_path, [{"name": "fgsm"}], "ray"))


@pytest.mark.slow
def test_one_training_per_cluster_and_the_same_numbers_as_in_process(tmp_path, cluster):
    """A trained defense and a gray-box copy: Ray trains what the in-process run trains, once each,
    and with [matrix] threads (each run training in its own cache) the rows are equal."""
    def trained_spec(cache, executor):
        return {
            "matrix": {"name": "once", "samples": 40, "batch_size": 40, "cache_dir": str(tmp_path / cache), "executor": executor,
                       "diagnostics": False, "threads": 1},
            "datasets": [{"name": "digits"}],
            "models": [{"name": "mlp", "train": {"epochs": 1}}],
            "defenses": [{"name": "none"}, {"name": "adversarial-training"}],
            "threats": [{"name": "white-box"}, {"name": "gray-box"}],
            "attacks": [{"name": "fgsm", "eps": 0.1}],
        }

    local = advx.run_matrix(trained_spec("a", "local"), store=tmp_path / "local.db")
    via_ray = advx.run_matrix(trained_spec("b", "ray"), store=tmp_path / "ray.db")
    assert local.done == via_ray.done == 4
    keys = ("robust_accuracy", "clean_accuracy", "mean_l2")
    assert {r.cell_key: tuple(r[k] for k in keys) for r in via_ray.rows} == {r.cell_key: tuple(r[k] for k in keys) for r in local.rows}

    def trained(db):
        with advx.ResultStore(db) as store:
            return sorted(t["description"] for t in store.trainings() if not t["cached"])

    # the model, its gray-box copy, and each adversarially trained twin: once each, in both
    assert trained(tmp_path / "ray.db") == trained(tmp_path / "local.db")
    assert len(trained(tmp_path / "ray.db")) == 4
    assert sum(not t["cached"] for t in via_ray.trainings) == 4


def test_a_cell_past_cell_timeout_is_stopped_in_its_task(tmp_path, cluster):
    reg = advx.Registry.discover()
    reg.add("attack", DiesOnce, package="tests")
    s = spec(tmp_path, [{"name": "fgsm"}], "local")
    s["threats"] = [{"name": "white-box"}]
    advx.run_matrix(s)  # the model trained first: trainings count in a cell's time
    s = spec(tmp_path, [{"name": "dies-once", "seconds": 60.0}, {"name": "dies-once"}], "ray")
    s["threats"] = [{"name": "white-box"}]
    s["matrix"]["cell_timeout"] = 5.0
    res = advx.run_matrix(s, registry=reg)
    by = {r.attack_config["seconds"]: r for r in res.rows}
    assert by[0.0].status == "done"
    assert by[60.0].status == "failed" and "ran past [matrix] cell_timeout = 5 s and was stopped" in by[60.0].error


class DiesWhile(Attack):
    """FGSM after ``seconds``, whose worker process dies while the ``marker`` file exists."""

    name: ClassVar[str] = "dies-while"

    class Config(AttackConfig):
        eps: float = 0.1
        marker: str = ""
        seconds: float = 0.0

    def perturb(self, model, x, y, bounds, targeted=False):
        import time

        time.sleep(self.config.seconds)
        if self.config.marker and Path(self.config.marker).exists():
            os._exit(1)  # the worker dies mid-task, as a killed node would
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
        return (x + self.config.eps * g.sign()).clamp(*bounds)


def test_sharded_on_ray_equals_in_process_whole_and_a_dying_worker_loses_no_finished_shard(tmp_path, cluster):
    """One Ray task per shard: workers die from some point on (each task tried twice), the cell
    fails, the shards finished before are kept; the rerun computes only the others, and the
    merged records equal the cell computed whole in process."""
    import sqlite3
    import threading
    import time

    reg = advx.Registry.discover()
    reg.add("attack", DiesWhile, package="tests")
    marker = tmp_path / "die"
    s = spec(tmp_path, [{"name": "dies-while", "marker": str(marker), "seconds": 0.3}], "ray")
    s["threats"] = [{"name": "white-box"}]
    s["matrix"].update(samples=144, batch_size=24, shard_size=24, diagnostics=False, keep_examples=0)  # 6 shards
    db = tmp_path / "r.db"
    stored = lambda: sqlite3.connect(db).execute("SELECT COUNT(*) FROM shards").fetchone()[0] if db.exists() else 0  # noqa: E731

    def arm():  # the workers die once two shards are stored
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if stored() >= 2:
                    marker.touch()
                    return
            except sqlite3.Error:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=arm)
    t.start()
    first = advx.run_matrix(s, registry=reg, store=db)
    t.join()
    (row,) = first.rows
    assert row.status == "failed" and "failed after 2 tries" in row.error and row.error.startswith("shard ")
    assert sum(not t["cached"] for t in first.trainings) == 1  # the model trained once for the cell, not per shard
    kept = stored()
    assert 2 <= kept < 6
    marker.unlink()
    again = advx.run_matrix(s, registry=reg, store=db)
    assert again.done == 1 and again.shards == 6 - kept  # only the missing shards
    s["matrix"].pop("shard_size")
    s["matrix"]["executor"] = "local"
    whole = advx.run_matrix(s, registry=reg, store=tmp_path / "whole.db")
    with advx.ResultStore(db, readonly=True) as a, advx.ResultStore(tmp_path / "whole.db", readonly=True) as b:
        ra, rb = a.samples(row.cell_key), b.samples(row.cell_key)
        assert len(ra["idx"]) == 144 and all(torch.equal(ra[k].nan_to_num(-9.0), rb[k].nan_to_num(-9.0)) for k in ra)
    assert again.rows[0].metrics["robust_accuracy"] == whole.rows[0].metrics["robust_accuracy"]
