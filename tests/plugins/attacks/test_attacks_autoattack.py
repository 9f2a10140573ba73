"""APGD, Square and the suite; the breakable-model unit test of every built-in attack; no
silent success in any iterative attack.

* every built-in attack breaks every input of ``advx.testing.breakable_model`` (an
  attack that misses a planted adversarial example inside its budget is broken);
* no iterative attack loses an adversarial example it evaluated (a wrapper records every
  input the model sees, on a model whose adversarial region is a thin slab crossed on the
  way to higher loss);
* APGD: passes = steps + 1 per restart, restarts rerun only unbroken examples, the
  checkpoint rule and momentum change the run, DLR is scale-invariant (CE is not);
* Square: no gradients, at most ``queries`` + 1 forwards, stops on success;
* suite: runs members in order on what is left, records ``broken_by``, is at least as
  strong as each member alone;
* every config field is pinned: changing it changes what the attack does.

Small settings on the first digits, one torch thread (conftest).
"""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

import advx
from advx import PassCounter
from advx.testing import breakable_model, check_attack

REG = advx.Registry.discover()
BOUNDS = (0.0, 1.0)
NEW = ["apgd-ce", "apgd-ce-l2", "apgd-dlr", "apgd-dlr-l2", "square", "square-l2", "fab", "fab-l2", "suite", "suite-l2"]

# Settings for the breakable check (eps above the planted example's 0.75 eps).
BREAK = {
    "fgsm": {"eps": 0.1},
    "bim": {"eps": 0.1, "alpha": 0.02, "steps": 10},
    "iterative-l2": {"eps": 0.5},
    "pgd": {"eps": 0.1, "alpha": 0.02, "steps": 10},
    "pgd-l2": {"eps": 0.5, "steps": 10},
    "deepfool": {},
    "cw-l2": {"steps": 30, "binary_search_steps": 3, "initial_const": 1.0, "lr": 0.05},
    "apgd-ce": {"eps": 0.1, "steps": 10},
    "apgd-ce-l2": {"eps": 0.5, "steps": 10},
    "apgd-dlr": {"eps": 0.1, "steps": 10},
    "apgd-dlr-l2": {"eps": 0.5, "steps": 10},
    "square": {"eps": 0.1, "queries": 500},
    "square-l2": {"eps": 0.5, "queries": 500},
    "fab": {"eps": 0.1, "steps": 10},
    "fab-l2": {"eps": 0.5, "steps": 10},
    "suite": {"eps": 0.1, "steps": 10, "queries": 100},
    "suite-l2": {"eps": 0.5, "steps": 10, "queries": 100},
}


@pytest.fixture(scope="module")
def model(digits_cnn):
    return digits_cnn.eval()


@pytest.fixture(scope="module")
def xy(digits, model):
    """100 correctly classified test digits."""
    _, _, x, y = digits
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:100].clone(), y[ok][:100].clone()


def run(name, model, x, y, targeted=False, **params):
    return REG.attack(name, **params).perturb(model, x, y, BOUNDS, targeted=targeted)


def fooled(model, x_adv, y, targeted=False):
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    return pred == y if targeted else pred != y


def counted(name, model, x, y, **params):
    counter = PassCounter(model)
    out = REG.attack(name, **params).perturb(counter, x, y, BOUNDS)
    return out, counter.forwards / len(x), counter.backwards / len(x)


# ---- registration and the unit test of every attack ------------------------------------


