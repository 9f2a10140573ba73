"""Correctness of the built-in attacks on a trained digits CNN.

What is checked, and why it matters for the numbers advx reports:

* FGSM equals its closed form, computed here independently (``torch.func.grad``);
* every attack returns examples inside its declared ball and the valid range, leaves its
  input and the model's parameter gradients untouched;
* the sanity checks of Carlini et al. (arXiv 1902.06705): success grows with eps, the
  iterative attack is at least as strong as the single-step one, DeepFool reaches ~100%
  with smaller perturbations than FGSM needs for the same success, CW-L2 finds smaller
  perturbations than PGD-L2;
* targeted modes reach their target; random starts are seeded; invalid configs fail with
  a ``ConfigError`` that names the field.

Everything runs on the first 200 test digits (8x8), single-threaded: on a loaded 2-core
machine two OpenMP threads contending with other processes are 5-10x slower than one.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch
import torch.nn.functional as F

import advx
from advx import PassCounter

REG = advx.Registry.discover()
BOUNDS = (0.0, 1.0)
ALL = ["fgsm", "bim", "iterative-l2", "pgd", "pgd-l2", "deepfool", "cw-l2"]

# Small but representative settings per attack (steps cut where the default is long).
FAST = {
    "fgsm": {"eps": 0.2},
    "bim": {"eps": 0.2, "alpha": 0.05, "steps": 10},
    "iterative-l2": {"eps": 1.0},
    "pgd": {"eps": 0.2, "alpha": 0.05, "steps": 10},
    "pgd-l2": {"eps": 1.0, "steps": 10},
    "deepfool": {},
    "cw-l2": {"steps": 30, "binary_search_steps": 3, "initial_const": 1.0, "lr": 0.05},
}


@pytest.fixture(scope="module")
def model(digits_cnn):
    return digits_cnn.eval()


@pytest.fixture(scope="module")
def xy(digits, model):
    _, _, x, y = digits
    return x[:200].clone(), y[:200].clone()


def attack(name, **params):
    return REG.attack(name, **params)


def success(model, x_adv, labels, targeted=False):
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    return pred == labels if targeted else pred != labels


def l2(x_adv, x):
    return (x_adv - x).flatten(1).norm(dim=1)


def linf(x_adv, x):
    return (x_adv - x).flatten(1).abs().amax(dim=1)


def test_every_attack_is_registered_with_its_norm():
    norms = {n: REG.get("attack", n).norm for n in ALL}
    assert norms == {
        "fgsm": "linf", "bim": "linf", "pgd": "linf",
        "iterative-l2": "l2", "pgd-l2": "l2", "deepfool": "l2", "cw-l2": "l2",
    }
    for n in ALL:
        cls = REG.get("attack", n)
        paper = sys.modules[cls.__module__].__doc__  # names the paper and its year
        assert re.search(r"(19|20)\d\d", paper), f"{n}: module docstring names no paper"
        for field, info in cls.Config.model_fields.items():
            assert info.description, f"{n}.{field} has no description"


def test_fgsm_equals_closed_form(model, xy):
    x, y = xy
    eps = 0.1

    def loss(inp):
        return F.cross_entropy(torch.func.functional_call(model, dict(model.named_parameters()), (inp,)), y)

    g = torch.func.grad(loss)(x)
    expected = (x + eps * g.sign()).clamp(*BOUNDS)
    got = attack("fgsm", eps=eps).perturb(model, x, y, BOUNDS)
    # Mean vs sum reduction can only flip the sign of a component whose gradient is at
    # rounding level; everything else must be bit-for-bit the closed form.
    differ = (got - expected).abs() > 1e-6
    assert not bool((differ & (g.abs() > 1e-7)).any())
    assert int(differ.sum()) <= 2

    expected_t = (x - eps * torch.func.grad(lambda i: F.cross_entropy(model(i), (y + 1) % 10))(x).sign()).clamp(*BOUNDS)
    got_t = attack("fgsm", eps=eps).perturb(model, x, (y + 1) % 10, BOUNDS, targeted=True)
    assert int(((got_t - expected_t).abs() > 1e-6).sum()) <= 2


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", ALL)
def test_output_in_ball_and_bounds_input_and_params_untouched(name, targeted, model, xy):
    x, y = xy
    x = x[:64]
    labels = (y[:64] + 3) % 10 if targeted else y[:64]
    params = dict(FAST[name])
    a = attack(name, **params)
    original = x.clone()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    out = a.perturb(model, x, labels, BOUNDS, targeted=targeted)
    assert torch.equal(x, original), "input modified in place"
    for p, g in zip(model.parameters(), grads):  # torch.autograd.grad: no .grad accumulation
        assert (p.grad is None and g is None) or torch.equal(p.grad, g), "parameter gradients were touched"
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert torch.isfinite(out).all()
    assert float(out.min()) >= BOUNDS[0] and float(out.max()) <= BOUNDS[1]
    if a.eps is not None:
        dist = linf(out, x) if a.norm == "linf" else l2(out, x)
        assert float(dist.max()) <= a.eps + 1e-5


@pytest.mark.parametrize("name", ["deepfool", "cw-l2"])
def test_min_norm_attacks_respect_an_optional_eps(name, model, xy):
    x, y = xy
    x, y = x[:64], y[:64]
    eps = 0.4  # below the median minimal perturbation: some examples must be cut
    out = attack(name, **{**FAST[name], "eps": eps}).perturb(model, x, y, BOUNDS)
    assert float(l2(out, x).max()) <= eps + 1e-5
    free = attack(name, **FAST[name]).perturb(model, x, y, BOUNDS)
    assert float(l2(free, x).max()) > eps  # the cap did something


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "iterative-l2"])
def test_success_grows_with_eps(name, model, xy):
    x, y = xy
    grid = [0.5, 1.0, 1.5] if name == "iterative-l2" else [0.05, 0.1, 0.15, 0.2, 0.3]
    rates = []
    for eps in grid:
        params = {"eps": eps}
        if name in ("bim", "pgd"):
            params.update(alpha=eps / 4, steps=10)
        rates.append(float(success(model, attack(name, **params).perturb(model, x, y, BOUNDS), y).float().mean()))
    assert all(b >= a - 0.01 for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] >= 0.95 and rates[0] <= 0.5, rates


@pytest.mark.parametrize("eps", [0.1, 0.15, 0.2])
def test_bim_at_least_as_strong_as_fgsm(eps, model, xy):
    x, y = xy
    s_fgsm = success(model, attack("fgsm", eps=eps).perturb(model, x, y, BOUNDS), y).float().mean()
    s_bim = success(model, attack("bim", eps=eps, alpha=eps / 4, steps=10).perturb(model, x, y, BOUNDS), y).float().mean()
    assert s_bim >= s_fgsm


def test_deepfool_reaches_full_success_with_smaller_l2_than_fgsm(model, xy):
    x, y = xy
    df = attack("deepfool").perturb(model, x, y, BOUNDS)
    ok = success(model, df, y)
    assert float(ok.float().mean()) >= 0.99
    # The smallest FGSM eps reaching DeepFool's success rate (or FGSM's best on the grid).
    target = float(ok.float().mean())
    best = None
    for eps in [0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]:
        fg = attack("fgsm", eps=eps).perturb(model, x, y, BOUNDS)
        s = success(model, fg, y)
        best = (eps, float(s.float().mean()), float(l2(fg, x)[s].mean()))
        if best[1] >= target:
            break
    df_l2 = float(l2(df, x)[ok].mean())
    assert df_l2 < 0.5 * best[2], (df_l2, best)


def _deepfool_one_by_one(model, x, y, steps=50, overshoot=0.02):
    """DeepFool written as plainly as possible, one example at a time: step to the nearest
    linearised boundary, clip the iterate to the box and continue from the clipped point."""
    out = []
    for xi, yi in zip(x, y):
        x_a = xi[None].clone()
        for _ in range(steps):
            leaf = x_a.clone().requires_grad_(True)
            z = model(leaf)[0]
            if int(z.argmax()) != int(yi):
                break
            best = None
            for k in range(z.numel()):
                if k == int(yi):
                    continue
                (w,) = torch.autograd.grad(z[k] - z[yi], leaf, retain_graph=True)
                dist = float((z[k] - z[yi]).detach().abs()) / float(w.norm())
                if best is None or dist < best[0]:
                    best = (dist, w)
            dist, w = best
            x_a = (x_a + (1 + overshoot) * (dist + 1e-4) * w / w.norm()).clamp(*BOUNDS)
        out.append(x_a)
    return torch.cat(out)


def test_deepfool_equals_the_one_by_one_algorithm_that_continues_from_the_clipped_iterate(model, xy):
    """Pins how the box enters: after each clip the next step starts from the clipped
    iterate (accumulating the unclipped perturbation instead, as Foolbox does, gives other
    and on average larger perturbations)."""
    x, y = xy
    x, y = x[:40], y[:40]
    ours = attack("deepfool").perturb(model, x, y, BOUNDS)
    ref = _deepfool_one_by_one(model, x, y)
    assert torch.equal(success(model, ours, y), success(model, ref, y))
    assert torch.allclose(l2(ours, x), l2(ref, x), rtol=1e-3, atol=1e-4)
    assert int(((ours - ref).abs().flatten(1).amax(1) > 1e-4).sum()) <= 1


def test_deepfool_targeted_reaches_target(model, xy):
    x, y = xy
    t = torch.full_like(y, 3)
    out = attack("deepfool").perturb(model, x, t, BOUNDS, targeted=True)
    hit = success(model, out, t, targeted=True)[y != 3]
    assert float(hit.float().mean()) >= 0.95


@pytest.mark.parametrize(
    "name,params",
    [
        ("bim", {"eps": 0.3, "alpha": 0.03, "steps": 20}),
        ("pgd", {"eps": 0.3, "alpha": 0.03, "steps": 20}),
        ("pgd-l2", {"eps": 2.0, "steps": 20}),
        ("cw-l2", {"steps": 50, "binary_search_steps": 4, "initial_const": 1.0, "lr": 0.05}),
    ],
)
def test_targeted_hits_fixed_target(name, params, model, xy):
    x, y = xy
    keep = y != 3
    x, y = x[keep][:100], y[keep][:100]
    t = torch.full_like(y, 3)
    out = attack(name, **params).perturb(model, x, t, BOUNDS, targeted=True)
    assert float(success(model, out, t, targeted=True).float().mean()) >= 0.9


def test_cw_finds_smaller_l2_than_pgd_l2(model, xy):
    x, y = xy
    x, y = x[:100], y[:100]
    cw = attack("cw-l2", **FAST["cw-l2"]).perturb(model, x, y, BOUNDS)
    pgd = attack("pgd-l2", eps=1.5, steps=20).perturb(model, x, y, BOUNDS)
    both = success(model, cw, y) & success(model, pgd, y)
    assert float(both.float().mean()) >= 0.8
    assert float(l2(cw, x)[both].mean()) < 0.8 * float(l2(pgd, x)[both].mean())
    # failures come back unchanged (CW returns the clean input where it found nothing)
    failed = ~success(model, cw, y)
    assert torch.equal(cw[failed], x[failed].clamp(*BOUNDS)) or not bool(failed.any())


def test_pgd_without_random_start_is_bim(model, xy):
    x, y = xy
    p = attack("pgd", eps=0.2, alpha=0.05, steps=5, random_start=False).perturb(model, x, y, BOUNDS)
    b = attack("bim", eps=0.2, alpha=0.05, steps=5).perturb(model, x, y, BOUNDS)
    assert torch.equal(p, b)


@pytest.mark.parametrize("name", ["pgd", "pgd-l2"])
def test_random_start_is_seeded(name, model, xy):
    x, y = xy
    x, y = x[:32], y[:32]
    params = {"eps": 0.2 if name == "pgd" else 1.0, "steps": 2}
    a = attack(name, **params, seed=7).perturb(model, x, y, BOUNDS)
    torch.manual_seed(123)  # the global RNG must not matter
    b = attack(name, **params, seed=7).perturb(model, x, y, BOUNDS)
    c = attack(name, **params, seed=8).perturb(model, x, y, BOUNDS)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_l2_random_start_is_uniform_in_the_ball():
    """Radii of a uniform draw in a d-ball follow r = eps * u^(1/d): median eps * 0.5^(1/d)."""
    from advx.plugins.attacks._common import uniform_l2_ball

    x = torch.zeros(4000, 1, 2, 2)  # d = 4
    r = l2(uniform_l2_ball(x, 1.0, advx.ExampleNoise.of(0, torch.arange(len(x)))), x)
    assert float(r.max()) <= 1.0 + 1e-6
    assert abs(float(r.median()) - 0.5**0.25) < 0.02


def test_pgd_restarts_keep_every_success(model, xy):
    x, y = xy
    params = {"eps": 0.1, "alpha": 0.025, "steps": 10}
    one = success(model, attack("pgd", **params).perturb(model, x, y, BOUNDS), y)
    three = success(model, attack("pgd", **params, restarts=3).perturb(model, x, y, BOUNDS), y)
    assert bool((three | ~one).all()), "a restart lost an example the first run had broken"
    assert int(three.sum()) >= int(one.sum())


def test_already_misclassified_examples_cost_deepfool_nothing(model, xy):
    x, y = xy
    counter = PassCounter(model)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10  # every example is "already adversarial" w.r.t. these
    out = attack("deepfool").perturb(counter, x, wrong, BOUNDS)
    assert torch.equal(out, x)
    assert counter.forwards == len(x) and counter.backwards == 0


@pytest.mark.parametrize(
    "name,params,field",
    [
        ("fgsm", {"eps": -0.1}, "eps"),
        ("fgsm", {"epsilon": 0.1}, "epsilon"),
        ("bim", {"steps": 0}, "steps"),
        ("bim", {"alpha": 0}, "alpha"),
        ("iterative-l2", {"steps": 0}, "steps"),
        ("pgd", {"restarts": 0}, "restarts"),
        ("pgd", {"restarts": 2, "random_start": False}, "restarts"),
        ("pgd-l2", {"alpha": -1}, "alpha"),
        ("deepfool", {"overshoot": -0.5}, "overshoot"),
        ("deepfool", {"candidates": 1}, "candidates"),
        ("cw-l2", {"lr": 0}, "lr"),
        ("cw-l2", {"binary_search_steps": 0}, "binary_search_steps"),
        ("cw-l2", {"kappa": -1}, "kappa"),
    ],
)
def test_invalid_config_names_the_field(name, params, field):
    with pytest.raises(advx.ConfigError, match=field):
        attack(name, **params)


# ---- every config field pinned -----------------------------------------------------------
# (name, field, a, b, what changes): "output" for fields that change the examples returned,
# "passes" for abort_early and early_exit, whose job is to stop early with nearly the same result. The
# base of each row is FAST's settings, with a budget small enough that some examples survive
# (so that more steps, restarts or a larger eps have something left to change).
PINS = [
    ("fgsm", "eps", 0.05, 0.1, "output"),
    *[(n, f, a, b, "output") for n in ("bim", "pgd") for f, a, b in (("eps", 0.05, 0.1), ("alpha", 0.005, 0.02), ("steps", 2, 10))],
    *[("iterative-l2", f, a, b, "output") for f, a, b in (("eps", 0.3, 0.6), ("alpha", 0.02, 0.1), ("steps", 2, 10))],
    *[("pgd-l2", f, a, b, "output") for f, a, b in (("eps", 0.3, 0.6), ("alpha", 0.02, 0.1), ("steps", 2, 10))],
    *[(n, f, a, b, "output") for n in ("pgd", "pgd-l2") for f, a, b in (("random_start", True, False), ("seed", 0, 1), ("restarts", 1, 3))],
    ("deepfool", "eps", None, 0.3, "output"),
    ("deepfool", "steps", 1, 50, "output"),
    ("deepfool", "overshoot", 0.02, 0.5, "output"),
    ("deepfool", "candidates", 2, 10, "output"),
    ("cw-l2", "eps", None, 0.3, "output"),
    ("cw-l2", "kappa", 0.0, 5.0, "output"),
    ("cw-l2", "initial_const", 0.01, 1.0, "output"),
    ("cw-l2", "binary_search_steps", 1, 3, "output"),
    ("cw-l2", "steps", 10, 30, "output"),
    ("cw-l2", "lr", 0.01, 0.05, "output"),
    ("cw-l2", "abort_early", True, False, "passes"),
    # early exit: the same examples broken, for fewer passes (tests/plugins/attacks/test_early_exit.py)
    *[(n, "early_exit", True, False, "passes") for n in ("bim", "pgd", "iterative-l2", "pgd-l2")],
]
PIN_BASE = {**FAST, "bim": {"eps": 0.05, "alpha": 0.01, "steps": 10}, "pgd": {"eps": 0.05, "alpha": 0.01, "steps": 10},
            "iterative-l2": {"eps": 0.3, "steps": 10}, "pgd-l2": {"eps": 0.3, "steps": 10}}
# abort_early checks the loss every steps/10 iterations; at lr 0.05 it still falls at every
# check for 100 steps on these digits, at lr 0.2 it stops falling and the search step ends early
PIN_EXTRA = {("cw-l2", "abort_early"): {"steps": 100, "lr": 0.2}}


def test_every_field_of_the_classic_attacks_is_pinned():
    """The label_mode of the kernel's AttackConfig is the kernel's (tests/core); every field an
    attack declares itself is in PINS."""
    declared = {(n, f) for n in ALL for f in REG.get("attack", n).Config.model_fields if f != "label_mode"}
    assert declared == {(n, f) for n, f, *_ in PINS}


@pytest.mark.parametrize("name,field,a,b,what", PINS, ids=[f"{p[0]}-{p[1]}" for p in PINS])
def test_config_fields_change_what_the_attack_does(name, field, a, b, what, model, xy):
    x, y = xy
    x, y = x[:64], y[:64]
    runs = []
    for value in (a, b):
        counter = PassCounter(model)
        params = {**PIN_BASE[name], **PIN_EXTRA.get((name, field), {}), field: value}
        out = attack(name, **params).perturb(counter, x, y, BOUNDS)
        runs.append((out, counter.forwards))
    (out_a, passes_a), (out_b, passes_b) = runs
    if what == "output":
        assert not torch.equal(out_a, out_b), f"{name}.{field} = {a} and = {b} returned the same examples"
    else:
        assert passes_a != passes_b, f"{name}.{field} = {a} and = {b} cost the same passes"


def test_cw_kappa_is_the_margin_every_returned_example_has(model, xy):
    """kappa is CW's confidence: an example counts (and is returned) only when some wrong
    logit beats the true one by more than kappa; a larger kappa buys it with a larger L2."""
    x, y = xy
    x, y = x[:64], y[:64]
    out = {k: attack("cw-l2", **{**FAST["cw-l2"], "kappa": k}).perturb(model, x, y, BOUNDS) for k in (0.0, 5.0)}
    with torch.no_grad():
        logits = model(out[5.0])
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -float("inf")).amax(1)
    moved = (out[5.0] != x).flatten(1).any(1)
    assert moved.sum() > 32
    assert bool((other[moved] - true[moved] > 5.0 - 1e-4).all())
    both = moved & (out[0.0] != x).flatten(1).any(1)
    assert float(l2(out[5.0], x)[both].mean()) > 1.2 * float(l2(out[0.0], x)[both].mean())


def test_deepfool_overshoot_scales_the_step_past_the_boundary(model, xy):
    """DeepFool's iterate is x + (1 + overshoot) r: a larger overshoot lands examples that
    need the same number of linearisations further out, in proportion."""
    x, y = xy
    x, y = x[:64], y[:64]
    a = attack("deepfool", overshoot=0.02).perturb(model, x, y, BOUNDS)
    b = attack("deepfool", overshoot=0.5).perturb(model, x, y, BOUNDS)
    ratio = float(l2(b, x).sum() / l2(a, x).sum())
    assert ratio > 1.2, ratio


def saturated_linear():
    """``(net, x, y, exact, f32)``: a linear net confident enough that float32 rounds p(true
    class) to 1.0 on most of its 64 inputs, and the input gradient of the summed cross-entropy
    there computed in float64 (``exact``) and in float32 (``f32``, whose signs differ)."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(6, 4)
    with torch.no_grad():
        net.weight.copy_(torch.randn(4, 6, generator=g) * 20)
        net.bias.zero_()
    x = torch.rand(64, 6, generator=g)
    y = net(x).argmax(1)
    assert (F.softmax(net(x), 1).gather(1, y[:, None]) == 1.0).float().mean() > 0.4  # saturated in float32

    def grad(model, inp, dtype):
        inp = inp.detach().to(dtype, copy=True).requires_grad_(True)
        (gr,) = torch.autograd.grad(F.cross_entropy(model.to(dtype)(inp), y, reduction="sum"), inp)
        return gr

    exact, f32 = grad(copy_of(net), x, torch.float64), grad(copy_of(net), x, torch.float32)
    assert (f32.sign() != exact.sign())[exact.abs() > 0].any()  # the bug pinned: float32 steps elsewhere
    return net, x, y, exact, f32


