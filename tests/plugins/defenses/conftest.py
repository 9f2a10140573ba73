"""Fixtures of the defense tests: a DefenseContext on digits with a throw-away cache."""

from __future__ import annotations

import pytest
import torch

import advx


class RecordingContext(advx.DefenseContext):
    """A context that records every ``train`` call (loss, key, data) and trains nothing:
    it returns a fresh network, so a test can call the recorded loss by hand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[dict] = []

    def train(self, model=None, train=None, loss_fn=None, extra_key=None, train_data=None, description=None):
        self.calls.append({"model": model, "train": train, "loss_fn": loss_fn, "extra_key": extra_key, "train_data": train_data})
        torch.manual_seed(len(self.calls))
        return self.build_model(model).eval()


def make_ctx(registry, cache_dir, *, dataset="digits", model="mnist-cnn", model_params=None, epochs=2, seed=0, cls=advx.DefenseContext, **kw):
    return cls(
        dataset=registry.dataset(dataset),
        model=registry.create("model", model, model_params or {}),
        train_config=advx.TrainConfig(epochs=epochs, seed=seed),
        device=torch.device("cpu"),
        registry=registry,
        cache_dir=str(cache_dir),
        **kw,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("advx-cache")


@pytest.fixture(scope="module")
def ctx(registry, cache):
    """mnist-cnn on digits, 2 epochs, seed 0 (each model trains in well under a second)."""
    return make_ctx(registry, cache)


@pytest.fixture
def recording(registry, tmp_path):
    return make_ctx(registry, tmp_path, cls=RecordingContext)
