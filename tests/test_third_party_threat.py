"""A separately installed package adds a threat model and a sanity check through the `advx` entry points.

The package (tests/fixtures/advx-threats) is pip-installed into a temporary directory, as
a third party's would be; a subprocess lists the threat model and runs it in a matrix
beside the white-box one. The kernel plans, runs and stores it from its declaration alone
(no list of threat classes in the kernel), stores its traits with the row, and runs the
package's check beside the built-in ones.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest



@pytest.fixture(scope="module")
def installed(install_fixture):
    return install_fixture("advx-threats")


def advx_cli(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "advx", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_listed_with_the_built_in_threat_models(installed):
    out = advx_cli(installed, "plugins", "threats")
    assert out.returncode == 0, out.stderr
    assert "input-blur" in out.stdout and "advx-threats" in out.stdout and "white-box" in out.stdout
    js = json.loads(advx_cli(installed, "plugins", "threats", "--format", "json").stdout)
    blur = next(p for p in js["plugins"] if p["name"] == "input-blur")
    assert blur["kind"] == "threat" and blur["traits"] == {"less_knowledge": True, "surrogate": True}


def test_runs_in_a_matrix_with_its_traits_and_check(installed, tmp_path):
    spec = tmp_path / "blur.toml"
    spec.write_text(
        """
[matrix]
name = "blur"
samples = 60
batch_size = 60

[[datasets]]
name = "digits"

[[models]]
name = "mlp"
train = { epochs = 3 }

[[threats]]
name = "white-box"

[[threats]]
name = "input-blur"
size = [3, 5]

[[attacks]]
name = "fgsm"
eps = 0.2
"""
    )
    env = {**installed, "ADVX_CACHE_DIR": str(tmp_path / "cache")}
    dry = advx_cli(env, "run", str(spec), "--dry-run", "--db", str(tmp_path / "r.db"), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    out = advx_cli(env, "run", str(spec), "--db", str(tmp_path / "r.db"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "input-blur(size=5)" in out.stdout and "3 cells run" in out.stdout
    assert "blurred-attacker" in out.stdout  # the package's check ran beside the built-in ones
    rows = json.loads(advx_cli(env, "results", str(tmp_path / "r.db"), "--format", "json").stdout)
    blur = [r for r in rows if r["threat"].startswith("input-blur")]
    assert len(blur) == 2 and all(r["status"] == "done" for r in blur)
    assert all(r["threat_traits"] == {"less_knowledge": True, "surrogate": True} for r in blur)
    # crafted on a stand-in: no stronger than the white-box attacker of the same model
    wb = next(r for r in rows if r["threat"] == "white-box")
    assert all(r["robust_accuracy"] >= wb["robust_accuracy"] - 0.05 for r in blur)
