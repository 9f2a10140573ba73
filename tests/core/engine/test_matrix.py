"""The matrix engine: the issue's spec, resume, failures, kill and resume, threat models."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import advx
from advx import Attack, AttackConfig
from advx.engine.spec import MatrixSpec

ISSUE_SPEC = (Path(__file__).resolve().parents[3] / "experiments" / "digits-demo" / "full.toml").read_text()


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def spec_with_cache(text: str, cache: str) -> MatrixSpec:
    spec = MatrixSpec.from_toml_string(text)
    return spec.model_copy(update={"matrix": spec.matrix.model_copy(update={"cache_dir": cache})})


def test_issue_spec_runs_and_resumes(tmp_path, cache):
    db = tmp_path / "r.db"
    spec = spec_with_cache(ISSUE_SPEC, cache)
    res = advx.run_matrix(spec, store=db)
    assert (res.done, res.skipped, res.failed) == (4, 0, 0)
    with advx.ResultStore(db) as store:
        rows = store.cells("digits-demo")
        assert len(rows) == 4
        by_attack = {r["attack"]: r for r in rows}
        fg = [by_attack[f"fgsm(eps={e})"] for e in (0.1, 0.2, 0.3)]
        # success grows with eps; budgets are what was asked
        assert fg[0]["robust_accuracy"] >= fg[1]["robust_accuracy"] >= fg[2]["robust_accuracy"]
        for r, eps in zip(fg, (0.1, 0.2, 0.3)):
            assert r["max_linf"] <= eps + 1e-6 and r["n"] == 500
            assert r["forwards_per_sample"] == 1.0 and r["backwards_per_sample"] == 1.0
        bim = by_attack["bim(eps=0.2, alpha=0.025, steps=8)"]
        # early exit: a broken example leaves the batch, so fewer than the 8 steps on average
        assert 1.0 <= bim["forwards_per_sample"] == bim["backwards_per_sample"] < 8.0
        assert bim["robust_accuracy"] <= by_attack["fgsm(eps=0.2)"]["robust_accuracy"]
        r = rows[0]
        assert r["clean_accuracy"] > 0.7
        assert r["advx_version"] == advx.__version__ and r["torch_version"] == torch.__version__
        assert r["device"] == "cpu" and r["seed"] == 0 and r["started"] and r["finished"]
        assert r["attack_config"]["name"] == "fgsm"
        assert r["train_config"]["epochs"] == 5
        metrics = r["details"]
        assert set(metrics["per_class"]) == {str(i) for i in range(10)}
        assert sum(v["n"] for v in metrics["per_class"].values()) == 500
        assert sum(v["count"] for v in metrics["per_confidence"].values()) == 500
        s = store.samples(r["cell_key"])
        assert len(s["idx"]) == 500
        assert float((s["clean_pred"] == s["label"]).float().mean()) == pytest.approx(r["clean_accuracy"])
        # worst case over attacks, per example, is at most every single attack's accuracy
        worst = store.worst_case(rows)
        assert worst <= min(x["robust_accuracy"] for x in rows) + 1e-9
    again = advx.run_matrix(spec, store=db)
    assert (again.done, again.skipped) == (0, 4)


class Cheater(Attack):
    """Returns examples outside its declared budget."""

    name: ClassVar[str] = "cheater"
    norm: ClassVar[str] = "linf"

    class Config(AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        return (x + 2 * self.config.eps).clamp(*bounds)


class Crasher(Attack):
    """Raises inside perturb."""

    name: ClassVar[str] = "crasher"

    class Config(AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        raise RuntimeError("kaboom")


class CountingFGSM(Attack):
    """FGSM that counts its calls (to show crafted examples are reused)."""

    name: ClassVar[str] = "counting-fgsm"
    calls: ClassVar[int] = 0

    class Config(AttackConfig):
        eps: float = 0.2

    def perturb(self, model, x, y, bounds, targeted=False):
        type(self).calls += 1
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)
        return (x + self.config.eps * g.sign()).clamp(*bounds).detach()


def small_spec(cache, attacks, **extra):
    return {
        "matrix": {"name": "small", "samples": 64, "batch_size": 32, "cache_dir": cache, **extra.pop("matrix", {})},
        "datasets": [{"name": "digits"}],
        "models": extra.pop("models", [{"name": "mlp", "train": {"epochs": 3}}]),
        "attacks": attacks,
        **extra,
    }


def test_failed_cell_is_recorded_and_matrix_goes_on(tmp_path, cache):
    reg = advx.Registry.discover()
    reg.add("attack", Cheater, package="tests")
    reg.add("attack", Crasher, package="tests")
    spec = small_spec(cache, [{"name": "cheater"}, {"name": "fgsm", "eps": 0.1}, {"name": "crasher"}])
    db = tmp_path / "r.db"
    res = advx.run_matrix(spec, registry=reg, store=db)
    assert (res.done, res.failed) == (1, 2)
    with advx.ResultStore(db) as store:
        rows = {r["attack"]: r for r in store.cells()}
    assert rows["cheater"]["status"] == "failed"
    assert 'attack "cheater" exceeded its linf budget eps=0.1' in rows["cheater"]["error"]
    # an error a plugin raised names the plugin (the cell is the row's place columns)
    assert rows["crasher"]["error"] == 'attack "crasher" raised RuntimeError: kaboom'
    assert rows["fgsm(eps=0.1)"]["status"] == "done"
    # a rerun retries failed cells only
    res2 = advx.run_matrix(spec, registry=reg, store=db)
    assert (res2.skipped, res2.failed) == (1, 2)


def test_model_checks_fail_cell_with_clear_message(tmp_path, cache):
    from advx import Defense

    class Softmaxed(Defense):
        """Returns probabilities: a classic mistake."""

        name: ClassVar[str] = "softmaxed"

        def apply(self, model, ctx):
            return torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()

    class Training(Defense):
        """Leaves the model in training mode."""

        name: ClassVar[str] = "train-mode"

        def apply(self, model, ctx):
            wrapped = torch.nn.Sequential(model)
            wrapped.to(ctx.device)
            wrapped.train()
            wrapped.eval = lambda: wrapped  # a defense that resists eval(): the kernel must notice
            return wrapped

    reg = advx.Registry.discover()
    reg.add("defense", Softmaxed)
    reg.add("defense", Training)
    spec = small_spec(cache, [{"name": "fgsm"}], defenses=[{"name": "softmaxed"}, {"name": "train-mode"}])
    res = advx.run_matrix(spec, registry=reg)
    errors = {r["defense"]: r["error"] for r in res.rows}
    assert "returns probabilities" in errors["softmaxed"]
    assert "training mode" in errors["train-mode"]


def test_transfer_examples_are_crafted_once_per_source(cache):
    reg = advx.Registry.discover()
    reg.add("attack", CountingFGSM)
    CountingFGSM.calls = 0
    spec = small_spec(
        cache,
        [{"name": "counting-fgsm"}],
        models=[{"name": "mnist-cnn", "train": {"epochs": 3}}, {"name": "mlp", "hidden": [64], "train": {"epochs": 3}}],
        threats=[{"name": "transfer", "source": {"name": "mlp", "train": {"epochs": 3, "seed": 7}}}],
    )
    res = advx.run_matrix(spec, registry=reg)
    assert res.done == 2
    assert CountingFGSM.calls == 2  # 64 samples / batch 32, crafted once for both targets
    assert all(r["threat"] == "transfer<-mlp" for r in res.rows)
    # the crafted examples are the same, so perturbation norms agree exactly between targets
    assert res.rows[0]["mean_l2"] == res.rows[1]["mean_l2"]


def test_threat_models_differ_where_they_should(cache):
    spec = small_spec(
        cache,
        [{"name": "bim", "eps": 0.15}],
        models=[{"name": "mlp", "train": {"epochs": 5}}],
        threats=[
            {"name": "white-box"},
            {"name": "undefended"},
            {"name": "gray-box"},
            {"name": "transfer", "source": {"name": "mnist-cnn", "train": {"epochs": 5}}},
        ],
    )
    res = advx.run_matrix(spec)
    rows = {r["threat"]: r for r in res.rows}
    assert res.done == 4, [r.get("error") for r in res.rows]
    wb = rows["white-box"]
    # with no defense, attacking the base model is attacking the evaluated model
    assert rows["undefended"]["robust_accuracy"] == pytest.approx(wb["robust_accuracy"])
    # an attacker who knows less does no better than the white-box one
    gray = next(v for k, v in rows.items() if k.startswith("gray-box"))
    transfer = next(v for k, v in rows.items() if k.startswith("transfer"))
    assert gray["robust_accuracy"] >= wb["robust_accuracy"]
    assert transfer["robust_accuracy"] >= wb["robust_accuracy"]
    assert transfer["threat_config"]["source"]["name"] == "mnist-cnn"


def test_transfer_needs_a_source(registry):
    with pytest.raises(advx.ConfigError, match="source"):
        advx.plan(MatrixSpec.from_dict(small_spec(None, [{"name": "fgsm"}], threats=[{"name": "transfer"}])), registry)


def test_confidence_bucket_selection(cache):
    spec = small_spec(cache, [{"name": "fgsm", "eps": 0.1}], matrix={"bucket_samples": 20})
    res = advx.run_matrix(spec)
    row = res.rows[0]
    buckets = row["details"]["per_confidence"]
    assert all(b["count"] <= 20 for b in buckets.values())
    assert sum(b["count"] for b in buckets.values()) == row["n"]


def test_class_ratios_change_the_trained_model(cache, registry):
    ds_full = registry.dataset("digits")
    ds_imb = registry.dataset("digits", class_ratios={3: 0.05})
    assert len(advx.load_split(ds_imb, "train")) < len(advx.load_split(ds_full, "train"))
    spec = small_spec(cache, [{"name": "fgsm", "eps": 0.05}], matrix={"samples": 500})
    spec["datasets"] = [{"name": "digits"}, {"name": "digits", "class_ratios": {3: 0.05}}]
    spec["models"] = [{"name": "mlp", "train": {"epochs": 10}}]
    res = advx.run_matrix(spec)
    per = [r["details"]["per_class"]["3"]["clean_accuracy"] for r in res.rows]
    assert per[1] < per[0]  # the under-represented class suffers


SLOW_SPEC = """
[matrix]
name = "slow"
samples = 200
batch_size = 50
cache_dir = "{cache}"
diagnostics = false

