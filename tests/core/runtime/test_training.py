"""Training with a cache: keys, reuse, determinism, safe loading."""

from __future__ import annotations

import pytest
import torch

import advx
from advx.runtime.training import training_key


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_second_run_loads_from_cache(tmp_path, registry):
    ds, model = registry.dataset("digits"), registry.model("mnist-cnn")
    first = advx.train_model(ds, model, {"epochs": 2}, cache=tmp_path)
    assert not first.cached and first.path.exists() and len(first.history) == 2
    second = advx.train_model(ds, model, {"epochs": 2}, cache=tmp_path)
    assert second.cached and second.key == first.key
    assert weights_equal(first.model, second.model)
    assert not second.model.training


def test_a_cache_entry_is_trained_once_when_two_need_it_at_once(tmp_path, registry):
    """Two workers (here threads, each with its own lock file handle, as processes have) that
    need one model at once: one trains it, the other waits and loads it."""
    import threading
    import time

    from advx.runtime.training import cache_lock, checkpoint_path

    ds, model = registry.dataset("digits"), registry.model("mlp")
    results = []
    workers = [threading.Thread(target=lambda: results.append(advx.train_model(ds, model, {"epochs": 1}, cache=tmp_path))) for _ in range(2)]
    with cache_lock(checkpoint_path(ds, model, advx.TrainConfig(epochs=1), "cpu", tmp_path)):
        for w in workers:
            w.start()
        time.sleep(0.5)  # both wait for the entry (without the lock both would find no checkpoint and train)
    for w in workers:
        w.join()
    assert sorted(r.cached for r in results) == [False, True]
    assert weights_equal(results[0].model, results[1].model)


def test_same_seed_same_weights_and_seed_matters(registry):
    ds, model = registry.dataset("digits"), registry.model("mlp")
    a = advx.train_model(ds, model, {"epochs": 2, "seed": 3}, cache=False).model
    b = advx.train_model(ds, model, {"epochs": 2, "seed": 3}, cache=False).model
    c = advx.train_model(ds, model, {"epochs": 2, "seed": 4}, cache=False).model
    assert weights_equal(a, b)
    assert not weights_equal(a, c)


def test_key_covers_every_config(registry):
    ds, model = registry.dataset("digits"), registry.model("mnist-cnn")
    base = training_key(ds, model, advx.TrainConfig(), "cpu")
    assert training_key(ds, model, advx.TrainConfig(), "cpu") == base
    variants = [
        training_key(registry.dataset("digits", class_ratios={0: 0.5}), model, advx.TrainConfig(), "cpu"),
        training_key(ds, registry.model("mnist-cnn", filters=64), advx.TrainConfig(), "cpu"),
        training_key(ds, model, advx.TrainConfig(lr=0.01), "cpu"),
        training_key(ds, model, advx.TrainConfig(seed=1), "cpu"),
        training_key(ds, model, advx.TrainConfig(), "cuda"),
        training_key(ds, model, advx.TrainConfig(), "cpu", extra="adversarial-training"),
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_checkpoints_load_weights_only(tmp_path, registry, monkeypatch):
    ds, model = registry.dataset("digits"), registry.model("mlp")
    advx.train_model(ds, model, {"epochs": 1}, cache=tmp_path)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert advx.train_model(ds, model, {"epochs": 1}, cache=tmp_path).cached
    assert seen.get("weights_only") is True


def test_damaged_checkpoint_is_a_clear_error(tmp_path, registry):
    ds, model = registry.dataset("digits"), registry.model("mlp")
    res = advx.train_model(ds, model, {"epochs": 1}, cache=tmp_path)
    res.path.write_bytes(b"not a checkpoint")
    with pytest.raises(advx.DataError, match="delete it to retrain"):
        advx.train_model(ds, model, {"epochs": 1}, cache=tmp_path)


def test_trained_digits_cnn_is_accurate(digits, digits_cnn):
    _, _, x, y = digits
    with torch.no_grad():
        acc = (digits_cnn(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95


def test_normalisation_is_a_layer_of_the_model(registry):
    from advx import NormalizedModel

    net = advx.build_model(registry.model("mnist-cnn"), registry.dataset("digits").info())
    assert isinstance(net, NormalizedModel)
    raw = advx.build_model(registry.model("mnist-cnn", normalize=False), registry.dataset("digits").info())
    assert not isinstance(raw, NormalizedModel)
    assert "fc1" in net.hidden_states(torch.rand(2, 1, 8, 8))


# Every TrainConfig field, with a value other than the default (momentum only acts with SGD,
# which the other value of each row does not change).
TRAIN_VALUES = {
    "epochs": ({"epochs": 1}, {"epochs": 2}),
    "batch_size": ({"batch_size": 128}, {"batch_size": 32}),
    "optimizer": ({"optimizer": "adam"}, {"optimizer": "sgd"}),
    "lr": ({"lr": 1e-3}, {"lr": 1e-2}),
    "momentum": ({"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "sgd", "momentum": 0.0}),
    "weight_decay": ({"weight_decay": 0.0}, {"weight_decay": 0.1}),
    "seed": ({"seed": 0}, {"seed": 1}),
}


def test_every_train_field_changes_the_weights_and_the_key(registry):
    assert set(TRAIN_VALUES) == set(advx.TrainConfig.model_fields)
    ds, model = registry.dataset("digits"), registry.model("mlp", hidden=(32,))
    for field, (a, b) in TRAIN_VALUES.items():
        ca, cb = advx.TrainConfig(**{"epochs": 1, **a}), advx.TrainConfig(**{"epochs": 1, **b})
        assert training_key(ds, model, ca, "cpu") != training_key(ds, model, cb, "cpu"), field
        wa = advx.train_model(ds, model, ca, cache=False).model
        wb = advx.train_model(ds, model, cb, cache=False).model
        assert not weights_equal(wa, wb), field
