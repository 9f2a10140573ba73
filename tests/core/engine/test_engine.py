"""The engine's invariants: module map, one schema, configs validated once, per-batch seeds,
reused crafting counted once, training time kept out of cell time."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sqlite3
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import advx
from advx import Attack, AttackConfig, Defense, Model
from advx.store.schema import CELL_COLUMN_NAMES, CELL_COLUMNS, EXPORT_COLUMNS, SAMPLE_COLUMN_NAMES, TABLE_COLUMNS

CORE = Path(advx.__file__).resolve().parent


def _imports(path: Path, package: str) -> set[str]:
    """The advx modules ``path`` imports at module level (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [f"{mod}.{a.name}" for a in node.names]
            out |= {n for n in names if importlib.util.find_spec(n) is not None} if node.module is None else {mod}
    return out


def test_core_modules_have_docstrings_and_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for info in pkgutil.walk_packages([str(CORE)], "advx."):
        if info.name.startswith("advx.plugins") or info.name == "advx.__main__":
            continue
        mod = importlib.import_module(info.name)
        assert (mod.__doc__ or "").strip(), f"{info.name} has no docstring saying what it owns"
        path = Path(mod.__file__)
        package = info.name if path.name == "__init__.py" else info.name.rsplit(".", 1)[0]
        graph[info.name] = {m for m in _imports(path, package) if m in {i.name for i in pkgutil.walk_packages([str(CORE)], "advx.") if i.name != "advx.__main__"}}
    # depth-first search for a cycle among module-level imports (packages' __init__ re-exports excluded)
    edges = {k: {v for v in vs if not (k + ".").startswith(v + ".")} for k, vs in graph.items() if k != "advx"}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in edges.get(n, ()):
            if m == "advx" or m not in edges:
                continue
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack + [m]))
            if not state.get(m):
                visit(m, stack + [m])
        state[n] = 2

    for n in edges:
        if not state.get(n):
            visit(n, [n])
    for gone in ("advx.parallel", "advx.checks", "advx.flags"):
        assert gone not in graph


def test_one_schema_for_store_tables_exports_and_rows(tmp_path):
    spec = {
        "matrix": {"name": "schema", "samples": 40, "batch_size": 40, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 1}}],
        "attacks": [{"name": "fgsm", "eps": 0.1}],
    }
    db = tmp_path / "r.db"
    res = advx.run_matrix(spec, store=db)
    (row,) = res.rows
    assert isinstance(row, advx.CellRow)
    assert set(row.flat()) == set(EXPORT_COLUMNS)
    # every declared metric is a key of the row's metrics, not a column: a new metric changes no table
    assert {m.name for m in advx.analysis.metrics.METRICS} == set(row.metrics)
    with sqlite3.connect(db) as c:
        assert [r[1] for r in c.execute("PRAGMA table_info(cells)")] == list(CELL_COLUMN_NAMES)
        assert [r[1] for r in c.execute("PRAGMA table_info(samples)")][1:] == list(SAMPLE_COLUMN_NAMES)
    with advx.ResultStore(db) as store:
        header = store.export("csv").splitlines()[0].split(",")
        assert header == list(EXPORT_COLUMNS)
        md = store.export("markdown").splitlines()[0]
        assert all(c.name in md for c in TABLE_COLUMNS)
        assert set(store.samples(row.cell_key)) == set(SAMPLE_COLUMN_NAMES)
        (read,) = store.cells()
        assert read == row  # decoded once, to the same typed row
    names = {c.name for c in CELL_COLUMNS}
    assert not any(m.name in names for m in advx.analysis.metrics.METRICS)
    assert {c.header for c in TABLE_COLUMNS} >= {"clean acc", "robust acc"}


class Counted:
    """Mixin counting instantiations per class."""

    made: ClassVar[dict[str, int]] = {}

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        Counted.made[type(self).name] = Counted.made.get(type(self).name, 0) + 1


class CountedFGSM(Counted, Attack):
    """FGSM that counts instantiations."""

    name: ClassVar[str] = "counted-fgsm"

    class Config(AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)
        return (x + self.config.eps * g.sign()).clamp(*bounds).detach()


class CountedDefense(Counted, Defense):
    """No defense, counted."""

    name: ClassVar[str] = "counted-none"

    def apply(self, model, ctx):
        return model


class CountedMLP(Counted, Model):
    """A linear model, counted."""

    name: ClassVar[str] = "counted-linear"

    def build(self, info):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, info.num_classes))