[[datasets]]
name = "digits"

[[models]]
name = "mlp"
train = {{ epochs = 1 }}

[[attacks]]
name = "bim"
eps = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12]
alpha = 0.001
steps = 300
"""


def test_killed_run_keeps_finished_cells_and_resumes(tmp_path):
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW_SPEC.format(cache=tmp_path / "cache"))
    db = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "advx", "run", str(spec), "--db", str(db)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    finished = 0
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if db.exists():
                try:
                    with sqlite3.connect(db) as c:
                        finished = c.execute("SELECT count(*) FROM cells WHERE status='done'").fetchone()[0]
                except sqlite3.OperationalError:
                    continue
            if finished >= 2 or proc.poll() is not None:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 2 <= finished < 12, "the run should have been killed mid-way"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = c.execute("SELECT count(*) FROM cells WHERE status='done'").fetchone()[0]
        n_samples = c.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert kept >= finished and n_samples == 200 * kept
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{kept} already in the results (skipped)" in out.stdout
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM cells WHERE status='done'").fetchone()[0] == 12


def test_keyboard_interrupt_keeps_finished_cells(tmp_path, cache):
    db = tmp_path / "r.db"
    seen = []

    def on_event(event, cell, payload):
        if event == "cell_done":
            seen.append(cell.key)
            if len(seen) == 2:
                raise KeyboardInterrupt

    spec = small_spec(cache, [{"name": "fgsm", "eps": [0.05, 0.1, 0.2, 0.3]}])
    with pytest.raises(KeyboardInterrupt):
        advx.run_matrix(spec, store=db, on_event=on_event)
    with advx.ResultStore(db) as store:
        assert {r["cell_key"] for r in store.cells(status="done")} == set(seen)
    res = advx.run_matrix(spec, store=db)
    assert (res.skipped, res.done) == (2, 2)


def test_detector_scores_give_a_detection_auc(tmp_path, cache):
    """A defense exposing detector_score: per-example scores stored, ROC AUC reported."""
    from sklearn.metrics import roc_auc_score

    from advx import Defense
    from advx.testing import GridDetector

    class Extremes(Defense):
        """Flags inputs off the digits' 1/16 pixel grid (a toy detector)."""

        name: ClassVar[str] = "extremes"

        def apply(self, model, ctx):
            assert ctx.registry is not None
            inner = ctx.defense("none", model)  # composition through the context
            return GridDetector(inner).eval()

    reg = advx.Registry.discover()
    reg.add("defense", Extremes)
    spec = small_spec(cache, [{"name": "fgsm", "eps": 0.3}], defenses=[{"name": "extremes"}, {"name": "none"}])
    db = tmp_path / "r.db"
    res = advx.run_matrix(spec, registry=reg, store=db)
    rows = {r["defense"]: r for r in res.rows}
    assert rows["none"]["detection_auc"] is None
    auc = rows["extremes"]["detection_auc"]
    with advx.ResultStore(db) as store:
        s = store.samples(rows["extremes"]["cell_key"])
        expected = roc_auc_score([0] * len(s["clean_score"]) + [1] * len(s["adv_score"]),
                                 torch.cat([s["clean_score"], s["adv_score"]]).numpy())
        assert auc == pytest.approx(expected, abs=1e-6)
        assert auc > 0.95
        assert torch.isnan(store.samples(rows["none"]["cell_key"])["clean_score"]).all()


