"""``DefenseContext``: one test per member a defense may use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advx
from advx import DefenseContext, TrainConfig


@pytest.fixture
def ctx(tmp_path, registry):
    records = []
    c = DefenseContext(
        dataset=registry.dataset("digits"),
        model=registry.model("mlp", hidden=[16]),
        train_config=TrainConfig(epochs=1, seed=0),
        device=torch.device("cpu"),
        registry=registry,
        cache_dir=str(tmp_path / "cache"),
        on_train=lambda what, rec: records.append(rec),
    )
    c.records = records  # type: ignore[attr-defined]
    return c


def test_data_members(ctx):
    assert ctx.dataset.name == "digits" and ctx.info.bounds == (0.0, 1.0) and ctx.info.num_classes == 10
    x, y = advx.take(ctx.train_data, 5)
    assert x.shape == (5, *ctx.info.input_shape) and y.dtype == torch.int64
    assert ctx.train_data is ctx.train_data  # loaded once


def test_model_members(ctx):
    assert ctx.model.name == "mlp" and tuple(ctx.model.config.hidden) == (16,)
    assert ctx.train_config.epochs == 1 and ctx.device == torch.device("cpu")
    net = ctx.build_model()
    assert isinstance(net, nn.Module) and net(torch.rand(2, *ctx.info.input_shape)).shape == (2, 10)
    assert ctx.cache_dir.endswith("cache") and ctx.registry is not None


def test_train_is_cached_and_recorded(ctx):
    a = ctx.train()
    assert not a.training and ctx.records[-1].cached is False and ctx.records[-1].kind == "model"
    b = ctx.train()
    assert ctx.records[-1].cached is True
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # another seed is another model; a changed loss needs a key describing it
    c = ctx.train(train={"seed": 5})  # only the seed changes
    from advx.runtime.training import training_key

    assert ctx.records[-1].key == training_key(ctx.dataset, ctx.model, TrainConfig(epochs=1, seed=5), "cpu")
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    with pytest.raises(advx.ConfigError, match="extra_key"):
        ctx.train(loss_fn=lambda net, x, y: net(x).sum())
    d = ctx.train(loss_fn=lambda net, x, y: torch.nn.functional.cross_entropy(net(x), y) * 2, extra_key="double")
    assert ctx.records[-1].key != ctx.records[0].key and not d.training


def test_artifact_is_computed_once(ctx):
    calls = []

    def compute():
        calls.append(1)
        return {"mean": torch.arange(3.0)}

    a = ctx.artifact("stats", {"v": 1}, compute)
    b = ctx.artifact("stats", {"v": 1}, compute)
    assert len(calls) == 1 and torch.equal(a["mean"], b["mean"]) and ctx.records[-1].cached
    ctx.artifact("stats", {"v": 2}, compute)
    assert len(calls) == 2
    with pytest.raises(advx.AdvxError, match="tensors"):
        ctx.artifact("bad", 0, lambda: {"x": 1})


def test_derive_keeps_the_hooks(ctx, registry):
    part = ctx.derive(model=registry.model("mlp", hidden=[8]), train_config=TrainConfig(epochs=1, seed=3))
    assert part.model.config.hidden == (8,) and part.train_config.seed == 3 and part.device == ctx.device
    assert part.train_data is ctx.train_data  # the same split unless another is given
    part.train()
    assert ctx.records[-1].description.startswith("mlp")  # recorded through the parent's hook


def test_create_and_compose(ctx):
    attack = ctx.create("attack", "fgsm", {"eps": 0.1})
    assert attack.name == "fgsm" and attack.config.eps == 0.1
    net = ctx.build_model().eval()
    assert ctx.defense("none", net) is net
    assert ctx.defense({"name": "none"}, net) is net
    with pytest.raises(advx.ConfigError, match="name"):
        ctx.defense({"members": 3}, net)
    with pytest.raises(advx.PluginNotFoundError):
        ctx.defense("nope", net)
