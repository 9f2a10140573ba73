"""Fixtures of the kernel's tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny(tmp_path):
    """``tiny(name="tiny", attacks=None, **matrix)``: a one-model spec on digits that runs in a second."""

    def make(name="tiny", attacks=None, **matrix):
        return {
            "matrix": {"name": name, "samples": 40, "batch_size": 40, "cache_dir": str(tmp_path / "cache"), **matrix},
            "datasets": [{"name": "digits"}],
            "models": [{"name": "mlp", "train": {"epochs": 1}}],
            "attacks": attacks or [{"name": "fgsm", "eps": 0.1}],
        }

    return make
