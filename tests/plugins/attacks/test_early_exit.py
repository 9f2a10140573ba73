"""Early exit per example (issue 24, item 1).

Where the attacked module is the scored one and deterministic, an example leaves the
active batch of an iterative attack once it is broken: the same examples are broken
(identical sets, same seeds) and the kernel counts fewer passes. Not on a stand-in
(``Attack.surrogate``: the strongest point is wanted), not on a module with declared
random parts (``Attack.random_view``: a success may be one draw's), and not with
``early_exit = false``: there every example runs the whole schedule, and costs exactly
what it did before early exit existed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advx
from advx import InputTransform
from advx.runtime.crafting import CraftOptions, craft

REG = advx.Registry.discover()

# Small settings where some examples break early and some survive the whole schedule.
ATTACKS = [
    ("bim", {"eps": 0.1, "alpha": 0.02, "steps": 10}),
    ("pgd", {"eps": 0.1, "alpha": 0.02, "steps": 10, "restarts": 2}),
    ("pgd-l2", {"eps": 0.8, "steps": 10}),
    ("iterative-l2", {"eps": 0.8}),
    ("apgd-ce", {"eps": 0.1, "steps": 10, "restarts": 2}),
    ("apgd-ce-l2", {"eps": 0.7, "steps": 10}),
    ("apgd-dlr", {"eps": 0.1, "steps": 10}),
    ("apgd-dlr-l2", {"eps": 0.7, "steps": 10}),
    ("fab", {"eps": 0.1, "steps": 10, "restarts": 2}),
    ("fab-l2", {"eps": 0.7, "steps": 10, "target_classes": 2}),
    ("square", {"eps": 0.1, "queries": 40}),
    ("square-l2", {"eps": 0.7, "queries": 40}),
    ("suite", {"eps": 0.1, "steps": 5, "queries": 20, "target_classes": 2}),
    ("suite-l2", {"eps": 0.7, "steps": 5, "queries": 20, "target_classes": 2}),
]
IDS = [n for n, _ in ATTACKS]


@pytest.fixture(scope="module")
def setup(digits, digits_cnn):
    _, info, x, y = digits
    return digits_cnn.eval(), info, x[:100], y[:100]


def crafted(module, info, name, params, x, y, early_exit, surrogate=False):
    attack = REG.attack(name, **params, early_exit=early_exit)
    out = craft(module, attack, x, y, CraftOptions(info.bounds, 10, "cpu", 64, 3, surrogate=surrogate))
    assert not attack.surrogate and not attack.random_view  # the kernel's flags last one call
    return out


def broken(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def test_every_iterative_attack_has_the_switch():
    """The switch is on every iterative built-in attack whose loop can stop an example early,
    on by default; the list above covers them all."""
    builtin = [e for e in REG.entries("attack") if e.package == "advx"]
    have = {e.name for e in builtin if "early_exit" in e.cls.Config.model_fields}
    assert have == set(IDS)
    assert all(REG.attack(n).config.early_exit for n in IDS)


@pytest.mark.parametrize("name,params", ATTACKS, ids=IDS)
def test_early_exit_breaks_the_same_examples_for_fewer_passes(setup, name, params):
    model, info, x, y = setup
    on = crafted(model, info, name, params, x, y, True)
    off = crafted(model, info, name, params, x, y, False)
    hit_on, hit_off = broken(model, on.x_adv, y), broken(model, off.x_adv, y)
    assert 0 < int(hit_off.sum()) < len(x)
    assert torch.equal(hit_on, hit_off)
    assert on.cost.forwards < off.cost.forwards
    gradient = "gradients" in REG.get("attack", name).requires
    assert on.cost.backwards < off.cost.backwards if gradient else on.cost.backwards == off.cost.backwards == 0


@pytest.mark.parametrize("name,params", ATTACKS, ids=IDS)
def test_no_early_exit_on_a_stand_in(setup, name, params):
    """Under a surrogate threat model the switch changes nothing: the whole schedule runs."""
    model, info, x, y = setup
    on = crafted(model, info, name, params, x, y, True, surrogate=True)
    off = crafted(model, info, name, params, x, y, False, surrogate=True)
    assert (on.cost.forwards, on.cost.backwards) == (off.cost.forwards, off.cost.backwards)
    assert torch.equal(on.x_adv, off.x_adv)


class DeclaredRandom(InputTransform):
    """Declares a random forward (its draws are not shown to the attack); here the identity, so
    that a run with and a run without the switch are comparable."""

    randomized = True

    def transform(self, x):
        return x


@pytest.mark.parametrize("name,params", [ATTACKS[1], ATTACKS[4], ATTACKS[8], ATTACKS[10]], ids=["pgd", "apgd-ce", "fab", "square"])
def test_no_early_exit_on_a_module_with_random_parts(setup, name, params):
    """A random defense (or EOT's average over its draws) can show a success its next draw does
    not: the kernel says so (``random_view``) and the attack runs every example to the end."""
    model, info, x, y = setup
    module = nn.Sequential(DeclaredRandom(), model).eval()
    on = crafted(module, info, name, params, x, y, True)
    off = crafted(module, info, name, params, x, y, False)
    assert (on.cost.forwards, on.cost.backwards) == (off.cost.forwards, off.cost.backwards)


def test_exits_early_is_the_switch_and_the_kernels_view():
    attack = REG.attack("pgd")
    assert attack.exits_early
    attack.surrogate = True
    assert not attack.exits_early
    attack.surrogate, attack.random_view = False, True
    assert not attack.exits_early
    assert not REG.attack("pgd", early_exit=False).exits_early
    assert not REG.attack("fgsm").exits_early  # no switch: a single step has nothing to leave


def test_early_exit_returns_the_point_that_broke_the_example(setup):
    """BIM with early exit returns each broken example at the first iterate its forward showed
    adversarial: one more step of the schedule would not have been taken for it."""
    model, info, x, y = setup
    params = {"eps": 0.1, "alpha": 0.02}
    # iterate k of the schedule: BIM with k steps returning its final iterate (on a "stand-in")
    at = {0: x, **{k: crafted(model, info, "bim", {**params, "steps": k}, x, y, False, surrogate=True).x_adv for k in range(1, 6)}}
    early = crafted(model, info, "bim", {**params, "steps": 5}, x, y, True).x_adv
    # iterates 0..4 are evaluated (iterate 5 is returned, not evaluated): an example first
    # broken at iterate k comes back at iterate k; one never broken there, at iterate 5
    first = torch.full((len(x),), 5)
    for k in range(4, -1, -1):
        first[broken(model, at[k], y)] = k
    assert len(set(first.tolist())) >= 3  # examples leave at several different steps
    for k in range(6):
        assert torch.equal(early[first == k], at[k][first == k]), k
