"""The CLI as a first-week user meets it: errors reported together and on one line at any width, dry runs, tables that fit, flags, worst case, plugin listings."""

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


class Crasher(advx.Attack):
    """Raises inside perturb."""

    name = "crasher"

    class Config(advx.AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        raise RuntimeError("kaboom")


class Untargeted(Crasher):
    """Cannot target."""

    name = "untargeted"
    supports_targeted = False


def test_every_error_of_a_spec_is_reported_together():
    registry = advx.Registry.discover()
    registry.add("attack", Untargeted, package="tests")
    spec = advx.MatrixSpec.from_dict(
        {
            "datasets": [{"name": "digits"}],
            "models": [{"name": "mlp", "train": {"epochs": "3"}}],
            "threats": [{"name": "transfer"}],
            "attacks": [{"name": "fgsm", "eps": [0.1, -0.2, "0.3"]}, {"name": "untargeted", "label_mode": "least-likely"}],
        }
    )
    with pytest.raises(advx.ConfigError) as exc:
        advx.plan(spec, registry)
    msg = str(exc.value)
    assert "\n" not in msg
    for part in (
        'models[0] "mlp" train: epochs: Input should be a valid integer',
        'threats[0] "transfer": source: a substitute model table is required',
        'attacks[0] "fgsm": eps[1]: Input should be greater than 0',  # a swept value is named by its position
        'attacks[0] "fgsm": eps[2]: Input should be a valid number',
        "attacks[1] \"untargeted\": label_mode: 'least-likely' is targeted, but this attack cannot target",
    ):
        assert part in msg, part


def test_plugins_lists_only_supported_label_modes(capsys):
    assert main(["plugins", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "label modes: true, predicted, least-likely" in out


def test_dry_run_runs_nothing(tmp_path, capsys, tiny):
    db = tmp_path / "r.db"
    advx.run_matrix(tiny("dry"), store=db)
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'[matrix]\nname = "dry"\nsamples = 40\nbatch_size = 40\ncache_dir = "{tmp_path / "cache"}"\n'
        '[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\ntrain = { epochs = 1 }\n'
        '[[threats]]\nname = "white-box"\n[[threats]]\nname = "gray-box"\n[[attacks]]\nname = "fgsm"\neps = 0.1\n'
    )
    before = db.read_bytes()
    assert main(["run", str(spec), "--db", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells, 1 to run, 1 already done" in out
    assert "cached mlp on digits" in out and "train mlp (gray-box copy, seed 1)" in out
    assert db.read_bytes() == before


@pytest.mark.parametrize("columns", ["40", "300"])
def test_errors_are_one_line_at_any_width(tmp_path, columns):
    spec = tmp_path / "bad.toml"
    spec.write_text('[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\n[[attacks]]\nname = "fgsm"\neps = "0.1"\n')
    env = {**os.environ, "COLUMNS": columns}
    out = subprocess.run([sys.executable, "-m", "advx", "run", str(spec), "--db", str(tmp_path / "r.db")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stdout == "" and out.stderr.count("\n") == 1 and out.stderr.startswith("[ConfigError]: ")
    assert 'attacks[0] "fgsm": eps: Input should be a valid number' in out.stderr


def test_tables_respect_columns_and_errors_have_their_own_line(tmp_path, tiny):
    db = tmp_path / "r.db"
    reg = advx.Registry.discover()
    reg.add("attack", Crasher, package="tests")
    advx.run_matrix(tiny(attacks=[{"name": "fgsm", "eps": 0.1}, {"name": "crasher"}]), registry=reg, store=db)
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run([sys.executable, "-m", "advx", "results", str(db)], capture_output=True, text=True, env=env, timeout=120)
    lines = out.stdout.splitlines()
    table = [ln for ln in lines if ln.startswith(("┃", "│", "┏", "┡", "└"))]
    assert table and max(len(ln) for ln in table) <= 100
    assert any(ln.startswith('failed #2') and 'attack "crasher" raised RuntimeError: kaboom' in ln for ln in lines)


def test_version_and_help_do_not_import_torch():
    code = "import sys, advx.cli; advx.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "advx", "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"advx {advx.__version__}"
    assert time.perf_counter() - t0 < 5  # generous: measured ~0.1 s; a torch import alone takes ~1 s


def test_run_says_which_sanity_checks_ran(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'[matrix]\nname = "checks"\nsamples = 40\nbatch_size = 40\ncache_dir = "{tmp_path / "c"}"\n'
        '[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\ntrain = { epochs = 1 }\n[[attacks]]\nname = "fgsm"\neps = 0.1\n'
    )
    assert main(["run", str(spec), "--db", str(tmp_path / "r.db")]) == 0
    out = capsys.readouterr().out
    from advx.analysis.checks import CHECK_NAMES as CHECKS

    assert f"sanity checks ({', '.join(CHECKS)}) ran on 1 finished cells: none fired" in out
    assert "training: 1 trained or fitted in" in out
    assert "worst case" not in out  # one attack: no worst case to show


def test_worst_case_groups_by_threat_constraint(tmp_path, capsys, tiny):
    db = tmp_path / "r.db"
    attacks = [{"name": "fgsm", "eps": [0.1, 0.2]}, {"name": "bim", "eps": 0.1, "alpha": 0.02, "steps": 3}, {"name": "deepfool", "steps": 5}]
    advx.run_matrix(tiny(attacks=attacks), store=db)
    assert main(["results", str(db), "--worst-case"]) == 0
    out = capsys.readouterr().out
    assert "linf eps=0.1" in out and "linf eps=0.2" in out and "l2 unbounded" in out
    assert "[" not in out.split("worst case per example")[1]
    # with --ci the worst case carries its 95% bootstrap interval over the same examples
    with advx.ResultStore(db, readonly=True) as store:
        cells = [r for r in store.cells() if r.attack_config.get("eps") == 0.1]
        robust = store.worst_case_examples(cells)
        assert sum(robust.values()) / len(robust) == store.worst_case(cells)
    assert main(["results", str(db), "--worst-case", "--ci"]) == 0
    table = capsys.readouterr().out.split("worst case per example")[1]
    assert "[" in table and "]" in table
    # advx run shows it by itself where two attacks share a constraint (fgsm and bim at eps 0.1)
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'[matrix]\nname = "tiny"\nsamples = 40\nbatch_size = 40\ncache_dir = "{tmp_path / "cache"}"\n'
        '[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\ntrain = { epochs = 1 }\n'
        '[[attacks]]\nname = "fgsm"\neps = [0.1, 0.2]\n[[attacks]]\nname = "bim"\neps = 0.1\nalpha = 0.02\nsteps = 3\n'
    )
    assert main(["run", str(spec), "--db", str(tmp_path / "w.db")]) == 0
    out = capsys.readouterr().out
    assert "worst case" in out and "linf eps=0.1" in out and "linf eps=0.2" not in out.split("worst case")[1]


def test_print_report_shows_targeted_success(digits_cnn, digits):
    _, info, x, y = digits
    (plain, targeted) = advx.evaluate(digits_cnn, (x[:32], y[:32]), ["fgsm", ("fgsm", {"label_mode": "target=3"})], bounds=info.bounds)
    assert "targeted success" not in str(plain) and " success " in str(plain)
    assert "targeted success" in str(targeted)


def test_plugins_json_for_tools(capsys):
    assert main(["plugins", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by = {(p["kind"], p["name"]): p for p in data["plugins"]}
    fgsm = by[("attack", "fgsm")]
    assert fgsm["package"] == "advx" and fgsm["version"] == advx.__version__
    assert fgsm["config_schema"]["properties"]["eps"]["type"] == "number"
    assert fgsm["traits"]["norm"] == "linf"
    assert ("threat", "member-mean") in by and ("dataset", "digits") in by


def test_embedding_works_next_to_a_clone_named_advx(tmp_path):
    """A clone named ``advx`` in the working directory used to shadow the installed package."""
    clone = tmp_path / "advx"
    (clone / "core").mkdir(parents=True)
    (clone / "__init__.py").write_text((ROOT / "__init__.py").read_text())
    code = "import advx, torch; m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval(); " \
           "print(advx.evaluate(m, (torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)), ['fgsm'])[0].attack)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fgsm"
