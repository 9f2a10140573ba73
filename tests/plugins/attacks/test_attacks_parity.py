"""Our attacks against the peer libraries' on the same model and inputs.

Skipped where a peer is not importable (the normal case in the main environment; the
peers live in a separate venv: ``/tmp/venv-peers/bin/python -m pytest
tests/plugins/attacks``). Deterministic attacks must agree to float tolerance; the
only allowed disagreements are gradient components at rounding level, whose sign can
flip between a mean (peers) and a sum (ours) reduction. DeepFool is compared on success
and norms: adv-lib's is the same algorithm (equal to float noise); torchattacks' compounds
the overshoot at every step and Foolbox's keeps the clipped-away part of the perturbation,
so they are only expected to be no better than ours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import advx

REG = advx.Registry.discover()
BOUNDS = (0.0, 1.0)


def ours(name, model, x, y, **params):
    return REG.attack(name, **params).perturb(model, x, y, BOUNDS)


def assert_same(a, b, atol=1e-5, max_rows=1):
    """Equal to ``atol`` except on at most ``max_rows`` examples (a rounding-level sign flip)."""
    rows = ((a - b).abs().flatten(1).amax(1) > atol).sum()
    assert int(rows) <= max_rows, f"{int(rows)} examples differ by more than {atol}"


def assert_same_or_kept(model, a, b, labels, targeted=False, atol=1e-5, max_rows=1):
    """Fixed-step loops (BIM, PGD, iterative L2): the peers return the final iterate, ours the
    last iterate seen adversarial where one was seen (no silent success). So: every example
    where the two differ (beyond a rounding-level sign flip) is one that ours returns
    adversarial, and ours breaks every example the peer breaks."""
    with torch.no_grad():
        pa, pb = model(a).argmax(1), model(b).argmax(1)
    ok_a, ok_b = (pa == labels, pb == labels) if targeted else (pa != labels, pb != labels)
    differ = (a - b).abs().flatten(1).amax(1) > atol
    assert int((differ & ~ok_a).sum()) <= max_rows, "ours differs from the peer on examples it did not break"
    assert int((ok_b & ~ok_a).sum()) <= max_rows, "the peer broke examples ours did not"


def l2(x_adv, x):
    return (x_adv - x).flatten(1).norm(dim=1)


def fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


# ---- torchattacks -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ta():
    return pytest.importorskip("torchattacks")


def test_fgsm_matches_torchattacks(ta, data):
    model, x, y = data
    assert_same(ours("fgsm", model, x, y, eps=0.1), ta.FGSM(model, eps=0.1)(x, y))


def test_bim_matches_torchattacks(ta, data):
    model, x, y = data
    a = ours("bim", model, x, y, eps=0.2, alpha=0.025, steps=8)
    assert_same_or_kept(model, a, ta.BIM(model, eps=0.2, alpha=0.025, steps=8)(x, y), y)


def test_pgd_without_start_matches_torchattacks(ta, data):
    model, x, y = data
    a = ours("pgd", model, x, y, eps=0.2, alpha=0.02, steps=10, random_start=False)
    assert_same_or_kept(model, a, ta.PGD(model, eps=0.2, alpha=0.02, steps=10, random_start=False)(x, y), y)


def test_pgd_l2_without_start_matches_torchattacks(ta, data):
    model, x, y = data
    a = ours("pgd-l2", model, x, y, eps=1.0, alpha=0.2, steps=10, random_start=False)
    assert_same_or_kept(model, a, ta.PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=False)(x, y), y, atol=1e-4)


def test_pgd_targeted_matches_torchattacks(ta, data):
    model, x, y = data
    t = (y + 1) % 10
    a = REG.attack("pgd", eps=0.2, alpha=0.02, steps=10, random_start=False).perturb(model, x, t, BOUNDS, targeted=True)
    peer = ta.PGD(model, eps=0.2, alpha=0.02, steps=10, random_start=False)
    peer.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    assert_same_or_kept(model, a, peer(x, y), t, targeted=True)


def test_deepfool_no_worse_than_torchattacks(ta, data):
    model, x, y = data
    a = ours("deepfool", model, x, y)
    b = ta.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    sa, sb = fooled(model, a, y), fooled(model, b, y)
    assert float(sa.float().mean()) >= float(sb.float().mean())
    both = sa & sb
    assert float(l2(a, x)[both].mean()) <= 1.01 * float(l2(b, x)[both].mean())


# ---- Foolbox ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fb():
    return pytest.importorskip("foolbox")


def test_fgsm_bim_l2_match_foolbox(fb, data):
    model, x, y = data
    fmodel = fb.PyTorchModel(model, bounds=BOUNDS)
    _, b, _ = fb.attacks.LinfFastGradientAttack(random_start=False)(fmodel, x, y, epsilons=0.1)
    assert_same(ours("fgsm", model, x, y, eps=0.1), b)
    _, b, _ = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=0.025, steps=8)(fmodel, x, y, epsilons=0.2)
    assert_same_or_kept(model, ours("bim", model, x, y, eps=0.2, alpha=0.025, steps=8), b, y)
    _, b, _ = fb.attacks.L2BasicIterativeAttack(abs_stepsize=0.25, steps=10)(fmodel, x, y, epsilons=1.0)
    assert_same_or_kept(model, ours("iterative-l2", model, x, y, eps=1.0, alpha=0.25, steps=10), b, y, atol=1e-4)


def test_deepfool_no_worse_than_foolbox(fb, data):
    """Foolbox keeps accumulating the unclipped perturbation after the box clip; ours restarts
    from the clipped iterate (as adv-lib's, below), which can only shorten the path."""
    model, x, y = data
    fmodel = fb.PyTorchModel(model, bounds=BOUNDS)
    b = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)(fmodel, x, y, epsilons=None)[0]
    a = ours("deepfool", model, x, y)
    sa, sb = fooled(model, a, y), fooled(model, b, y)
    assert bool((sa >= sb).all())
    both = sa & sb
    assert float(l2(a, x)[both].mean()) <= float(l2(b, x)[both].mean()) + 1e-4