def test_plugins_are_instantiated_once_per_config(tmp_path):
    reg = advx.Registry.discover()
    for kind, cls in (("attack", CountedFGSM), ("defense", CountedDefense), ("model", CountedMLP)):
        reg.add(kind, cls, package="tests")
    Counted.made.clear()
    spec = {
        "matrix": {"name": "once", "samples": 30, "batch_size": 30, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "counted-linear", "normalize": False, "train": {"epochs": 1}}],
        "defenses": [{"name": "counted-none"}],
        "threats": [{"name": "white-box"}, {"name": "undefended"}],
        "attacks": [{"name": "counted-fgsm", "eps": [0.1, 0.2]}],
    }
    res = advx.run_matrix(spec, registry=reg)
    assert res.done == 4
    # 4 cells: one model, one defense, two attack configs, each created once
    assert Counted.made == {"counted-linear": 1, "counted-none": 1, "counted-fgsm": 2}
    # configs stay validated pydantic objects from planning to execution
    cells = advx.plan(advx.MatrixSpec.from_dict(spec), reg)
    assert isinstance(cells[0].attack.config, CountedFGSM.Config) and cells[0].attack.config.eps == 0.1


def test_random_starts_differ_per_batch_and_do_not_depend_on_history(digits_cnn, digits):
    _, info, x, y = digits
    x2 = torch.cat([x[:20], x[:20]])  # the same 20 images in two batches
    y2 = torch.cat([y[:20], y[:20]])
    pgd = lambda: advx.Registry.discover().attack("pgd", eps=0.2, alpha=0.05, steps=1)  # noqa: E731
    from advx.runtime.crafting import CraftOptions, craft

    def options(batch_size, seed):
        return CraftOptions(info.bounds, 10, torch.device("cpu"), batch_size, seed)

    a = craft(digits_cnn, pgd(), x2, y2, options(20, 3))
    d = a.x_adv[:20] - a.x_adv[20:]
    assert d.abs().max() > 0  # fresh noise for the second batch
    # whatever ran before in the process, the same cell gives the same examples
    craft(digits_cnn, pgd(), x[:50], y[:50], options(25, 9))
    torch.rand(100)
    b = craft(digits_cnn, pgd(), x2, y2, options(20, 3))
    assert torch.equal(a.x_adv, b.x_adv)
    # a batch alone equals the same batch at the same position in a longer run
    c = craft(digits_cnn, pgd(), x2[:20], y2[:20], options(20, 3))
    assert torch.equal(c.x_adv, a.x_adv[:20])


def test_resumed_run_equals_uninterrupted(tmp_path):
    spec = {
        "matrix": {"name": "resume", "samples": 60, "batch_size": 20, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 2}}],
        "attacks": [{"name": "pgd", "eps": [0.1, 0.2], "alpha": 0.05, "steps": 2}],
    }
    full = advx.run_matrix(spec)
    db = tmp_path / "r.db"
    seen = []

    def stop_after_one(event, cell, payload):
        if event == "cell_done":
            seen.append(cell.key)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        advx.run_matrix(spec, store=db, on_event=stop_after_one)
    advx.run_matrix(spec, store=db)
    with advx.ResultStore(db) as store:
        resumed = {r["cell_key"]: r["robust_accuracy"] for r in store.cells()}
    assert resumed == {r["cell_key"]: r["robust_accuracy"] for r in full.rows}


def test_reused_crafting_is_counted_once_and_training_is_not_cell_time(tmp_path):
    spec = {
        "matrix": {"name": "reuse", "samples": 60, "batch_size": 30, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 3}}, {"name": "mlp", "hidden": [32], "train": {"epochs": 3}}],
        "threats": [{"name": "transfer", "source": {"name": "mlp", "hidden": [48], "train": {"epochs": 3}}}],
        "attacks": [{"name": "bim", "eps": 0.1, "alpha": 0.02, "steps": 5}],
    }
    db = tmp_path / "r.db"
    res = advx.run_matrix(spec, store=db)
    first, second = res.rows
    assert first["crafted_by"] is None and first["forwards_per_sample"] == 5.0 and first["attack_seconds"] > 0
    assert second["crafted_by"] == first["cell_key"]
    assert second["attack_seconds"] is None and second["forwards_per_sample"] is None and second["images_per_second"] is None
    assert second["robust_accuracy"] is not None
    # training: the first cell trained its target and the source, the second its own target
    assert [t["description"] for t in first["trainings"]] == ["mlp", "mlp(hidden=[48])"]
    assert first["train_seconds"] == pytest.approx(sum(t["seconds"] for t in first["trainings"]))
    assert len(second["trainings"]) == 1 and second["train_seconds"] > 0
    assert first["seconds"] < first["train_seconds"] + first["seconds"]
    with advx.ResultStore(db) as store:
        assert len(store.trainings()) == 3
    # a rerun loads from the cache: trainings are recorded as cached and cost (almost) nothing
    again = advx.run_matrix(spec, rerun=True)
    assert all(t["cached"] for t in again.trainings)


