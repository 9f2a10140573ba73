"""Shared fixtures: a discovered registry, digits tensors, a trained digits CNN.

Tests that need no installed package build registries with ``Registry.from_modules``;
the ``registry`` fixture uses the real entry points (the package is installed for tests).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import advx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


#: the reasons of a skip for a package that is not installed (``pytest.importorskip``, with
#: its own message or the reasons the tests give)
MISSING_PACKAGE = re.compile(r"could not import|optional (extra|package)|is optional")
_skipped_for_a_package: dict[str, None] = {}


def skipped_for_a_package(report) -> bool:
    """Whether a test (or a whole module) was skipped because a package is not installed."""
    if not report.skipped:
        return False
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return bool(MISSING_PACKAGE.search(reason))


def pytest_runtest_logreport(report):
    if skipped_for_a_package(report):
        _skipped_for_a_package[report.nodeid] = None


def pytest_collectreport(report):
    if skipped_for_a_package(report):  # a module-level importorskip
        _skipped_for_a_package[report.nodeid] = None


def pytest_sessionfinish(session):
    """CI (``.ci/run``) names a file in ADVX_SKIPPED_FOR_EXTRAS: the tests that skipped for a
    missing package go there, one node id a line, to run again once the extras are installed."""
    out = os.environ.get("ADVX_SKIPPED_FOR_EXTRAS")
    if out and _skipped_for_a_package:
        with open(out, "a") as f:
            f.writelines(f"{nodeid}\n" for nodeid in _skipped_for_a_package)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def registry() -> advx.Registry:
    return advx.Registry.discover()


@pytest.fixture(scope="session")
def digits(registry):
    """(dataset plugin, info, x_test, y_test) of the embedded default."""
    ds = registry.dataset("digits")
    x, y = advx.take(ds.load("test"), 500)
    return ds, ds.info(), x, y


@pytest.fixture(scope="session")
def digits_cnn(registry, digits):
    """mnist-cnn trained on digits (30 epochs, ~1 s on CPU), in eval mode; test accuracy > 0.9."""
    ds = digits[0]
    res = advx.train_model(ds, registry.model("mnist-cnn"), {"epochs": 30, "seed": 0}, cache=False)
    return res.model


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline copies of MNIST, Fashion-MNIST and CIFAR-10 (tests using it skip if absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def install_fixture(tmp_path_factory):
    """``install_fixture(name)``: pip-install ``tests/fixtures/<name>`` into a temporary folder, as a
    third party's package would be from PyPI; returns the environment that puts it on the path."""

    def install(name: str) -> dict[str, str]:
        target = tmp_path_factory.mktemp("site")
        src = tmp_path_factory.mktemp("build") / name
        shutil.copytree(REPO / "tests" / "fixtures" / name, src)  # built outside the repo: no build/ left there
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            pytest.fail(f"pip install of the fixture package {name} failed: {out.stderr[-2000:]}")
        return {**os.environ, "PYTHONPATH": str(target) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    return install
