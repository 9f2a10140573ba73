"""Shared fixtures: a discovered registry, digits tensors, a trained digits CNN.

Tests that need no installed package build registries with ``Registry.from_modules``;
the ``registry`` fixture uses the real entry points (the package is installed for tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import advx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