def test_the_signed_gradient_survives_a_saturated_softmax():
    """Where the network is confident, float32 rounds p(true class) to exactly 1.0 and the
    cross-entropy's gradient loses its largest term; FGSM, BIM and PGD step along the exact
    (float64) loss's sign instead (``_common.loss_grad``): seed 002's FGSM left 0.0941 through
    the float32 loss and 0.0177 through the exact one."""
    from advx.plugins.attacks._common import loss_grad

    net, x, y, exact, _ = saturated_linear()
    ours, _ = loss_grad(net, x.clone().requires_grad_(True), y, targeted=False)
    nonzero = exact.abs() > 0
    assert torch.equal(ours.sign().double()[nonzero], exact.sign()[nonzero])
    # and FGSM, which takes that sign, fools what the exact gradient fools
    fooled = advx.evaluate(net.eval(), (x, y), [("fgsm", {"eps": 0.3})], bounds=(0.0, 1.0))[0]
    x_exact = (x + 0.3 * exact.sign()).clamp(0, 1)
    assert torch.allclose(fooled.x_adv, x_exact.float())
    assert fooled.metrics["adversarial_accuracy"] == pytest.approx((net(x_exact.float()).argmax(1) == y).float().mean().item())


def test_apgd_ce_steps_along_the_exact_gradient_of_a_saturated_softmax():
    """APGD's cross-entropy is float64 too (``_common.ce_loss``). One step from the clean
    input: the 2-eps signed step projected onto the eps box is ``x1 = x + eps sign(grad)``,
    returned where it fools the model or has the higher loss, else the clean input. Through a
    float32 loss the step follows the wrong signs, and the loss, rounded to 0 at both points,
    cannot tell that the step went up."""
    from advx.plugins.attacks._common import ce_loss
    from advx.plugins.attacks.apgd import apgd_run

    net, x, y, exact, f32 = saturated_linear()
    x1 = (x + 0.3 * exact.sign()).clamp(0, 1).float()
    with torch.no_grad():
        l0, l1, fools = ce_loss(net(x), y, False), ce_loss(net(x1), y, False), net(x1).argmax(1) != y
        l1_f32 = F.cross_entropy(net(x1), y, reduction="none")
    want = torch.where((fools | (l1 > l0))[:, None], x1, x)
    assert bool((l1 > l0).float().mean() > 0.9)  # a step up almost everywhere (p_y is 1.0 in float64 too on a few)
    for early_exit in (False, True):
        out, found, loss = apgd_run(net, x, y, x.clone(), loss="ce", targeted=False, norm="linf", eps=0.3, steps=1,
                                    bounds=(0.0, 1.0), early_exit=early_exit)
        assert torch.allclose(out, want, atol=1e-6), early_exit
        assert torch.equal(found, fools)
        assert loss.dtype == torch.float64
        assert torch.allclose(loss[~fools], torch.maximum(l0, l1)[~fools], rtol=1e-4)
    assert bool(((l1 > 0) & (l1_f32 == 0)).any())  # float32 loses the loss, not only the gradient
    assert not torch.allclose((x + 0.3 * f32.sign()).clamp(0, 1), x1)  # and steps elsewhere