def test_new_attacks_declare_norm_requirements_and_papers():
    got = {n: (REG.get("attack", n).norm, sorted(REG.get("attack", n).requires)) for n in NEW}
    assert got == {
        "apgd-ce": ("linf", ["gradients"]), "apgd-ce-l2": ("l2", ["gradients"]),
        "apgd-dlr": ("linf", ["gradients"]), "apgd-dlr-l2": ("l2", ["gradients"]),
        "square": ("linf", []), "square-l2": ("l2", []),
        "fab": ("linf", ["gradients"]), "fab-l2": ("l2", ["gradients"]),
        "suite": ("linf", ["gradients"]), "suite-l2": ("l2", ["gradients"]),
    }
    for n in NEW:
        cls = REG.get("attack", n)
        assert cls.iterative and cls.supports_targeted
        assert re.search(r"(19|20)\d\d", sys.modules[cls.__module__].__doc__)
        assert all(f.description for f in cls.Config.model_fields.values()), n
        check_attack(cls, {**BREAK[n], **({"queries": 20} if "queries" in BREAK[n] else {})})


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", NEW)
def test_new_attacks_leave_input_and_parameter_gradients_alone(name, targeted, model, xy):
    x, y = xy
    x, y = x[:32], y[:32]
    labels = (y + 3) % 10 if targeted else y
    params = {**BREAK[name], **({"queries": 20} if "queries" in BREAK[name] else {})}
    params["eps"] = 0.1 if REG.get("attack", name).norm == "linf" else 0.8
    original = x.clone()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    out = run(name, model, x, labels, targeted=targeted, **params)
    assert torch.equal(x, original)
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad and torch.isfinite(out).all()
    d = (out - x).flatten(1)
    dist = d.abs().amax(1) if REG.get("attack", name).norm == "linf" else d.norm(dim=1)
    assert float(dist.max()) <= params["eps"] * (1 + 1e-6) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_every_builtin_attack_is_covered():
    builtin = {e.name for e in REG.entries("attack") if e.cls.__module__.startswith("advx.plugins.")}
    assert set(BREAK) == builtin


