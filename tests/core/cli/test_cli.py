"""The advx command: exit codes, one-line errors, outputs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import advx
from advx.cli import main

DEMO = Path(__file__).resolve().parents[3] / "experiments" / "digits-demo" / "full.toml"


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advx", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"advx {advx.__version__}"


def test_plugins_lists_kinds_packages_and_fields(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("fgsm", "bim", "digits", "synthetic", "mnist-cnn", "mlp", "none"):
        assert name in out
    assert "advx" in out  # one line per plugin: the fields are under a kind or a name
    assert main(["plugins", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "attack plugins" in out and "dataset plugins" not in out and "eps: float = 0.3" in out


def test_plugins_unknown_kind_is_one_line(capsys):
    assert main(["plugins", "atacks"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("[PluginNotFoundError]") and "attack" in err and "\n" not in err


def test_run_spec_then_results_exports(tmp_path, capsys):
    db = tmp_path / "out.db"
    assert main(["run", str(DEMO), "--db", str(db), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "4 cells run, 0 skipped" in out and "fgsm(eps=0.3)" in out
    assert main(["run", str(DEMO), "--db", str(db), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "0 cells run, 4 skipped" in capsys.readouterr().out

    assert main(["results", str(db), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert main(["results", str(db), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["attack_config"]["name"] in ("fgsm", "bim")
    assert main(["results", str(db), "--format", "markdown", "-o", str(tmp_path / "r.md")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("| dataset | model |") and md.count("\n") == 6
    assert main(["results", str(db)]) == 0
    out = capsys.readouterr().out
    assert "robust acc" in out
    # the trainings of the file, each with its time: the first run trained the model, the second loaded it
    assert "trainings in" in " ".join(out.split()) and "1 trained, 0 loaded" in " ".join(out.split())
    assert main(["results", str(db), "--breakdown", "class", "--worst-case"]) == 0
    out = capsys.readouterr().out
    assert "fgsm(eps=0.3): per class" in out and "worst case per example" in out
    assert main(["results", str(db), "--breakdown", "confidence"]) == 0
    assert "high" in capsys.readouterr().out


def test_default_run_with_no_spec(tmp_path):
    env = {**__import__("os").environ, "ADVX_CACHE_DIR": str(tmp_path / "cache")}
    out = run_cli("run", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "advx-results.db").exists()
    assert "digits-default" in out.stdout and "bim(eps=0.2" in out.stdout and "0 failed" in out.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "missing.toml"], "[ConfigError]: spec file 'missing.toml' does not exist"),
        (["results", "missing.db"], "[ConfigError]: results file 'missing.db' does not exist"),
        (["run", str(DEMO), "--device", "cuda:7"], "[ConfigError]: device 'cuda:7'"),
        (["run", str(DEMO), "--device", "gpu"], "[ConfigError]: matrix.device"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(tmp_path, args, expected):
    out = run_cli(*args, "--db", str(tmp_path / "x.db")) if args[0] == "run" else run_cli(*args)
    assert out.returncode != 0
    err = out.stderr.strip()
    assert err.startswith(expected), err
    assert "\n" not in err and "Traceback" not in err


def test_bad_plugin_config_in_spec_is_one_line(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(DEMO.read_text().replace("steps = 8", "steps = 0"))
    out = run_cli("run", str(spec), "--db", str(tmp_path / "x.db"))
    assert out.returncode == 1
    assert out.stderr.strip() == '[ConfigError]: attacks[1] "bim": steps: Input should be greater than or equal to 1'


def test_not_a_database(tmp_path):
    bad = tmp_path / "junk.db"
    bad.write_text("hello, I am not sqlite" * 100)
    out = run_cli("results", str(bad))
    assert out.returncode == 1 and "[DataError]" in out.stderr and "not an advx results file" in out.stderr
