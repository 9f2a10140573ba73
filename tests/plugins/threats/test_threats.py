"""Threat models as kernel objects: views, gradients, applicability, BPDA and ``requires``.

The ensemble and the detector here are built inside the tests against the protocols
(``advx.Ensemble``, ``advx.Detector``, ``advx.InputTransform``); the real defenses have
their own tests.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advx
from advx import Defense
from advx.testing import GridDetector
from advx.plugins.threats.detector_aware import DetectorAwareView
from advx.plugins.threats.ensemble import MemberMeanView

_REG = advx.Registry.discover()
#: the registered threat models (built-ins are plugins, found through entry points)
THREATS = {n: _REG.get("threat", n) for n in _REG.names("threat")}


def threat_class(name):
    return _REG.get("threat", name)


class TinyEnsemble(nn.Module, advx.Ensemble):
    """Members in a ModuleList; prediction log(mean softmax)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def num_members(self):
        return len(self.members)

    def member(self, index):
        return self.members[index]

    def forward(self, x):
        return torch.logsumexp(self.member_logits(x).log_softmax(-1), 0) - math.log(self.num_members)


class Squash(advx.InputTransform):
    """Rounds to 8 grey levels: no useful gradient."""

    differentiable = False

    def transform(self, x):
        return (x * 7).round() / 7


def _net(seed, classes=3, d=12):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes)).eval()


@pytest.fixture
def ensemble():
    return TinyEnsemble([_net(0), _net(1)]).eval()


def _grad(module, x, loss_fn):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(module(x)), x)
    return g


def test_member_mean_is_the_mean_of_member_loss_gradients(ensemble):
    """Seed 002 Grad.2, by hand: (1/n) sum_i grad_x J(theta_i, x, y), untargeted and targeted."""
    x, y = torch.rand(6, 12), torch.tensor([0, 1, 2, 0, 1, 2])
    view = MemberMeanView(ensemble).eval()
    for loss in (
        lambda z: F.cross_entropy(z, y, reduction="sum"),  # FGSM/BIM/PGD, untargeted
        lambda z: -F.cross_entropy(z, (y + 1) % 3, reduction="sum"),  # targeted
        lambda z: F.cross_entropy(z, y),  # mean reduction
    ):
        expected = sum(_grad(ensemble.member(i), x, loss) for i in range(2)) / 2
        torch.testing.assert_close(_grad(view, x, loss), expected, atol=1e-6, rtol=1e-5)
    # forward values are the ensemble's: the attack's own success checks see the real prediction
    torch.testing.assert_close(view(x), ensemble(x))
    # and it is not the gradient of the averaged prediction (plain white-box)
    ce = lambda z: F.cross_entropy(z, y, reduction="sum")  # noqa: E731
    assert not torch.allclose(_grad(view, x, ce), _grad(ensemble, x, ce), atol=1e-4)


def test_member_mean_with_another_loss_follows_each_member(ensemble):
    """A loss that is not cross-entropy: its gradient at the output, back through each member's log-softmax."""
    x = torch.rand(4, 12)
    view = MemberMeanView(ensemble).eval()
    loss = lambda z: z[:, 0].sum()  # noqa: E731
    expected = sum(_grad(ensemble.member(i), x, lambda z: z.log_softmax(1)[:, 0].sum()) for i in range(2)) / 2
    torch.testing.assert_close(_grad(view, x, loss), expected, atol=1e-6, rtol=1e-5)


def test_member_mean_with_a_margin_loss_is_the_mean_of_the_members_logit_margins():
    """cw-l2's margin through Grad.2 (docs/reproductions.md, bagging + distillation): a loss whose
    output gradient sums to zero reaches each member as the gradient of its own *logit* margin,
    which a saturated softmax (logits scaled 1000x, like a distilled network at T = 1) does not
    zero. On the averaged prediction the true class's log-probability has a zero gradient
    there, so the same margin moves only through the other class's."""

    class Scaled(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return 1000 * self.net(x)

    ens = TinyEnsemble([Scaled(_net(0)), Scaled(_net(1))]).eval()
    x = torch.rand(6, 12)
    y = ens(x).argmax(1)
    t = (y + 1) % 3
    margin = lambda z: (z.gather(1, y[:, None]) - z.gather(1, t[:, None])).sum()  # noqa: E731
    expected = sum(_grad(ens.member(i), x, margin) for i in range(2)) / 2
    got = _grad(MemberMeanView(ens).eval(), x, margin)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-5)
    assert (got.abs().sum(1) > 0).all()
    true_class = lambda z: z.gather(1, y[:, None]).sum()  # noqa: E731
    assert _grad(ens, x, true_class).abs().max() < 1e-6  # saturated: log mean p_y is flat
    assert not torch.allclose(_grad(ens, x, margin), got, atol=1e-2)  # white-box follows another direction