@pytest.mark.parametrize("name", list(BREAK))
def test_every_builtin_attack_breaks_the_breakable_model(name):
    cls = REG.get("attack", name)
    check_attack(cls, BREAK[name], breakable=0.1 if cls.norm == "linf" else 0.5)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_breakable_model_plants_one_adversarial_example_per_input(norm, eps):
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    m = breakable_model(x, eps, norm)
    adv = m.adversarial
    with torch.no_grad():
        assert torch.equal(m(x).argmax(1), m.labels)
        assert torch.equal(m(adv).argmax(1), m.adv_classes)
        assert torch.equal(m(x[[3, 1]]).argmax(1), m.labels[[3, 1]])  # any subset, any order
    d = (adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(dist.max()) <= eps and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert not torch.equal(m.labels, m.adv_classes)
    # an attack that does nothing is caught
    class Null(advx.Attack):
        name = "null"
        norm = "linf"
        requires = frozenset()

        def perturb(self, model, x, y, bounds, targeted=False):
            return x.clone()

    with pytest.raises(AssertionError, match="missed the planted"):
        check_attack(Null, {}, breakable=0.1)


def test_breakable_model_refuses_inputs_too_close_for_their_balls():
    x = torch.rand(4, 1, 8, 8)
    x[1] = (x[0] + 0.01).clamp(0, 1)
    with pytest.raises(ValueError, match="too close"):
        breakable_model(x, 0.1)


# ---- no silent success -----------------------------------------------------------------


class Slab(nn.Module):
    """The breakable model with its adversarial region cut to a slab 0.15 < t < 0.4: beyond
    it, cross-entropy keeps rising (every other class climbs towards y) but y wins again,
    so an attack that returns its last iterate loses what it found on the way."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.seen = torch.zeros(len(base.prototypes), dtype=torch.bool)

    def forward(self, x):
        j, t = self.base.progress(x)
        others = (3.9 * t)[:, None].expand(len(x), self.base.num_classes)
        slab = ((t > 0.15) & (t < 0.4)).to(x.dtype) * 5.0
        logits = others.scatter(1, self.base.labels[j, None], 4.0)
        logits = logits.scatter_add(1, self.base.adv_classes[j, None], slab[:, None])
        self.seen[j[logits.detach().argmax(1) != self.base.labels[j]]] = True
        return logits


SLAB = {
    "bim": {"eps": 0.1, "alpha": 0.025, "steps": 6},
    "pgd": {"eps": 0.1, "alpha": 0.025, "steps": 6},
    "iterative-l2": {"eps": 0.5, "alpha": 0.125, "steps": 6},
    "pgd-l2": {"eps": 0.5, "alpha": 0.125, "steps": 6},
    "apgd-ce": {"eps": 0.1, "steps": 10, "restarts": 2},
    "apgd-dlr-l2": {"eps": 0.5, "steps": 10},
    "square": {"eps": 0.1, "queries": 100},
    "square-l2": {"eps": 0.5, "queries": 100},
    "suite": {"eps": 0.1, "steps": 5, "queries": 30, "target_classes": 2},
    "deepfool": {"eps": 0.5},
    "cw-l2": {"steps": 20, "binary_search_steps": 2, "initial_const": 1.0, "lr": 0.05},
}


@pytest.mark.parametrize("name", list(SLAB))
def test_no_silent_success(name):
    cls = REG.get("attack", name)
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    slab = Slab(breakable_model(x, 0.1 if cls.norm == "linf" else 0.5, cls.norm))
    out = run(name, slab, x, slab.base.labels, **SLAB[name])
    seen = slab.seen.clone()
    returned = fooled(slab, out, slab.base.labels)
    lost = seen & ~returned
    assert not bool(lost.any()), f"{name} evaluated an adversarial example for {int(lost.sum())} inputs and returned another"
    if name in ("bim", "iterative-l2"):  # deterministic: the slab is crossed at step 1
        assert bool(seen.all())


# ---- APGD ------------------------------------------------------------------------------


def test_apgd_costs_steps_plus_one_forwards_steps_backwards_and_restarts_only_rerun_unbroken(model, xy):
    x, y = xy
    full = {"eps": 0.1, "steps": 10, "early_exit": False}  # every step on every example (else: test_early_exit.py)
    _, fwd, bwd = counted("apgd-ce", model, x, y, **full)
    assert (fwd, bwd) == (12.0, 10.0)  # a clean forward; the last iterate's gradient is not computed
    out1 = run("apgd-ce", model, x, y, **full)
    out3, fwd3, _ = counted("apgd-ce", model, x, y, **full, restarts=3)
    broken = float(fooled(model, out1, y).float().mean())
    assert 0 < broken < 1
    assert 12.0 < fwd3 <= 12.0 + 2 * 11.0 * (1 - broken) + 1e-9  # later restarts only on the unbroken
    assert bool((fooled(model, out3, y) | ~fooled(model, out1, y)).all())  # restarts keep every success


@pytest.mark.parametrize("name,eps", [("apgd-ce", 0.1), ("apgd-ce-l2", 0.8), ("apgd-dlr", 0.1)])
def test_apgd_at_least_as_strong_as_pgd_with_its_step_tuned(name, eps, model, xy):
    x, y = xy
    ours = float(fooled(model, run(name, model, x, y, eps=eps, steps=20), y).float().mean())
    pgd = "pgd" if name != "apgd-ce-l2" else "pgd-l2"
    theirs = float(fooled(model, run(pgd, model, x, y, eps=eps, alpha=eps / 8, steps=20), y).float().mean())
    assert ours >= theirs - 0.02, (ours, theirs)


def test_apgd_does_not_attack_what_the_clean_input_already_breaks(model, xy):
    x, y = xy
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10  # every clean input is "adversarial" for these labels
    out, fwd, bwd = counted("apgd-ce", model, x, wrong, eps=0.1, steps=10)
    assert torch.equal(out, x) and (fwd, bwd) == (1.0, 0.0)


def test_apgd_dlr_is_scale_invariant_and_ce_is_not(model, xy):
    """DLR's point: a model whose logits are multiplied by 1000 (a softmax saturated in float)
    leaves CE with vanishing gradients, and DLR exactly as before."""
    x, y = xy
    x, y = x[:50], y[:50]
    scaled = nn.Sequential(model, _Scale(1e3)).eval()
    a = run("apgd-dlr", model, x, y, eps=0.1, steps=10)
    b = run("apgd-dlr", scaled, x, y, eps=0.1, steps=10)
    assert torch.equal(fooled(model, a, y), fooled(model, b, y))
    ce = float(fooled(model, run("apgd-ce", scaled, x, y, eps=0.1, steps=10), y).float().mean())
    assert float(fooled(model, a, y).float().mean()) > ce


class _Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, z):
        return z * self.s


def test_dlr_needs_three_classes_and_says_so():
    two = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="at least 3 classes"):
        run("apgd-dlr", two, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), eps=0.1, steps=2)


def test_apgd_targeted_dlr_reaches_the_target(model, xy):
    x, y = xy
    t = (y + 1) % 10
    out = run("apgd-dlr", model, x, t, targeted=True, eps=0.3, steps=20)
    assert float(fooled(model, out, t, targeted=True).float().mean()) >= 0.95
    pgd = run("pgd", model, x, t, targeted=True, eps=0.2, alpha=0.02, steps=20)
    dlr = run("apgd-dlr", model, x, t, targeted=True, eps=0.2, steps=20)
    assert fooled(model, dlr, t, True).float().mean() >= fooled(model, pgd, t, True).float().mean() - 0.02


@pytest.mark.parametrize(
    "field,a,b",
    [("eps", 0.05, 0.1), ("steps", 5, 10), ("rho", 0.75, 0.3), ("momentum", 0.75, 1.0), ("seed", 0, 1), ("restarts", 1, 2)],
)
def test_apgd_config_fields_change_the_result(field, a, b, model, xy):
    x, y = xy
    base = {"eps": 0.1, "steps": 10}
    ra = run("apgd-ce", model, x, y, **{**base, field: a})
    rb = run("apgd-ce", model, x, y, **{**base, field: b})
    assert not torch.equal(ra, rb), field
    if field == "eps":
        assert float((ra - x).abs().amax()) <= 0.05 + 1e-6 < float((rb - x).abs().amax())


# ---- Square ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,eps", [("square", 0.15), ("square-l2", 1.0)])
def test_square_is_query_only_within_budget_and_improves_with_queries(name, eps, model, xy):
    x, y = xy
    out, fwd, bwd = counted(name, model, x, y, eps=eps, queries=50)
    assert bwd == 0 and fwd <= 51
    with torch.no_grad():
        # stops on success: broken examples cost fewer queries than the budget
        assert fwd < 51 or not bool(fooled(model, out, y).any())
    few = fooled(model, out, y).float().mean()
    many = fooled(model, run(name, model, x, y, eps=eps, queries=300), y).float().mean()
    assert many >= few and many > 0.3


def test_square_targeted_reaches_the_target(model, xy):
    x, y = xy
    t = (y + 1) % 10
    out = run("square", model, x[:40], t[:40], targeted=True, eps=0.3, queries=300)
    assert float(fooled(model, out, t[:40], targeted=True).float().mean()) >= 0.8


@pytest.mark.parametrize("name", ["square", "square-l2"])
@pytest.mark.parametrize("field,a,b", [("eps", None, None), ("queries", 10, 40), ("p_init", 0.05, 0.5), ("seed", 0, 1)])
def test_square_config_fields_change_the_result(name, field, a, b, model, xy):
    x, y = xy
    x, y = x[:30], y[:30]
    base = {"eps": 0.1 if name == "square" else 0.5, "queries": 20}
    if field == "eps":
        a, b = base["eps"], 2 * base["eps"]
    ra = run(name, model, x, y, **{**base, field: a})
    rb = run(name, model, x, y, **{**base, field: b})
    assert not torch.equal(ra, rb), field


@pytest.mark.parametrize("name,eps", [("square", 0.05), ("square-l2", 0.3)])
def test_square_hopeless_examples_leave_the_search_early(name, eps, model, xy):
    """With hopeless_after, examples whose margin is not closing leave: fewer forwards; every
    example it breaks the full search breaks too (the same draws, the search cut short); off
    without early exit, where every example spends every query."""
    x, y = xy
    x, y = x[:40], y[:40]
    full, f_full, _ = counted(name, model, x, y, eps=eps, queries=200)
    cut, f_cut, _ = counted(name, model, x, y, eps=eps, queries=200, hopeless_after=0.1)
    b_full, b_cut = fooled(model, full, y), fooled(model, cut, y)
    assert f_cut < 0.8 * f_full
    assert bool((b_full | ~b_cut).all()) and torch.equal(full[b_cut], cut[b_cut])
    _, f_off, _ = counted(name, model, x, y, eps=eps, queries=50, hopeless_after=0.1, early_exit=False)
    assert f_off == 51


def test_square_margins_follow_the_search_query_by_query(model, xy):
    """``Square.margins`` (a study of the search, benchmarks/square_hopeless.py): without early
    exit, every example's best margin after each query, the start first; never rising; an
    example breaks at the first query where it reaches zero, and the early-exit search
    returns a fooling point for exactly those examples (the same draws)."""
    x, y = xy
    x, y = x[:30], y[:30]
    reg = advx.Registry.discover()
    sq = reg.attack("square", eps=0.1, queries=40, early_exit=False)
    sq.margins = []
    sq.perturb(model, x, y, (0.0, 1.0))
    m = torch.stack(sq.margins)
    assert m.shape == (41, 30) and bool((m[1:] <= m[:-1]).all())
    early = run("square", model, x, y, eps=0.1, queries=40)
    assert torch.equal(fooled(model, early, y), (m <= 0).any(0))
    quiet = reg.attack("square", eps=0.1, queries=40)
    quiet.margins = []
    quiet.perturb(model, x, y, (0.0, 1.0))
    assert quiet.margins == []  # with early exit the batch shrinks: nothing to follow per example


def test_suite_passes_square_hopeless_after_to_square(model, xy):
    x, y = xy
    x, y = x[:40], y[:40]
    base = {"attacks": ["square"], "eps": 0.05, "queries": 200}
    _, f_full, _ = counted("suite", model, x, y, **base)
    _, f_cut, _ = counted("suite", model, x, y, **base, square_hopeless_after=0.1)
    assert f_cut < 0.8 * f_full


def test_square_examples_are_searched_independently_of_their_batch(model, xy):
    x, y = xy
    whole = run("square", model, x[:20], y[:20], eps=0.1, queries=30)
    again = run("square", model, x[:20], y[:20], eps=0.1, queries=30)
    assert torch.equal(whole, again)  # seeded


# ---- the suite -------------------------------------------------------------------------


def test_suite_keeps_first_success_and_records_who_broke_each_example(model, xy):
    x, y = xy
    params = {"eps": 0.08, "steps": 10, "queries": 50, "target_classes": 3}
    attack = REG.attack("suite", **params)
    out = attack.perturb(model, x, y, BOUNDS)
    ok = fooled(model, out, y)
    by = attack.broken_by
    assert by.shape == (len(x),) and attack.member_names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(ok, by >= 0)  # broken exactly where a member is named (no clean errors here)
    assert bool((by == 0).any()) and int(by.max()) >= 1  # apgd-ce first, later members add
    ce = fooled(model, run("apgd-ce", model, x, y, eps=0.08, steps=10), y)
    assert torch.equal(by == 0, ce)  # same seed, same start: apgd-ce's successes are the suite's first
    assert int(ok.sum()) >= int(ce.sum())


def test_suite_marks_clean_errors_and_does_not_attack_them(model, digits):
    _, _, x, y = digits
    x, y = x[:60], y[:60]
    wrong = y.clone()
    wrong[:5] = (model(x[:5]).argmax(1) + 1) % 10  # labels the model already disagrees with
    attack = REG.attack("suite", eps=0.05, steps=5, queries=10)
    out = attack.perturb(model, x, wrong, BOUNDS)
    assert bool((attack.broken_by[:5] == -2).all()) and torch.equal(out[:5], x[:5])


@pytest.mark.parametrize(
    "field,a,b",
    [
        ("eps", 0.05, 0.1),
        ("attacks", ["apgd-ce"], ["square"]),
        ("steps", 3, 10),
        ("target_classes", 1, 3),
        ("target_selection", "logit", "malt"),
        ("queries", 5, 40),
        ("seed", 0, 1),
    ],
)
def test_suite_config_fields_change_the_result(field, a, b, model, xy):
    x, y = xy
    base = {"eps": 0.05, "steps": 5, "queries": 10, "target_classes": 2}
    if field in ("target_classes", "target_selection"):
        base["attacks"] = ["apgd-t"]
    if field == "queries":
        base["attacks"] = ["square"]
    ra, fa, ba = counted("suite", model, x, y, **{**base, field: a})
    rb, fb, bb = counted("suite", model, x, y, **{**base, field: b})
    assert not torch.equal(ra, rb) or (fa, ba) != (fb, bb), field
    if field == "attacks":
        assert bb == 0 and ba > 0  # square alone is gradient-free


def test_malt_ranks_targets_by_distance_to_the_linearised_boundary():
    """A linear model (z = W x + b) at x = 0, true class 0: class 1 has the smaller logit gap
    (0.5) but a gradient gap of L1 norm 0.2 (distance 2.5), class 2 the larger gap (1.0) over
    a gradient gap of L1 norm 4 (distance 0.25), class 3 gap 2 over norm 1 (distance 2). By
    logit the order is 1, 2, 3; by MALT's distance 2, 3, 1; in L2 the norms are 0.1414, 2.828,
    0.7071 (distances 3.54, 0.354, 2.83): 2, 3, 1."""
    from advx.plugins.attacks._common import target_ranking

    lin = nn.Linear(2, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.1], [2.0, 2.0], [0.5, -0.5]]))
        lin.bias.copy_(torch.tensor([3.0, 2.5, 2.0, 1.0]))
    x, y = torch.zeros(1, 2), torch.tensor([0])
    logits = lin(x)
    assert target_ranking(lin, x, y, logits, 3, "logit", "linf").tolist() == [[1, 2, 3]]
    assert target_ranking(lin, x, y, logits, 3, "malt", "linf").tolist() == [[2, 3, 1]]
    assert target_ranking(lin, x, y, logits, 2, "malt", "l2").tolist() == [[2, 3]]
    assert target_ranking(lin, x, y, logits, 9, "malt", "linf").shape == (1, 3)  # at most C - 1


def test_suite_l2_uses_l2_members(model, xy):
    x, y = xy
    attack = REG.attack("suite-l2", eps=0.8, steps=10, queries=20, target_classes=2)
    out = attack.perturb(model, x, y, BOUNDS)
    assert float((out - x).flatten(1).norm(dim=1).max()) <= 0.8 * (1 + 1e-5)
    assert float(fooled(model, out, y).float().mean()) > 0.3


@pytest.mark.parametrize(
    "name,params,field",
    [
        ("apgd-ce", {"steps": 0}, "steps"),
        ("apgd-dlr", {"rho": 0}, "rho"),
        ("apgd-ce-l2", {"restarts": 0}, "restarts"),
        ("square", {"queries": 0}, "queries"),
        ("square-l2", {"p_init": 2}, "p_init"),
        ("suite", {"attacks": ["fab"]}, "attacks"),
        ("suite", {"attacks": []}, "attacks"),
        ("suite", {"target_selection": "random"}, "target_selection"),
    ],
)
def test_invalid_config_names_the_field(name, params, field):
    with pytest.raises(advx.ConfigError, match=field):
        REG.attack(name, **params)
