"""Training networks of one architecture together (``advx.runtime.joint``): each member gets what it
would get alone, the group is cached under keys of its own, and what cannot be stacked is
trained alone."""

from __future__ import annotations

import pytest
import torch

import advx
from advx.runtime.joint import TrainRequest, fit_together, stackable, train_models_together
from advx.runtime.training import build_model, fit, training_key


def _subsets(registry, n=600, k=2):
    """``k`` different training sets of one length (disjoint slices of digits' training split)."""
    data = advx.load_split(registry.dataset("digits"), "train")
    x, y = advx.take(data, len(data))
    return [advx.as_tensor_dataset(x[i * n : (i + 1) * n], y[i * n : (i + 1) * n]) for i in range(k)]


def _build(model, info, seed):
    torch.manual_seed(seed)
    return build_model(model, info)


def test_members_trained_together_equal_members_trained_alone(registry):
    """Without dropout (the one draw that differs) every member trained together ends where it
    would end trained alone: its own initialisation, shuffling, data and optimiser state."""
    ds = registry.dataset("digits")
    info, model = ds.info(), registry.model("mnist-cnn", dropout=0.0)
    datas = _subsets(registry)
    cfgs = [advx.TrainConfig(epochs=2, batch_size=64, seed=s) for s in (3, 11)]
    alone = []
    for d, c in zip(datas, cfgs):
        net = _build(model, info, c.seed)
        fit(net, d, c, torch.device("cpu"))
        alone.append(net)
    together = [_build(model, info, c.seed) for c in cfgs]
    histories = fit_together(together, datas, cfgs, torch.device("cpu"))
    assert [len(h) for h in histories] == [2, 2] and histories[0][-1]["loss"] != histories[1][-1]["loss"]
    for a, t in zip(alone, together):
        for (name, pa), (_, pt) in zip(a.named_parameters(), t.named_parameters()):
            assert torch.allclose(pa, pt, atol=1e-4), name
    # and the members did not collapse into one another
    assert not torch.allclose(together[0].net.fc2.weight, together[1].net.fc2.weight)


def test_group_is_cached_under_its_own_keys_and_loaded_again(registry, tmp_path):
    ds = registry.dataset("digits")
    model = registry.model("mnist-cnn")
    datas = _subsets(registry)
    reqs = [TrainRequest(model, advx.TrainConfig(epochs=1, seed=s), d, {"subset": i}) for i, (s, d) in enumerate(zip((0, 1), datas))]
    first = train_models_together(ds, reqs, cache=tmp_path)
    alone = [training_key(ds, r.model, r.train, "cpu", r.extra_key) for r in reqs]
    assert not any(r.cached for r in first) and all(r.path.exists() for r in first)
    assert [r.group_size for r in first] == [2, 2]
    assert not {r.key for r in first} & set(alone)  # never confused with a member trained alone
    second = train_models_together(ds, reqs, cache=tmp_path)
    assert all(r.cached for r in second) and [r.key for r in second] == [r.key for r in first]
    for a, b in zip(first, second):
        assert all(torch.equal(a.model.state_dict()[k], b.model.state_dict()[k]) for k in a.model.state_dict())
    # the group is part of the key: the same member in another group is another checkpoint
    trio = train_models_together(ds, [*reqs, TrainRequest(model, advx.TrainConfig(epochs=1, seed=2), datas[0], {"subset": 2})], cache=False)
    assert trio[0].key != first[0].key


def test_what_cannot_be_stacked_trains_alone_under_its_own_key(registry):
    ds = registry.dataset("digits")
    datas = _subsets(registry)
    cfg = advx.TrainConfig(epochs=1)
    short = advx.as_tensor_dataset(*advx.take(datas[1], 500))
    # data of different lengths, and different architectures: each trains (and is keyed) alone
    mixed = [
        TrainRequest(registry.model("mnist-cnn"), cfg, datas[0], "a"),
        TrainRequest(registry.model("mnist-cnn"), cfg.model_copy(update={"seed": 1}), short, "b"),
        TrainRequest(registry.model("mnist-cnn", filters=8), cfg, datas[0], "c"),
    ]
    res = train_models_together(ds, mixed, cache=False)
    assert [r.group_size for r in res] == [1, 1, 1]
    assert [r.key for r in res] == [training_key(ds, r.model, r.train, "cpu", r.extra_key) for r in mixed]
    # another optimiser setting is another group
    lr = [TrainRequest(registry.model("mnist-cnn"), cfg, datas[0], "a"), TrainRequest(registry.model("mnist-cnn"), cfg.model_copy(update={"lr": 0.01}), datas[1], "b")]
    res = train_models_together(ds, lr, cache=False)
    assert [r.key for r in res] == [training_key(ds, r.model, r.train, "cpu", r.extra_key) for r in lr]


def test_stackable_says_why_not(registry):
    info = registry.dataset("digits").info()
    nets = [_build(registry.model("mnist-cnn"), info, s) for s in (0, 1)]
    assert stackable(nets) is None
    assert "fewer than two" in stackable(nets[:1])
    assert "architecture" in stackable([nets[0], _build(registry.model("mnist-cnn", filters=8), info, 0)])
    bn = [torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)) for _ in range(2)]
    assert "running statistics" in stackable(bn)
    other = _build(registry.model("mnist-cnn"), info, 2)
    other.normalize.mean.add_(1.0)
    assert "buffer" in stackable([nets[0], other])


@pytest.mark.gpu
def test_members_trained_together_on_cuda_equal_members_trained_alone(registry):
    ds = registry.dataset("digits")
    info, model = ds.info(), registry.model("mnist-cnn", dropout=0.0)
    datas = _subsets(registry)
    cfgs = [advx.TrainConfig(epochs=1, batch_size=64, seed=s) for s in (3, 11)]
    cuda = torch.device("cuda")
    alone = []
    for d, c in zip(datas, cfgs):
        net = _build(model, info, c.seed)
        fit(net, d, c, cuda)
        alone.append(net)
    together = [_build(model, info, c.seed) for c in cfgs]
    fit_together(together, datas, cfgs, cuda)
    for a, t in zip(alone, together):
        for pa, pt in zip(a.parameters(), t.parameters()):
            assert torch.allclose(pa, pt, atol=1e-3)