def test_member_view_is_one_member(ensemble):
    x, y = torch.rand(5, 12), torch.tensor([0, 1, 2, 0, 1])
    t = threat_class("member")(threat_class("member").Config(index=1))
    assert t.not_applicable(ensemble) is None
    ce = lambda z: F.cross_entropy(z, y, reduction="sum")  # noqa: E731
    view = t.view(None, _FakeCell(), ensemble).module
    torch.testing.assert_close(_grad(view, x, ce), _grad(ensemble.member(1), x, ce))
    assert "out of range" in threat_class("member")(threat_class("member").Config(index=2)).not_applicable(ensemble)
    assert "not an ensemble" in t.not_applicable(_net(0))


def test_detector_aware_adds_alpha_times_the_evasion_term_on_the_gradient_path():
    det = GridDetector(_net(0, classes=3, d=12), threshold=0.001).eval()
    x, y = torch.rand(5, 12), torch.tensor([0, 1, 2, 0, 1])
    ce = lambda z: F.cross_entropy(z, y, reduction="sum")  # noqa: E731
    for alpha in (0.0, 0.5):
        view = DetectorAwareView(det, alpha).eval()
        torch.testing.assert_close(view(x), det(x))  # forward values unchanged
        xg = x.clone().requires_grad_(True)
        z, e = det(xg), det.evasion_logits(xg)
        g = (z.softmax(1) - F.one_hot(y, 3)).detach()  # d CE / d logits
        (expected,) = torch.autograd.grad((g * (z + alpha * e)).sum(), xg)
        torch.testing.assert_close(_grad(view, x, ce), expected, atol=1e-6, rtol=1e-5)
    # alpha 0 is the white-box gradient
    torch.testing.assert_close(_grad(DetectorAwareView(det, 0.0), x, ce), _grad(det, x, ce))
    t = threat_class("detector-aware")
    assert t(t.Config(alpha=0.1)).not_applicable(_net(0)) is not None
    assert t(t.Config(alpha=0.1)).not_applicable(det) is None


def test_threat_models_are_typed_objects_with_keys_and_labels():
    assert set(THREATS) == {"white-box", "undefended", "transfer", "gray-box", "member", "member-mean", "detector-aware"}
    da = threat_class("detector-aware")
    a, b = da(da.Config(alpha=0.1)), da(da.Config(alpha=1.0))
    assert a.key() != b.key() and a.label() == "detector-aware(alpha=0.1)"
    assert threat_class("white-box")(threat_class("white-box").Config()).label() == "white-box"
    with pytest.raises(advx.PluginNotFoundError, match="did you mean 'member'"):
        threat_class("membr")
    with pytest.raises(Exception, match="alpha"):
        da.Config(alpha=-1)


class _FakeCell:
    class _Ref:
        def key(self):
            return ["x"]

    dataset = model = defense = _Ref()


# -- in a matrix ------------------------------------------------------------------------------------


class TwoMembers(Defense):
    """A 2-member ensemble: the base model and a twin trained with another seed."""

    name: ClassVar[str] = "two-members"

    def apply(self, model, ctx):
        twin = ctx.train(train=ctx.train_config.model_copy(update={"seed": ctx.train_config.seed + 1}))
        return TinyEnsemble([model, twin]).eval()


class Grid(Defense):
    """The toy grid detector around the model."""

    name: ClassVar[str] = "grid-detector"

    def apply(self, model, ctx):
        return GridDetector(model, threshold=0.01).eval()