def test_roc_auc_with_ties():
    from sklearn.metrics import roc_auc_score

    from advx.analysis.metrics import roc_auc

    neg = torch.tensor([0.1, 0.4, 0.4, 0.35, 0.8])
    pos = torch.tensor([0.4, 0.9, 0.35, 0.8, 0.8, 0.2])
    expected = roc_auc_score([0] * 5 + [1] * 6, torch.cat([neg, pos]).numpy())
    assert roc_auc(neg, pos) == pytest.approx(expected)
    assert roc_auc(torch.tensor([float("nan")]), pos) is None


def test_old_results_file_is_a_clear_error(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:  # what advx 0.1 wrote: schema version 1
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        c.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        c.execute("CREATE TABLE cells (cell_key TEXT PRIMARY KEY, status TEXT)")
    with pytest.raises(advx.DataError, match="cannot migrate"):
        advx.ResultStore(db)


def test_sample_seed_draws_a_seeded_subset_of_the_test_set(tmp_path, cache):
    """Without sample_seed a cell evaluates the first ``samples`` test examples; with it, a
    sorted random subset drawn by that seed (the same for every cell, so cells compare)."""

    def indices(seed, name):
        spec = small_spec(cache, [{"name": "fgsm", "eps": 0.1}], matrix={"sample_seed": seed, "samples": 16})
        db = tmp_path / f"{name}.db"
        res = advx.run_matrix(spec, store=db)
        with advx.ResultStore(db) as store:
            return store.samples(res.rows[0]["cell_key"])["idx"].tolist()

    assert indices(None, "first") == list(range(16))
    one, again, two = indices(1, "one"), indices(1, "again"), indices(2, "two")
    assert one == again == sorted(one) and len(set(one)) == 16 and one != list(range(16)) and one != two
    assert max(one) < 500  # digits' test split


# -- [matrix] threads, --threads --------------------------------------------------------------------


def test_threads_sets_torch_threads_for_the_run_and_restores_them(tiny, monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        record = lambda event, cell, payload: seen.append(torch.get_num_threads()) if event in ("cell_start", "batch") else None  # noqa: E731
        assert advx.run_matrix(tiny(threads=1), on_event=record).failed == 0
        assert seen and set(seen) == {1}  # while the cell ran
        assert torch.get_num_threads() == 2  # the embedding program's own setting, back
        seen.clear()
        advx.run_matrix(tiny(), on_event=record)
        assert set(seen) == {2}  # unset: torch's as it was
        # several CPU devices: each worker gets that many threads
        got = []
        monkeypatch.setattr("advx.engine.run.MultiDeviceExecutor", lambda devices, cpu_threads=None: got.append(cpu_threads) or advx.InProcessExecutor())
        advx.run_matrix(tiny(threads=1, device="cpu,cpu"))
        assert got == [1]
    finally:
        torch.set_num_threads(before)


def test_threads_on_the_command_line(tmp_path, monkeypatch, capsys):
    from advx.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text('[matrix]\nthreads = 2\n[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\n[[attacks]]\nname = "fgsm"\n')
    got = []

    def spy(spec, **kwargs):
        got.append(spec.matrix.threads)
        raise RuntimeError("spied")

    monkeypatch.setattr("advx.engine.run_matrix", spy)
    assert main(["run", str(spec), "--db", str(tmp_path / "r.db")]) == 1
    assert main(["run", str(spec), "--db", str(tmp_path / "r.db"), "--threads", "1"]) == 1
    assert got == [2, 1]  # the spec's, then the flag's
    capsys.readouterr()
    assert main(["run", str(spec), "--db", str(tmp_path / "r.db"), "--threads", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("[ConfigError]: matrix: threads: Input should be greater than or equal to 1")
