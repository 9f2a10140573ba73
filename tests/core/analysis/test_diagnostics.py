"""The sanity checks a cell measures while it runs, EOT, and the flags read from results alone."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advx
from advx import Attack, AttackConfig, Defense
from advx.analysis.checks import run_checks
from advx.contract.threats import EOTView
from advx.runtime.crafting import CraftOptions, craft


class Shift(advx.InputTransform):
    """Adds one of a fixed cycle of small offsets per call: random-looking, reproducible."""

    randomized = True

    def __init__(self):
        super().__init__()
        self.calls = 0

    def transform(self, x):
        self.calls += 1
        return (x + 0.01 * ((self.calls % 3) - 1)).clamp(0, 1)


class HiddenNoise(nn.Module):
    """A random forward pass that does not declare itself."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


class Rounded(nn.Module):
    """Rounds its input, undeclared: zero gradients everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x * 4).round() / 4)


def _defense(name, wrap):
    return type(name.title().replace("-", ""), (Defense,), {"__doc__": f"{name} (test)", "name": name, "apply": lambda self, model, ctx: wrap(model).eval()})


class Forgetful(Attack):
    """Finds an FGSM example, then returns the clean input (a silent success on every fooled example)."""

    name: ClassVar[str] = "forgetful"
    iterative: ClassVar[bool] = True

    class Config(AttackConfig):
        eps: float = 0.3
        steps: int = 1

    def perturb(self, model, x, y, bounds, targeted=False):
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
        model((x + self.config.eps * g.sign()).clamp(*bounds))
        return x.clone()


@pytest.fixture(scope="module")
def reg():
    r = advx.Registry.discover()
    r.add("defense", _defense("shifted", lambda m: nn.Sequential(Shift(), m)), package="tests")
    r.add("defense", _defense("hidden-noise", HiddenNoise), package="tests")
    r.add("defense", _defense("rounded", Rounded), package="tests")
    r.add("attack", Forgetful, package="tests")
    return r


def run(tmp_path, reg, defenses, attacks, threats=None):
    spec = {
        "matrix": {"name": "diag", "samples": 64, "batch_size": 64, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 3}}],
        "defenses": defenses,
        "threats": threats or [{"name": "white-box"}],
        "attacks": attacks,
    }
    res = advx.run_matrix(spec, registry=reg)
    assert res.failed == 0, [r.get("error") for r in res.rows]
    return res.rows


def checks(rows, name):
    return [f for f in run_checks(rows) if f.check == name]


def test_eot_is_the_default_for_declared_randomness_and_flags_hidden_randomness(tmp_path, reg):
    rows = run(tmp_path, reg, [{"name": "shifted"}, {"name": "hidden-noise"}, {"name": "none"}], [{"name": "fgsm", "eps": 0.1}])
    by = {r["defense"]: r["details"]["diagnostics"] for r in rows}
    assert by["shifted"]["eot"] == 10 and by["shifted"]["random_forward"]
    assert by["hidden-noise"]["eot"] == 1 and by["hidden-noise"]["random_forward"]
    assert by["none"]["eot"] == 1 and not by["none"]["random_forward"]
    flagged = checks(rows, "random-forward-without-eot")
    assert len(flagged) == 1 and "hidden-noise" in flagged[0].message
    # eot set on the threat model silences it
    rows = run(tmp_path, reg, [{"name": "hidden-noise"}], [{"name": "fgsm", "eps": 0.1}], threats=[{"name": "white-box", "eot": 4}])
    assert rows[0]["details"]["diagnostics"]["eot"] == 4 and not checks(rows, "random-forward-without-eot")
    assert rows[0]["threat"] == "white-box(eot=4)"
    # the cost columns count every EOT draw: FGSM is one pass per example and draw
    assert rows[0]["forwards_per_sample"] == 4.0 and rows[0]["backwards_per_sample"] == 4.0


def test_the_pass_counter_counts_every_eot_draw():
    """FGSM through an EOT view of 10 draws: 10 forward and 10 backward passes per example,
    exactly the passes the defended module made (and 1 of each without EOT)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    shift = Shift()
    module = nn.Sequential(shift, net).eval()
    x, y = torch.rand(6, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    fgsm = advx.Registry.discover().create("attack", "fgsm", {"eps": 0.1})
    for view, draws in ((EOTView(module, 10).eval(), 10), (module, 1)):
        calls = shift.calls
        crafted = craft(view, fgsm, x, y, CraftOptions((0.0, 1.0), 3, "cpu", 3))
        assert shift.calls - calls == 2 * draws  # two batches of 3
        assert crafted.cost.forwards == crafted.cost.backwards == 6 * draws


def test_eot_view_gradient_is_the_mean_of_the_draws_loss_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y = torch.rand(5, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1])
    module = nn.Sequential(Shift(), net).eval()
    view = EOTView(module, 3)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(view(xg), y, reduction="sum"), xg)
    expected = 0
    for _ in range(3):  # the same three offsets the view drew
        xe = x.clone().requires_grad_(True)
        (ge,) = torch.autograd.grad(F.cross_entropy(module(xe), y, reduction="sum"), xe)
        expected = expected + ge / 3
    torch.testing.assert_close(g, expected, atol=1e-6, rtol=1e-5)