class Squashed(Defense):
    """A non-differentiable input transform in front of the model."""

    name: ClassVar[str] = "squashed"

    def apply(self, model, ctx):
        return nn.Sequential(Squash(), model).eval()


@pytest.fixture(scope="module")
def reg():
    r = advx.Registry.discover()
    for cls in (TwoMembers, Grid, Squashed):
        r.add("defense", cls, package="tests")
    return r


def spec(tmp_path, defenses, threats, attacks=None, samples=60):
    return {
        "matrix": {"name": "threats", "samples": samples, "batch_size": 30, "cache_dir": str(tmp_path / "cache")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 3}}],
        "defenses": defenses,
        "threats": threats,
        "attacks": attacks or [{"name": "fgsm", "eps": 0.2}],
    }


def test_ensemble_threats_in_a_matrix_and_not_applicable_cells(tmp_path, reg, capsys):
    s = spec(
        tmp_path,
        [{"name": "none"}, {"name": "two-members"}],
        [{"name": "white-box"}, {"name": "member", "index": [0, 1, 5]}, {"name": "member-mean"}],
    )
    db = tmp_path / "r.db"
    res = advx.run_matrix(s, registry=reg, store=db)
    rows = {(r["defense"], r["threat"]): r for r in res.rows}
    assert len(rows) == 10
    for t in ("member(index=0)", "member(index=1)", "member(index=5)", "member-mean"):
        assert rows[("none", t)]["status"] == "not-applicable" and "not an ensemble" in rows[("none", t)]["reason"]
    assert rows[("two-members", "member(index=5)")]["status"] == "not-applicable"
    assert "out of range" in rows[("two-members", "member(index=5)")]["reason"]
    for t in ("white-box", "member(index=0)", "member(index=1)", "member-mean"):
        assert rows[("two-members", t)]["status"] == "done", rows[("two-members", t)]
    assert (res.failed, res.not_applicable) == (0, 5)
    # the CLI shows them as not applicable, with the reason, and a rerun does not retry them
    from advx.cli import main

    assert main(["results", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count("not applicable") == 5 and "not an ensemble" in out
    again = advx.run_matrix(s, registry=reg, store=db)
    assert again.skipped == 10


def test_detector_aware_cell_and_detection_metrics(tmp_path, reg):
    s = spec(tmp_path, [{"name": "grid-detector"}, {"name": "none"}], [{"name": "white-box"}, {"name": "detector-aware", "alpha": 1.0}])
    res = advx.run_matrix(s, registry=reg)
    rows = {(r["defense"], r["threat"]): r for r in res.rows}
    assert rows[("none", "detector-aware(alpha=1.0)")]["status"] == "not-applicable"
    wb = rows[("grid-detector", "white-box")]
    assert wb["status"] == "done" and rows[("grid-detector", "detector-aware(alpha=1.0)")]["status"] == "done"
    for k in ("detection_auc", "detection_tpr", "detection_fpr", "accuracy_with_rejection"):
        assert wb[k] is not None
    assert rows[("none", "white-box")]["detection_auc"] is None
    roc = wb["details"]["roc"]
    assert roc[0] == [0.0, 0.0] and roc[-1] == [1.0, 1.0]
    assert wb["accuracy_with_rejection"] >= wb["robust_accuracy"]


def test_requires_gradients_against_a_non_differentiable_defense(tmp_path, reg):
    s = spec(tmp_path, [{"name": "squashed"}], [{"name": "white-box"}, {"name": "white-box", "bpda": False}])
    s["attacks"] = [{"name": "bim", "eps": 0.2, "alpha": 0.05, "steps": 5}]
    res = advx.run_matrix(s, registry=reg)
    rows = {r["threat"]: r for r in res.rows}
    bpda, plain = rows["white-box"], rows["white-box(bpda=False)"]
    assert bpda["status"] == "done" and bpda["robust_accuracy"] < bpda["clean_accuracy"]
    assert plain["status"] == "failed"
    assert 'attack "bim" needs input gradients' in plain["error"] and "BPDA is off" in plain["error"]


def test_bpda_gives_an_identity_backward_only_inside_the_block():
    m = nn.Sequential(Squash(), _net(0)).eval()
    x = torch.rand(3, 12, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).sum(), x)
    assert torch.count_nonzero(g) == 0  # round() has a zero gradient
    with advx.bpda(m):
        (g,) = torch.autograd.grad(m(x).sum(), x)
        assert torch.count_nonzero(g) > 0
        torch.testing.assert_close(m(x), nn.Sequential(Squash(), _net(0))(x))  # forward unchanged
    assert not m[0].bpda


class SurrogateSpy(advx.Attack):
    """FGSM that records ``self.surrogate`` as the kernel set it during each call."""

    name: ClassVar[str] = "surrogate-spy"
    norm: ClassVar[str] = "linf"
    seen: ClassVar[list] = []

    class Config(advx.AttackConfig):
        eps: float = 0.2

    def perturb(self, model, x, y, bounds, targeted=False):
        type(self).seen.append(self.surrogate)
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        return (x + self.config.eps * g.sign()).clamp(*bounds).detach()


def test_the_kernel_tells_the_attack_when_it_crafts_on_a_stand_in(tmp_path, reg):
    """Transfer-style threat models (member, undefended, gray-box, transfer) set
    ``Attack.surrogate`` for the call; white-box and member-mean (whose forward is the
    ensemble's) do not, and the flag is cleared afterwards."""
    reg.add("attack", SurrogateSpy, package="tests")
    assert {n for n, c in THREATS.items() if c.surrogate} == {"member", "undefended", "gray-box", "transfer"}
    s = spec(
        tmp_path,
        [{"name": "two-members"}],
        [{"name": "white-box"}, {"name": "member", "index": 0}, {"name": "member-mean"}, {"name": "undefended"}],
        attacks=[{"name": "surrogate-spy"}],
    )
    s["matrix"]["batch_size"] = 60  # one batch per cell: one entry in `seen` each
    SurrogateSpy.seen.clear()
    res = advx.run_matrix(s, registry=reg)
    assert [r["threat"] for r in res.rows] == ["white-box", "member(index=0)", "member-mean", "undefended"]
    assert SurrogateSpy.seen == [False, True, False, True]
    # and silent success is not watched on a stand-in (its own success is not the goal)
    diag = {r["threat"]: r["details"]["diagnostics"]["silent_success"] for r in res.rows}
    assert diag["member(index=0)"] is None and diag["white-box"] is not None


def test_gray_box_with_the_detector_aware_loss_on_the_attackers_copy(tmp_path, reg):
    """Seed 004 Table 7 'Target': eq. 6 against the attacker's own copy and its detector,
    scored on the defended target; ``detector_alpha`` changes what is crafted."""
    s = spec(
        tmp_path,
        [{"name": "grid-detector"}, {"name": "none"}],
        [{"name": "gray-box"}, {"name": "gray-box", "detector_alpha": [0.0, 100.0]}],
        # iterative: clean digits lie on the toy detector's grid, where its gradient is zero
        attacks=[{"name": "bim", "eps": 0.2, "alpha": 0.05, "steps": 4}],
    )
    s["matrix"]["keep_examples"] = 60
    res = advx.run_matrix(s, registry=reg, store=tmp_path / "g.db")
    rows = {(r["defense"], r["threat"]): r for r in res.rows}
    plain = rows[("grid-detector", "gray-box")]
    zero = rows[("grid-detector", "gray-box(detector_alpha=0.0)")]
    aware = rows[("grid-detector", "gray-box(detector_alpha=100.0)")]
    assert all(r["status"] == "done" for r in (plain, zero, aware))
    assert "detector_alpha" in rows[("none", "gray-box(detector_alpha=0.0)")]["reason"]
    store = advx.ResultStore(tmp_path / "g.db", readonly=True)
    adv = {k: store.examples(r["cell_key"])["x_adv"] for k, r in (("plain", plain), ("zero", zero), ("aware", aware))}
    assert torch.equal(adv["plain"], adv["zero"])  # alpha 0: the plain loss, the same examples
    assert not torch.equal(adv["plain"], adv["aware"])  # the copy's detector term moved them