class Hungry(Attack):
    """PGD-like random start + one FGSM step; runs 'out of memory' on batches above ``limit``."""

    name: ClassVar[str] = "hungry"
    limit: ClassVar[int] = 16

    class Config(AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        gen = self.generator(x.device)
        start = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * self.config.eps / 2).clamp(*bounds)
        start.requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(start), y), start)
        return torch.max(torch.min(start.detach() + self.config.eps / 2 * g.sign(), x + self.config.eps), x - self.config.eps).clamp(*bounds)


def test_out_of_memory_backs_off_to_a_smaller_batch(tmp_path):
    reg = advx.Registry.discover()
    reg.add("attack", Hungry, package="tests")

    def spec(batch, floor=1):
        return {
            "matrix": {"name": "oom", "samples": 64, "batch_size": batch, "min_batch_size": floor, "cache_dir": str(tmp_path / "c")},
            "datasets": [{"name": "digits"}],
            "models": [{"name": "mlp", "train": {"epochs": 1}}],
            "attacks": [{"name": "hungry"}],
        }

    (backed,) = advx.run_matrix(spec(64), registry=reg).rows
    (small,) = advx.run_matrix(spec(16), registry=reg).rows
    assert backed["status"] == "done" and backed["batch_size"] == 16 and small["batch_size"] == 16
    assert backed["robust_accuracy"] == small["robust_accuracy"] and backed["mean_l2"] == small["mean_l2"]
    assert backed["forwards_per_sample"] == small["forwards_per_sample"] == 1.0  # failed attempts are not the attack's cost
    # at the floor, the cell fails with the cause
    (failed,) = advx.run_matrix(spec(64, floor=32), registry=reg).rows
    assert failed["status"] == "failed"
    assert 'attack "hungry" ran out of memory even at batch size 32 (the floor is 32)' in failed["error"]


class Informative(CountedFGSM):
    """FGSM that reports per-example information."""

    name: ClassVar[str] = "informative"

    def batch_info(self):
        return {"which": torch.arange(3)}


def test_attack_batch_info_is_stored_with_the_cell(tmp_path):
    reg = advx.Registry.discover()
    reg.add("attack", Informative, package="tests")
    spec = {
        "matrix": {"name": "info", "samples": 6, "batch_size": 3, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 1}}],
        "attacks": [{"name": "informative"}],
    }
    (row,) = advx.run_matrix(spec, registry=reg).rows
    assert row["details"]["attack_info"] == {"which": [0, 1, 2, 0, 1, 2]}


@pytest.mark.parametrize("option", [{"amp": "bf16"}, {"channels_last": True}])
def test_kernel_options_enter_the_key_and_keep_results_close(tmp_path, option):
    def spec(**extra):
        return {
            "matrix": {"name": "kernels", "samples": 64, "batch_size": 64, "cache_dir": str(tmp_path / "c"), **extra},
            "datasets": [{"name": "digits"}],
            "models": [{"name": "mnist-cnn", "train": {"epochs": 2}}],
            "attacks": [{"name": "pgd", "eps": 0.1, "alpha": 0.03, "steps": 5}],
        }

    (plain,) = advx.run_matrix(spec()).rows
    (fast,) = advx.run_matrix(spec(**option)).rows
    assert fast["status"] == "done" and fast["cell_key"] != plain["cell_key"]
    # half precision may change an attack's result; channels-last must not (beyond float noise)
    tol = 0.1 if "amp" in option else 2 / 64
    assert abs(fast["robust_accuracy"] - plain["robust_accuracy"]) <= tol
    assert fast["max_linf"] <= 0.1 + 1e-6


def test_suite_records_which_attack_broke_each_example(tmp_path):
    spec = {
        "matrix": {"name": "suite", "samples": 24, "batch_size": 12, "cache_dir": str(tmp_path / "c"), "diagnostics": False},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 2}}],
        "attacks": [{"name": "suite", "eps": 0.15, "steps": 5, "queries": 20}],
    }
    (row,) = advx.run_matrix(spec).rows
    broken_by = row["details"]["attack_info"]["broken_by"]
    assert len(broken_by) == 24 and set(broken_by) <= {-2, -1, 0, 1, 2, 3}
    # an example counts as robust exactly when no member broke it (and the clean input was right)
    robust = sum(1 for b in broken_by if b == -1)
    assert robust / 24 == pytest.approx(row["robust_accuracy"])
