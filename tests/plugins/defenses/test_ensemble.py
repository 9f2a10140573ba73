"""The ``ensemble`` defense: mean of the members' probabilities, vectorised members, the four
kinds, composition. Every config field is pinned by a test that fails if it is ignored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import advx
from advx.plugins.defenses.ensemble import StackedEnsemble, _MemberGroup

from .conftest import make_ctx



def ensemble(registry, ctx, **params):
    return registry.create("defense", "ensemble", params).apply(None, ctx)


@pytest.fixture(scope="module")
def xy(digits):
    return digits[2][:64], digits[3][:64]


def looped_logits(ens, x):
    return torch.stack([ens.member(i)(x) for i in range(ens.num_members)])


@pytest.fixture(params=["cpu-loop", "vmap"])
def member_path(request, monkeypatch):
    """Both ways a stacked group runs its members: a loop over views (CPU) and one vmap (GPU)."""
    if request.param == "vmap":
        monkeypatch.setattr(_MemberGroup, "loop_devices", ())
    return request.param


def test_output_is_log_of_mean_member_probability_and_vectorised_equals_looped(registry, ctx, xy, member_path):
    x, _ = xy
    ens = ensemble(registry, ctx, members=3)
    assert isinstance(ens, advx.Ensemble) and ens.num_members == 3
    assert len(ens.groups) == 1 and ens.groups[0].single is None  # one stacked, vmapped group
    loop = looped_logits(ens, x)
    assert torch.allclose(ens.member_logits(x), loop, atol=1e-6)
    assert torch.allclose(ens(x).exp(), torch.softmax(loop, -1).mean(0), atol=1e-6)
    advx.check_model(ens, x, 10)  # eval mode, logits (not probabilities), finite


def test_input_gradient_of_vectorised_ensemble_equals_looped(registry, ctx, xy, member_path):
    x, y = xy
    ens = ensemble(registry, ctx, members=3)
    xv = x.clone().requires_grad_(True)
    (gv,) = torch.autograd.grad(F.cross_entropy(ens(xv), y), xv)
    xl = x.clone().requires_grad_(True)
    logp = torch.log(torch.softmax(looped_logits(ens, xl), -1).mean(0))
    (gl,) = torch.autograd.grad(F.nll_loss(logp, y), xl)
    assert gv.abs().sum() > 0
    assert torch.allclose(gv, gl, atol=1e-6)


def test_members_count_and_random_init_member_zero_is_the_base_model(registry, ctx, xy):
    x, _ = xy
    for n in (2, 4):
        assert ensemble(registry, ctx, members=n).member_logits(x).shape == (n, 64, 10)
    ens = ensemble(registry, ctx, members=2, kind="random-init")
    base = ctx.train()  # the cell's model, seed 0: member 0 trains with seed 0 + 0
    assert torch.allclose(ens.member(0)(x), base(x), atol=1e-6)
    assert not torch.allclose(ens.member(1)(x), base(x), atol=1e-3)  # seed 1


def test_one_member_is_member_zero_of_its_kind_alone(registry, ctx, xy):
    """``members = 1`` is seed 002's "single" classifier of a kind: member 0 of the kind's larger
    ensembles (the same network, trained under the same key), and the ensemble's prediction and
    loss gradient are that network's own."""
    x, y = xy
    for kind in ("random-init", "mixed-architectures", "bagging", "gaussian-noise"):
        one = ensemble(registry, ctx, members=1, kind=kind)
        two = ensemble(registry, ctx, members=2, kind=kind)
        assert one.num_members == 1
        net = one.member(0)
        assert torch.allclose(net(x), two.member(0)(x), atol=1e-6), kind
        assert torch.allclose(one(x), torch.log_softmax(net(x), -1), atol=1e-5), kind
        xo, xn = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        (go,) = torch.autograd.grad(F.cross_entropy(one(xo), y), xo)
        (gn,) = torch.autograd.grad(F.cross_entropy(net(xn), y), xn)
        assert go.abs().sum() > 0 and torch.allclose(go, gn, atol=1e-6), kind
    base = ctx.train()  # random-init and mixed-architectures share member 0: the base network
    for kind in ("random-init", "mixed-architectures"):
        assert torch.allclose(ensemble(registry, ctx, members=1, kind=kind).member(0)(x), base(x), atol=1e-6)
    assert not torch.allclose(ensemble(registry, ctx, members=1, kind="bagging").member(0)(x), base(x), atol=1e-3)
    with pytest.raises(ValueError, match="members"):
        registry.create("defense", "ensemble", {"members": 0})