def test_zero_gradients_flag(tmp_path, reg):
    rows = run(tmp_path, reg, [{"name": "rounded"}, {"name": "none"}], [{"name": "fgsm", "eps": 0.1}])
    by = {r["defense"]: r["details"]["diagnostics"]["gradients"] for r in rows}
    assert by["rounded"]["zero_share"] == 1.0 and by["none"]["zero_share"] == 0.0
    flagged = checks(rows, "zero-gradients")
    assert len(flagged) == 1 and "rounded" in flagged[0].message


def test_silent_success_and_not_converged_flags(tmp_path, reg):
    rows = run(
        tmp_path, reg, [{"name": "none"}],
        [{"name": "forgetful"}, {"name": "bim", "eps": 0.3, "alpha": 0.02, "steps": 5, "early_exit": False}, {"name": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 10}],
    )
    by = {r["attack"].split("(")[0]: r for r in rows}
    assert by["forgetful"]["details"]["diagnostics"]["silent_success"] > 10
    assert [f.message.split(" / ")[-1].split(":")[0] for f in checks(rows, "silent-success")] == ["forgetful"]
    conv = by["bim"]["details"]["diagnostics"]["convergence"]
    assert conv["steps"] == 5 and conv["success_doubled"] > conv["success"]
    assert any("bim" in f.message for f in checks(rows, "not-converged"))
    assert not any("pgd" in f.message for f in checks(rows, "not-converged"))
    # the probes are neither timed nor counted as the attack's passes (5 steps on every example:
    # no early exit)
    assert by["bim"]["forwards_per_sample"] == 5.0 and by["bim"]["backwards_per_sample"] == 5.0


def _row(attack, acc, eps, requires, threat="white-box", n=500, key=None):
    return advx.CellRow.from_flat({
        "status": "done", "dataset": "d", "model": "m", "defense": "none", "threat": threat, "attack": attack,
        "cell_key": key or attack, "n": n, "robust_accuracy": acc,
        "attack_config": {"name": attack, "eps": eps}, "attack_traits": {"norm": "linf", "requires": requires},
        "threat_config": {"name": threat}, "threat_traits": advx.Registry.discover().get("threat", threat).traits(),
    })


def test_unbounded_and_gradient_free_flags_from_results():
    rows = [_row("deepfool", 0.2, None, ["gradients"]), _row("cw-l2", 0.01, None, ["gradients"])]
    flagged = checks(rows, "unbounded-not-zero")
    assert len(flagged) == 1 and "deepfool" in flagged[0].message
    # a transfer attacker is not expected to reach zero
    assert not checks([_row("deepfool", 0.5, None, ["gradients"], threat="transfer")], "unbounded-not-zero")
    rows = [_row("square", 0.30, 0.1, []), _row("pgd", 0.50, 0.1, ["gradients"]), _row("pgd", 0.10, 0.2, ["gradients"], key="p2")]
    flagged = checks(rows, "gradient-free-stronger")
    assert len(flagged) == 1 and "square" in flagged[0].message and "eps=0.1" in flagged[0].message
    # per example: equal accuracy, but the gradient-free attack breaks examples the gradient one left alone
    rows = [_row("square", 0.5, 0.1, []), _row("pgd", 0.5, 0.1, ["gradients"])]
    label = torch.zeros(100, dtype=torch.long)
    recs = {
        "square": {"idx": torch.arange(100), "label": label, "adv_pred": torch.cat([torch.ones(50), torch.zeros(50)]).long()},
        "pgd": {"idx": torch.arange(100), "label": label, "adv_pred": torch.cat([torch.zeros(50), torch.ones(50)]).long()},
    }
    assert not [f for f in run_checks(rows) if f.check == "gradient-free-stronger"]
    flagged = [f for f in run_checks(rows, recs.__getitem__) if f.check == "gradient-free-stronger"]
    assert len(flagged) == 1 and "breaks 50 examples" in flagged[0].message