# ---- ART ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def art_classifier(data):
    pytest.importorskip("art")
    from art.estimators.classification import PyTorchClassifier

    model, x, _ = data
    return PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
        clip_values=BOUNDS, device_type="cpu",
    )


def test_fgsm_bim_match_art(art_classifier, data):
    from art.attacks.evasion import BasicIterativeMethod, FastGradientMethod

    model, x, y = data
    xn, yn = x.numpy(), y.numpy()
    b = FastGradientMethod(art_classifier, norm=np.inf, eps=0.1).generate(xn, yn)
    assert_same(ours("fgsm", model, x, y, eps=0.1), torch.from_numpy(b))
    b = BasicIterativeMethod(art_classifier, eps=0.2, eps_step=0.025, max_iter=8, verbose=False).generate(xn, yn)
    assert_same_or_kept(model, ours("bim", model, x, y, eps=0.2, alpha=0.025, steps=8), torch.from_numpy(b), y)


# ---- APGD and Square (torchattacks; adv-lib's apgd) -------------------------------------
#
# torchattacks' APGD seeds the global generator with ``seed`` and draws the start with
# ``torch.rand``/``torch.randn`` of the batch's shape; ours draws each example's start from
# its own numbers (``Attack.noise``), so that a result does not depend on the batch. The
# algorithm is compared from torchattacks' start (``apgd_run`` given the point it starts
# from, the whole schedule): example by example. The plugin, from its own starts, is
# compared in aggregate. Unbroken examples are not compared by value: torchattacks
# returns the clean input there, ours the point of highest loss.

APGD_CASES = [("apgd-ce", "Linf", "ce", 0.1), ("apgd-dlr", "Linf", "dlr", 0.1), ("apgd-ce-l2", "L2", "ce", 0.7), ("apgd-dlr-l2", "L2", "dlr", 0.7)]