def test_mixed_architectures_follow_the_architectures_field(registry, ctx, xy):
    x, _ = xy
    ens = ensemble(registry, ctx, members=4, kind="mixed-architectures", architectures=[{}, {"filters": 8}])
    convs = [ens.member(i).net.features[0].out_channels for i in range(4)]
    assert convs == [32, 8, 32, 8]
    assert len(ens.groups) == 2  # two stacked groups, output back in member order
    assert torch.allclose(ens.member_logits(x), looped_logits(ens, x), atol=1e-6)
    assert torch.allclose(ens(x).exp(), torch.softmax(looped_logits(ens, x), -1).mean(0), atol=1e-6)
    default = ensemble(registry, ctx, members=3, kind="mixed-architectures")  # seed 002's variants
    nets = [default.member(i).net for i in range(3)]
    assert [n.features[0].out_channels for n in nets] == [32, 64, 32]
    assert [len(n.features) for n in nets] == [3, 3, 5]  # the third has an extra conv + ReLU
    table = ensemble(registry, ctx, members=2, kind="mixed-architectures", architectures=[{}, {"name": "mlp"}])
    assert type(table.member(1).net).__name__ != type(table.member(0).net).__name__


def test_bagging_members_see_different_bootstrap_replicates(registry, ctx):
    d = registry.create("defense", "ensemble", {"members": 2, "kind": "bagging"})
    n = len(ctx.train_data)
    full_x = advx.take(ctx.train_data, n)[0].flatten(1)
    reps = [advx.take(d.member_context(ctx, i).train_data, n)[0].flatten(1) for i in range(2)]
    for r in reps:
        assert len(r) == n
        unique = len(torch.unique(r, dim=0)) / len(torch.unique(full_x, dim=0))
        assert 0.55 < unique < 0.72  # about 63.2% of the examples, many repeated
    assert not torch.equal(reps[0], reps[1])
    other_seed = registry.create("defense", "ensemble", {"members": 2, "kind": "bagging", "seed": 1})
    assert not torch.equal(advx.take(other_seed.member_context(ctx, 0).train_data, n)[0].flatten(1), reps[0])


def test_member_data_follows_the_training_seed(registry, ctx, cache):
    """A spread over training seeds draws other replicates (and other noise) for each seed;
    ``seed`` offsets them, and with training seed 0 it alone decides them, as before."""
    n = len(ctx.train_data)
    seeded = make_ctx(registry, cache, seed=7)
    for kind in ("bagging", "gaussian-noise"):
        d = registry.create("defense", "ensemble", {"members": 2, "kind": kind})
        first = advx.take(d.member_context(ctx, 0).train_data, n)[0]
        other = advx.take(d.member_context(seeded, 0).train_data, n)[0]
        assert not torch.equal(first, other), kind
        assert d.member_context(ctx, 0).data_key != d.member_context(seeded, 0).data_key  # and are cached apart
        offset = registry.create("defense", "ensemble", {"members": 2, "kind": kind, "seed": 7})
        assert torch.equal(advx.take(offset.member_context(ctx, 0).train_data, n)[0], other), kind


def test_gaussian_noise_members_train_on_noisy_copies_of_noise_std(registry, ctx):
    n = len(ctx.train_data)
    clean = advx.take(ctx.train_data, n)[0]
    mid = (clean > 0.3) & (clean < 0.7)  # far from the bounds: the clip never bites at these stds
    for std in (0.02, 0.1):
        d = registry.create("defense", "ensemble", {"members": 2, "kind": "gaussian-noise", "noise_std": std})
        noisy = [advx.take(d.member_context(ctx, i).train_data, n)[0] for i in range(2)]
        for nx in noisy:
            assert nx.min() >= 0 and nx.max() <= 1
            assert abs(float((nx - clean)[mid].std()) - std) < 0.1 * std
        assert not torch.equal(noisy[0], noisy[1])


def _train_keys(registry, cache, params):
    records = []
    c = make_ctx(registry, cache, on_train=lambda what, rec: records.append(rec.key))
    registry.create("defense", "ensemble", params).apply(None, c)
    return records