class Quantise(advx.InputTransform):
    """Rounds to 4 grey levels, declared non-differentiable."""

    differentiable = False

    def transform(self, x):
        return (x * 4).round() / 4


def test_gradient_health_is_measured_through_bpda(tmp_path):
    """A declared non-differentiable transform attacked with BPDA has gradients: no zero-gradients flag."""
    r = advx.Registry.discover()
    r.add("defense", _defense("quantised", lambda m: nn.Sequential(Quantise(), m)), package="tests")
    rows = run(tmp_path, r, [{"name": "quantised"}], [{"name": "fgsm", "eps": 0.1}])
    assert rows[0]["details"]["diagnostics"]["gradients"]["zero_share"] == 0.0
    assert not checks(rows, "zero-gradients")


class RecordsStarts(Forgetful):
    """An 'iterative' attack (Forgetful's config) that returns its per-example random start."""

    name: ClassVar[str] = "records-starts"

    def perturb(self, model, x, y, bounds, targeted=False):
        u = self.noise(x).uniform(x.shape[1:], "start", dtype=x.dtype)
        return (x + self.config.eps * (2 * u - 1)).clamp(*bounds)


def test_convergence_probe_reruns_the_examples_from_their_own_starts(digits, monkeypatch):
    """The doubled-steps rerun keys each example by its dataset index, as the run did: it
    differs from the run only by its steps, not by other random starts."""
    import advx.analysis.diagnostics as diagnostics
    from advx.runtime.crafting import CraftOptions, craft

    _, info, x, y = digits
    x, y, index = x[:8], y[:8], torch.arange(100, 108)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    options = CraftOptions(info.bounds, 10, "cpu", 4, 0)
    attack = RecordsStarts(RecordsStarts.validate_config({}))
    run = craft(model, attack, x, y, options, index)
    seen = []
    monkeypatch.setattr(diagnostics, "craft", lambda *a, **k: seen.append(craft(*a, **k)) or seen[-1])
    diagnostics.convergence(attack, model, x, y, run.x_adv, run.target, options, run.index)
    assert torch.equal(seen[0].x_adv, run.x_adv)  # the same starts
    assert not torch.equal(craft(model, attack, x, y, options).x_adv, run.x_adv)  # indices 0..7 draw others


class CosineOfMean(nn.Module):
    """Two classes: 0 always scores 0, 1 scores ``3 cos(8 t)`` (t the mean pixel). At t = 0.3125
    class 0 wins (a wrong answer for label 1), and the loss gradient points up: FGSM's step of
    0.5 lands at t = 0.8125, where class 1 wins. A single step that turns a wrong answer right."""

    def forward(self, x):
        t = x.flatten(1).mean(1)
        return torch.stack([torch.zeros_like(t), 3 * torch.cos(8 * t)], 1)


def test_a_single_step_that_turns_a_wrong_answer_right_is_no_silent_success():
    """FGSM's one forward is at the clean input: an example that input already fools is not one
    the attack found and lost (the MNIST / i-defender / detector-aware FGSM cell that raised the
    flag had one such example). An attack that does lose what it found is still counted."""
    model = CosineOfMean().eval()
    x, y = torch.full((4, 1, 2, 2), 0.3125), torch.ones(4, dtype=torch.long)
    assert bool((model(x).argmax(1) != y).all())  # wrong on the clean input
    fgsm = advx.Registry.discover().create("attack", "fgsm", {"eps": 0.5})
    crafted = craft(model, fgsm, x, y, CraftOptions((0.0, 1.0), 2, "cpu", 4, check_silent=True))
    assert bool((model(crafted.x_adv).argmax(1) == y).all())  # right after the attack
    assert crafted.silent_success == 0
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():  # class 0 scores sum(x) - 2, class 1 scores 0
        net[1].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]))
        net[1].bias.copy_(torch.tensor([-2.0, 0.0]))
    forgetful = Forgetful(Forgetful.Config(eps=0.3))
    x0, y0 = torch.full((3, 1, 2, 2), 0.55), torch.zeros(3, dtype=torch.long)  # right: 0.2 against 0
    crafted = craft(net, forgetful, x0, y0, CraftOptions((0.0, 1.0), 2, "cpu", 3, check_silent=True))
    assert crafted.silent_success == 3  # right on the clean input, fooled at its step, returned clean