def test_pgd_ranks_its_restarts_by_the_exact_loss_of_a_saturated_softmax():
    """PGD keeps, per example, the restart of highest cross-entropy (a success first); that
    loss is float64 too (``ce_loss``): in float32 a saturated example's restarts all score 0,
    tie, and the first is kept whatever the others reached."""
    from advx.plugins.attacks._common import ce_loss

    net, x, y, _, _ = saturated_linear()
    params = {"eps": 0.05, "alpha": 0.01, "steps": 3, "early_exit": False}
    kept = attack("pgd", restarts=3, **params).perturb(net, x, y, (0.0, 1.0))
    pgd = attack("pgd", restarts=1, **params)
    noise = pgd.noise(x, pgd.config.seed)
    ends = [pgd._iterate(net, x, y, pgd._start(x, noise, r).add_(x).clamp_(0, 1), (0.0, 1.0), False).detach() for r in range(3)]
    with torch.no_grad():
        robust = torch.stack([net(e).argmax(1) == y for e in ends]).all(0)  # no restart fools these
        losses = torch.stack([ce_loss(net(e), y, False) for e in ends])
        f32 = torch.stack([F.cross_entropy(net(e), y, reduction="none") for e in ends])
    best = losses.argmax(0)
    want = torch.stack(ends)[best, torch.arange(len(x))]
    assert bool(robust.float().mean() > 0.5)
    assert torch.equal(kept[robust], want[robust])
    tied = robust & (f32 == 0).all(0) & (best != 0)  # what float32 could not rank
    assert bool(tied.any())
    assert not torch.equal(kept[tied], ends[0][tied])


def copy_of(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)