def test_each_kind_and_member_defense_trains_under_its_own_keys(registry, cache):
    plain = _train_keys(registry, cache, {"members": 2, "kind": "random-init"})
    bag = _train_keys(registry, cache, {"members": 2, "kind": "bagging"})
    noise = _train_keys(registry, cache, {"members": 2, "kind": "gaussian-noise"})
    composed = _train_keys(registry, cache, {"members": 2, "kind": "bagging", "member_defense": {"name": "gaussian-augmentation"}})
    assert len(set(plain) | set(bag) | set(noise)) == 6
    assert composed[0::2] == bag  # each plain bagged member, then its own defended training
    defended = composed[1::2]
    assert len(defended) == 2 and not set(defended) & set(plain + bag + noise)
    single = []
    c = make_ctx(registry, cache, on_train=lambda what, rec: single.append(rec.key))
    registry.create("defense", "gaussian-augmentation", {}).apply(None, c)
    assert single[0] not in defended  # member 0's replicate is in its key: not the full-data model


def test_member_defense_is_applied_to_every_member(registry, ctx, xy):
    x, _ = xy
    plain = ensemble(registry, ctx, members=2, kind="bagging")
    composed = ensemble(registry, ctx, members=2, kind="bagging", member_defense={"name": "gaussian-augmentation", "std": 0.3})
    for i in range(2):
        assert not torch.allclose(plain.member(i)(x), composed.member(i)(x), atol=1e-3)
    with pytest.raises(advx.ConfigError, match="member_defense"):
        registry.create("defense", "ensemble", {"member_defense": {"std": 0.3}})


def test_composed_defense_key_differs_from_each_part(registry):
    spec = advx.MatrixSpec.model_validate(
        {
            "matrix": {"name": "composition", "samples": 10},
            "datasets": [{"name": "digits"}],
            "models": [{"name": "mnist-cnn"}],
            "defenses": [
                {"name": "ensemble", "kind": "bagging", "members": 5},
                {"name": "adversarial-training"},
                {"name": "ensemble", "kind": "bagging", "members": 5, "member_defense": {"name": "adversarial-training"}},
                {"name": "ensemble", "kind": "bagging", "members": 5, "member_defense": {"name": "adversarial-training", "rho": 0.3}},
            ],
            "attacks": [{"name": "fgsm"}],
        }
    )
    cells = advx.plan(spec, registry)
    assert len({c.key for c in cells}) == 4
    assert len({json_key(c.defense.key()) for c in cells}) == 4
    # the nested table reads as a plugin description in labels, not as a Python dict
    assert [c.defense.describe() for c in cells][2:] == [
        "ensemble(kind=bagging, members=5, member_defense=adversarial-training)",
        "ensemble(kind=bagging, members=5, member_defense=adversarial-training(rho=0.3))",
    ]


def json_key(k):
    import json

    return json.dumps(k, sort_keys=True)


def test_stacked_ensemble_groups_only_identical_architectures():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 3))
    b = torch.nn.Sequential(torch.nn.Linear(4, 3))
    c = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    ens = StackedEnsemble([a, c, b]).eval()
    assert [g.size for g in ens.groups] == [2, 1]
    x = torch.randn(5, 4)
    assert torch.allclose(ens.member_logits(x), torch.stack([a(x), c(x), b(x)]), atol=1e-6)
    assert not ens.member(0).training


def test_train_together_trains_the_members_as_one_group(registry, cache):
    """``train_together``: "yes" trains the members as one stacked network (keys that name the
    group), "no" member by member; "auto" is "no" on a CPU; a member defense always trains
    member by member."""
    base = {"members": 3, "kind": "bagging"}
    apart = _train_keys(registry, cache, {**base, "train_together": "no"})
    assert _train_keys(registry, cache, base) == apart  # auto, on a CPU
    together = _train_keys(registry, cache, {**base, "train_together": "yes"})
    assert len(set(together)) == 3 and not set(together) & set(apart)
    assert _train_keys(registry, cache, {**base, "train_together": "yes"}) == together  # found again in the cache
    nested = {**base, "member_defense": {"name": "gaussian-augmentation"}}
    assert _train_keys(registry, cache, {**nested, "train_together": "yes"}) == _train_keys(registry, cache, nested)
    c = make_ctx(registry, cache)
    ens = registry.create("defense", "ensemble", {**base, "train_together": "yes"}).apply(None, c)
    x = advx.take(c.train_data, 64)[0]
    logits = ens.member_logits(x)
    assert logits.shape[0] == 3 and not torch.allclose(logits[0], logits[1])
