"""A separately installed package adds an attack through the `advx` entry-point group.

The package (tests/fixtures/advx-noise) is pip-installed into a temporary target
directory, as a third party's would be from PyPI; a subprocess with that directory on
its path lists the attack with `advx plugins` and runs it inside a matrix.
"""

from __future__ import annotations

import subprocess
import sys

import pytest



@pytest.fixture(scope="module")
def installed(install_fixture):
    return install_fixture("advx-noise")


def advx_cli(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "advx", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_listed_by_advx_plugins(installed):
    out = advx_cli(installed, "plugins", "attacks")
    assert out.returncode == 0, out.stderr
    assert "random-corner" in out.stdout and "advx-noise" in out.stdout
    assert "trials: int = 8" in out.stdout


def test_runs_inside_a_matrix(installed, tmp_path):
    spec = tmp_path / "noise.toml"
    spec.write_text(
        """
[matrix]
name = "noise"
samples = 100
batch_size = 50

[[datasets]]
name = "digits"

[[models]]
name = "mlp"
train = { epochs = 5 }

[[attacks]]
name = "random-corner"
eps = 0.3
trials = 4

[[attacks]]
name = "fgsm"
eps = 0.3
"""
    )
    env = {**installed, "ADVX_CACHE_DIR": str(tmp_path / "cache")}
    out = advx_cli(env, "run", str(spec), "--db", str(tmp_path / "r.db"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "random-corner(eps=0.3, trials=4)" in out.stdout and "2 cells run" in out.stdout
    csv_out = advx_cli(env, "results", str(tmp_path / "r.db"), "--format", "csv")
    rows = [line.split(",") for line in csv_out.stdout.strip().splitlines()[1:]]
    assert len(rows) == 2


def test_not_visible_without_the_package():
    out = subprocess.run([sys.executable, "-m", "advx", "plugins", "attacks"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "random-corner" not in out.stdout
