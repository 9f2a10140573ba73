"""Our attacks against the peer libraries' on the same model and inputs.

Skipped where a peer is not importable (the normal case in the main environment; the
peers live in a separate venv: ``/tmp/venv-peers/bin/python -m pytest
tests/plugins/attacks``). Deterministic attacks must agree to float tolerance; the
only allowed disagreements are gradient components at rounding level, whose sign can
flip between a mean (peers) and a sum (ours) reduction. DeepFool is compared on success
and norms: torchattacks' variant compounds the overshoot at every step, so it is only
expected to be no better than ours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import advx

REG = advx.Registry.discover()
BOUNDS = (0.0, 1.0)


@pytest.fixture(scope="module")
def data(digits, digits_cnn):
    """100 correctly classified test digits (peers' DeepFool starts from the prediction)."""
    model = digits_cnn.eval()
    _, _, x, y = digits
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:100].clone(), y[ok][:100].clone()


def ours(name, model, x, y, **params):
    return REG.attack(name, **params).perturb(model, x, y, BOUNDS)


def assert_same(a, b, atol=1e-5, max_rows=1):
    """Equal to ``atol`` except on at most ``max_rows`` examples (a rounding-level sign flip)."""
    rows = ((a - b).abs().flatten(1).amax(1) > atol).sum()
    assert int(rows) <= max_rows, f"{int(rows)} examples differ by more than {atol}"


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
    assert_same(ours("bim", model, x, y, eps=0.2, alpha=0.025, steps=8), ta.BIM(model, eps=0.2, alpha=0.025, steps=8)(x, y))


def test_pgd_without_start_matches_torchattacks(ta, data):
    model, x, y = data
    a = ours("pgd", model, x, y, eps=0.2, alpha=0.02, steps=10, random_start=False)
    assert_same(a, ta.PGD(model, eps=0.2, alpha=0.02, steps=10, random_start=False)(x, y))


def test_pgd_l2_without_start_matches_torchattacks(ta, data):
    model, x, y = data
    a = ours("pgd-l2", model, x, y, eps=1.0, alpha=0.2, steps=10, random_start=False)
    assert_same(a, ta.PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=False)(x, y), atol=1e-4)


def test_pgd_targeted_matches_torchattacks(ta, data):
    model, x, y = data
    t = (y + 1) % 10
    a = REG.attack("pgd", eps=0.2, alpha=0.02, steps=10, random_start=False).perturb(model, x, t, BOUNDS, targeted=True)
    peer = ta.PGD(model, eps=0.2, alpha=0.02, steps=10, random_start=False)
    peer.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    assert_same(a, peer(x, y))


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
    assert_same(ours("bim", model, x, y, eps=0.2, alpha=0.025, steps=8), b)
    _, b, _ = fb.attacks.L2BasicIterativeAttack(abs_stepsize=0.25, steps=10)(fmodel, x, y, epsilons=1.0)
    assert_same(ours("iterative-l2", model, x, y, eps=1.0, alpha=0.25, steps=10), b, atol=1e-4)


def test_deepfool_matches_foolbox(fb, data):
    model, x, y = data
    fmodel = fb.PyTorchModel(model, bounds=BOUNDS)
    b = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)(fmodel, x, y, epsilons=None)[0]
    a = ours("deepfool", model, x, y)
    sa, sb = fooled(model, a, y), fooled(model, b, y)
    assert torch.equal(sa, sb)
    # same algorithm, same steps: norms agree to float noise accumulated over the steps
    assert torch.allclose(l2(a, x), l2(b, x), rtol=1e-3, atol=1e-4)


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
    assert_same(ours("bim", model, x, y, eps=0.2, alpha=0.025, steps=8), torch.from_numpy(b))