def torchattacks_start(x, eps, norm, seed=0):
    """The start torchattacks' APGD draws for ``x`` after ``torch.manual_seed(seed)`` (on the sphere)."""
    g = torch.Generator().manual_seed(seed)
    if norm == "Linf":
        t = 2 * torch.rand(x.shape, generator=g) - 1
        t = t / t.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    else:
        t = torch.randn(x.shape, generator=g)
        t = t / (t.square().sum(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12)
    return (x + eps * t).clamp(*BOUNDS)


@pytest.mark.parametrize("name,norm,loss,eps", APGD_CASES)
def test_apgd_matches_torchattacks(ta, data, name, norm, loss, eps):
    from advx.plugins.attacks.apgd import apgd_run

    model, x, y = data
    start = torchattacks_start(x, eps, norm)
    a, _, _ = apgd_run(model, x, y, start, loss=loss, targeted=False, norm=norm.lower(), eps=eps, steps=20, bounds=BOUNDS)
    b = ta.APGD(model, norm=norm, eps=eps, steps=20, loss=loss, seed=0)(x, y)
    fa, fb = fooled(model, a, y), fooled(model, b, y)
    assert int((fa != fb).sum()) <= 1  # measured: identical on all 200 digits of the issue note
    both = fa & fb
    assert_same(a[both], b[both], atol=1e-4, max_rows=1)  # the same last adversarial iterate
    # the plugin, from its own per-example starts and with early exit: the same strength
    ours = fooled(model, REG.attack(name, eps=eps, steps=20).perturb(model, x, y, BOUNDS), y)
    assert abs(float(ours.float().mean()) - float(fb.float().mean())) <= 0.03


def test_apgd_t_matches_torchattacks_apgdt(ta, data):
    """The suite's apgd-t member against torchattacks' APGDT (targeted DLR over the top
    classes, untargeted success): same robust accuracy within one example in 50."""
    model, x, y = data
    suite = REG.attack("suite", attacks=["apgd-t"], eps=0.1, steps=20, target_classes=3)
    a = suite.perturb(model, x, y, BOUNDS)
    b = ta.APGDT(model, norm="Linf", eps=0.1, steps=20, n_classes=10, seed=0)
    b.n_target_classes = 3
    b = b(x, y)
    ra, rb = 1 - fooled(model, a, y).float().mean(), 1 - fooled(model, b, y).float().mean()
    assert abs(float(ra - rb)) <= 0.02, (float(ra), float(rb))


@pytest.mark.parametrize("name,norm,eps", [("square", "Linf", 0.1), ("square-l2", "L2", 0.7)])
def test_square_no_weaker_than_torchattacks(ta, data, name, norm, eps):
    """Different random draws (ours: a window and signs per example; torchattacks: one per
    query for the batch), so outcomes are compared in aggregate: ours breaks at least as many."""
    model, x, y = data
    a = ours(name, model, x, y, eps=eps, queries=300)
    b = ta.Square(model, norm=norm, eps=eps, n_queries=300, seed=0)(x, y)
    fa, fb = fooled(model, a, y), fooled(model, b, y)
    assert float(fa.float().mean()) >= float(fb.float().mean()) - 0.01
    assert float((fa == fb).float().mean()) >= 0.8


@pytest.fixture(scope="module")
def advlib_apgd():
    pytest.importorskip("adv_lib")
    import sys
    import types

    for name in ("torchvision", "visdom", "tqdm"):  # imported by adv_lib's __init__, unused by apgd
        try:
            __import__(name)
        except Exception:  # noqa: BLE001
            stub = types.ModuleType(name)
            stub.models = types.SimpleNamespace()
            stub.Visdom = None
            stub.tqdm = lambda it=None, *a, **k: it
            sys.modules[name] = stub
    from adv_lib.attacks.auto_pgd import apgd

    return apgd


@pytest.mark.parametrize("name,norm,loss,eps", APGD_CASES)
def test_apgd_agrees_with_adv_lib(advlib_apgd, data, name, norm, loss, eps):
    """adv-lib draws its start from the global generator with ``*_like``: other numbers, so
    agreement is statistical: robust accuracy within 0.03, outcomes equal on >= 94%."""
    model, x, y = data
    torch.manual_seed(0)
    a = ours(name, model, x, y, eps=eps, steps=20)
    b = advlib_apgd(model, x, y, eps=eps, norm=float("inf") if norm == "Linf" else 2, n_iter=20, loss_function=loss)
    fa, fb = fooled(model, a, y), fooled(model, b, y)
    assert abs(float(fa.float().mean() - fb.float().mean())) <= 0.03
    assert float((fa == fb).float().mean()) >= 0.94


def test_deepfool_matches_adv_lib(advlib_apgd, data):
    """adv-lib's DeepFool is the same algorithm with the box (clip the iterate, continue
    from it): the same examples, to float noise accumulated over the steps."""
    from adv_lib.attacks.deepfool import df

    model, x, y = data
    a = ours("deepfool", model, x, y)
    b = df(model, x, y, steps=50, overshoot=0.02)
    assert torch.equal(fooled(model, a, y), fooled(model, b, y))
    assert torch.allclose(l2(a, x), l2(b, x), rtol=1e-3, atol=1e-4)
