"""The kernel's own checks and measurements, and the embedding API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advx
from advx import PassCounter, check_budget, check_model


def test_embedding_example_own_module_own_data():
    """The README's embedding example: a user's module, a user's DataLoader, no plugin written."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    # the user's own model: normalisation inside, logits out
    model = nn.Sequential(advx.Normalize((0.5,), (0.25,)), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.rand(120, 1, 8, 8)
    y = (x.mean((1, 2, 3)) * 30).long() % 3
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    # bim without early exit: every example costs its 10 steps
    reports = advx.evaluate(model, loader, ["fgsm", ("bim", {"eps": 0.05, "alpha": 0.01, "steps": 10, "early_exit": False})], num_classes=3)
    fgsm, bim = reports
    assert fgsm.metrics["n"] == 120 and fgsm.metrics["clean_accuracy"] > 0.5
    assert bim.metrics["max_linf"] <= 0.05 + 1e-6
    assert bim.metrics["forwards_per_sample"] == 10
    assert fgsm.x_adv.shape == x.shape
    assert "fgsm: clean" in str(fgsm)


def test_training_mode_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.5))
    with pytest.raises(advx.ModelCheckError, match="training mode") as exc:
        advx.evaluate(model, (torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)), ["fgsm"])
    assert "\n" not in str(exc.value)


def test_probabilities_are_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softmax(dim=1)).eval()
    with pytest.raises(advx.ModelCheckError, match="probabilities"):
        check_model(model, torch.rand(5, 1, 2, 2))


def test_inputs_outside_bounds_are_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(6, 1, 2, 2) * 3  # a normalised tensor passed where pixels were expected
    with pytest.raises(advx.DataError, match="outside the declared bounds"):
        advx.evaluate(model, (x, torch.zeros(6, dtype=torch.long)), ["fgsm"])


def test_budget_check_catches_each_violation():
    x = torch.rand(4, 1, 3, 3) * 0.5 + 0.25
    ok = x + 0.1
    linf, l2 = check_budget("a", x, ok, "linf", 0.1, (0.0, 1.0))
    assert torch.allclose(linf, torch.full((4,), 0.1), atol=1e-6)
    with pytest.raises(advx.BudgetViolationError, match="exceeded its linf budget"):
        check_budget("a", x, x + 0.11, "linf", 0.1, (0.0, 1.0))
    with pytest.raises(advx.BudgetViolationError, match="exceeded its l2 budget"):
        check_budget("a", x, x + 0.1, "l2", 0.1, (0.0, 1.0))
    with pytest.raises(advx.BudgetViolationError, match="valid input range"):
        check_budget("a", x, x + 0.8, "linf", None, (0.0, 1.0))
    with pytest.raises(advx.BudgetViolationError, match="shape"):
        check_budget("a", x, x[:2], "linf", 0.1, (0.0, 1.0))
    with pytest.raises(advx.BudgetViolationError, match="NaN"):
        check_budget("a", x, x * float("nan"), "linf", 0.1, (0.0, 1.0))


def test_pass_counter_counts_examples_forward_and_backward():
    model = nn.Linear(3, 2)
    counter = PassCounter(model)
    x = torch.rand(5, 3, requires_grad=True)
    out = counter(x)
    torch.autograd.grad(out.sum(), x)
    with torch.no_grad():
        counter(x)
    assert (counter.forwards, counter.backwards) == (10, 5)


def test_kernel_shields_clean_inputs_from_in_place_attacks(digits, digits_cnn):
    class InPlace(advx.Attack):
        name = "in-place"

        class Config(advx.AttackConfig):
            eps: float = 0.1

        def perturb(self, model, x, y, bounds, targeted=False):
            x.add_(self.config.eps).clamp_(*bounds)  # writes into its input
            return x

    _, info, x, y = digits
    before = x.clone()
    (report,) = advx.evaluate(digits_cnn, (x, y), [InPlace()], bounds=info.bounds)
    assert torch.equal(x, before)
    assert report.metrics["max_linf"] == pytest.approx(0.1, abs=1e-6)


def test_label_modes(digits, digits_cnn, registry):
    _, info, x, y = digits
    reports = advx.evaluate(
        digits_cnn,
        (x[:200], y[:200]),
        [("bim", {"label_mode": m, "eps": 0.3, "steps": 20, "alpha": 0.03}) for m in ("true", "predicted", "least-likely", "target=3", "random-target")],
        registry=registry,
        diagnostics=False,  # label modes are pinned here; the diagnostics below
    )
    true, pred, ll, t3, rnd = reports
    assert true.metrics["targeted_success_rate"] is None and pred.metrics["targeted_success_rate"] is None
    assert true.metrics["success_rate"] > 0.9 and pred.metrics["success_rate"] > 0.9
    for r in (ll, t3, rnd):
        assert r.metrics["targeted_success_rate"] > 0.5
    assert (t3.samples["target"] == 3).all()
    assert (rnd.samples["target"] != rnd.samples["label"]).all()
    with torch.no_grad():
        least = digits_cnn(x[:200]).argmin(1)
    assert torch.equal(ll.samples["target"], least)


def test_target_out_of_range(digits, digits_cnn):
    _, _, x, y = digits
    with pytest.raises(advx.ConfigError, match="target=12"):
        advx.evaluate(digits_cnn, (x[:8], y[:8]), [("fgsm", {"label_mode": "target=12"})])


# -- the models users bring (issue 29) -------------------------------------------------------------

REG = advx.Registry.discover()

#: settings that keep every built-in attack to a few passes on 6 tiny images
QUICK = {
    "bim": {"steps": 3}, "pgd": {"steps": 3}, "pgd-l2": {"steps": 3}, "iterative-l2": {"steps": 3},
    "deepfool": {"steps": 5}, "cw-l2": {"steps": 5, "binary_search_steps": 2, "initial_const": 10.0, "lr": 0.1},
    "apgd-ce": {"steps": 4}, "apgd-ce-l2": {"steps": 4}, "apgd-dlr": {"steps": 4}, "apgd-dlr-l2": {"steps": 4},
    "fab": {"steps": 4}, "fab-l2": {"steps": 4}, "square": {"queries": 10}, "square-l2": {"queries": 10},
    "suite": {"steps": 3, "queries": 10, "target_classes": 2}, "suite-l2": {"steps": 3, "queries": 10, "target_classes": 2},
}


class Grey(nn.Module):
    """An RGB model whose first step is a reduction to grey: its input gradient is a broadcast
    (stride-0) tensor, which no in-place step may write into."""

    def __init__(self, classes=5):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(25, 16), nn.Tanh(), nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x.sum(1, keepdim=True) / 3)


def _images(n=6, c=3, h=5, w=5, classes=5):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, h, w, generator=g), torch.arange(n) % classes


def test_input_gradient_is_owned_by_the_caller():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    (raw,) = torch.autograd.grad((x.sum(1, keepdim=True) / 3).square().sum(), x)
    assert 0 in raw.stride()  # what autograd hands over: one element per channel, shared
    with pytest.raises(RuntimeError, match="single memory location"):
        raw.sign_()
    g = advx.input_gradient((x.sum(1, keepdim=True) / 3).square().sum(), x)
    assert 0 not in g.stride() and torch.equal(g.sign_(), raw.sign())


@pytest.mark.parametrize("kind", ["reduction-first", "float64"])
@pytest.mark.parametrize("name", REG.names("attack"))
def test_every_attack_runs_on_the_models_users_bring(name, kind):
    """Issue 29, items 1 and 3: every registered attack, through evaluate, on an RGB-to-grey model
    (a stride-0 input gradient) and on a float64 model (evaluated in float64)."""
    torch.manual_seed(0)
    model = Grey().eval()
    if kind == "float64":
        model = nn.Sequential(nn.Flatten(), nn.Linear(75, 16), nn.Tanh(), nn.Linear(16, 5)).double().eval()
    x, _ = _images()
    with torch.no_grad():
        y = model(x.to(torch.float64) if kind == "float64" else x).argmax(1)  # clean-correct: each can be broken
    (report,) = advx.evaluate(model, (x, y), [(name, QUICK.get(name, {}))], registry=REG)
    assert report.metrics["n"] == 6
    assert report.x_adv.dtype == (torch.float64 if kind == "float64" else torch.float32)
    assert report.metrics["success_rate"] > 0  # it attacked: random small networks are easy to fool


def test_a_model_that_cannot_be_attacked_is_refused_in_one_line():
    """Issue 29, item 2: refused before any attack runs, never scored."""
    x, y = _images(c=1)
    ran = []

    class Spy(advx.Attack):
        name = "spy"

        class Config(advx.AttackConfig):
            eps: float = 0.1

        def perturb(self, model, x, y, bounds, targeted=False):
            ran.append(len(x))
            return x

    def refused(model, attacks, error, match, labels=y, classes=None):
        with pytest.raises(error, match=match) as exc:
            advx.evaluate(model, (x, labels), [Spy(), *attacks], num_classes=classes, registry=REG)
        assert "\n" not in str(exc.value) and not ran

    # a single logit: cross-entropy over one class is zero, every loss attack would "fail"
    one = nn.Sequential(nn.Flatten(), nn.Linear(25, 1)).eval()
    for name in ("fgsm", "cw-l2", "apgd-ce", "deepfool", "fab"):
        refused(one, [(name, QUICK.get(name, {}))], advx.ModelCheckError, "1 logit per example", labels=torch.zeros(6, dtype=torch.long))

    # logits that do not depend on the input: no gradient path for a gradient attack
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.randn(5))

        def forward(self, x):
            return self.bias.expand(len(x), 5) * 1.0

    for name in ("fgsm", "pgd", "deepfool", "cw-l2", "apgd-ce", "fab", "suite"):
        refused(Constant().eval(), [(name, QUICK.get(name, {}))], advx.ModelCheckError, "no gradient path")
    (square,) = advx.evaluate(Constant().eval(), (x, y), [("square", {"queries": 5})], registry=REG)  # needs no gradient
    assert square.metrics["robust_accuracy"] == square.metrics["clean_accuracy"]

    # labels that are not classes of the model
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 10)).eval()
    for bad in (10, -1):
        labels = y.clone()
        labels[2] = bad
        refused(model, ["fgsm"], advx.DataError, rf"labels range over \[{min(bad, 0)}, {max(bad, 4)}\].*10 classes", labels=labels)
    refused(model, ["fgsm"], advx.DataError, "integer class indices", labels=y + 0.5)

    # an attack that needs more classes than the model has
    two = nn.Sequential(nn.Flatten(), nn.Linear(25, 2)).eval()
    refused(two, [("apgd-dlr", {"steps": 2})], advx.ConfigError, 'attack "apgd-dlr" needs at least 3 classes', labels=y % 2)
    refused(two, [("apgd-ce", {"steps": 2}), "suite"], advx.ConfigError, 'attack "suite" needs at least 4 classes', labels=y % 2)
    three = nn.Sequential(nn.Flatten(), nn.Linear(25, 3)).eval()
    refused(three, [("apgd-dlr", {"label_mode": "random-target"})], advx.ConfigError, "at least 4 classes", labels=y % 3)
    assert REG.get("attack", "apgd-dlr").min_classes(REG.attack("apgd-dlr").config) == 3
    assert REG.get("attack", "suite").min_classes(REG.attack("suite", attacks=["apgd-ce", "square"]).config) == 2


def test_unattackable_combinations_are_refused_in_a_matrix(tmp_path):
    """The same checks in a matrix: a class count the attack cannot use is refused when the spec
    is planned; a model without a gradient path fails its gradient cells in one line."""
    spec = {
        "matrix": {"samples": 20, "batch_size": 20, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "synthetic", "num_classes": 2, "shape": [1, 4, 4]}],
        "models": [{"name": "mlp", "train": {"epochs": 1}}],
        "attacks": [{"name": "fgsm"}, {"name": "apgd-dlr", "label_mode": ["true", "random-target"]}],
    }
    with pytest.raises(advx.ConfigError) as exc:
        advx.plan(advx.MatrixSpec.from_dict(spec), REG)
    msg = str(exc.value)
    assert 'attack "apgd-dlr(label_mode=true)" needs at least 3 classes' in msg and "has 2" in msg
    assert 'attack "apgd-dlr(label_mode=random-target)" needs at least 4 classes' in msg and "\n" not in msg

    class Detach(advx.Defense):
        """Classifies a detached copy of its input (no gradient path)."""

        name = "detach"

        def apply(self, model, ctx):
            class Wrapped(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.model = model

                def forward(self, x):
                    return self.model(x.detach())

            return Wrapped().eval()

    reg = advx.Registry.discover()
    reg.add("defense", Detach, package="tests")
    spec = {**spec, "datasets": [{"name": "synthetic", "num_classes": 3, "shape": [1, 4, 4]}], "defenses": [{"name": "detach"}],
            "attacks": [{"name": "fgsm"}, {"name": "square", "queries": 5}]}
    res = advx.run_matrix(spec, registry=reg)
    fgsm, square = sorted(res.rows, key=lambda r: r["attack"])
    assert fgsm["status"] == "failed" and "no gradient path" in fgsm["error"] and "\n" not in fgsm["error"]
    assert square["status"] == "done"


def test_the_users_model_is_evaluated_as_it_is():
    """Issue 29, item 3: a float64 model in float64 (the same numbers as its float32 twin); a
    model returning a tuple gets the model check's one line, not an AttributeError."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    twin = nn.Sequential(nn.Flatten(), nn.Linear(25, 16), nn.Tanh(), nn.Linear(16, 5)).double().eval()
    twin.load_state_dict(net.state_dict())
    x, y = _images(n=40, c=1)
    bim = ("bim", {"eps": 0.1, "alpha": 0.02, "steps": 5})
    (a,) = advx.evaluate(net, (x, y), [bim])
    (b,) = advx.evaluate(twin, (x, y), [bim])
    assert b.x_adv.dtype == torch.float64 and a.x_adv.dtype == torch.float32
    assert torch.allclose(a.x_adv.double(), b.x_adv, atol=1e-5)
    assert b.metrics["robust_accuracy"] == a.metrics["robust_accuracy"]

    class Pair(nn.Module):
        def forward(self, x):
            return net(x), x.mean()

    with pytest.raises(advx.ModelCheckError, match="got a tuple: return the logits tensor") as exc:
        advx.evaluate(Pair().eval(), (x, y), ["fgsm"])
    assert "\n" not in str(exc.value)


def test_evaluate_reports_diagnostics_and_flags():
    """Issue 29, item 4: logits scaled by 1e4 leave cross-entropy a gradient of exactly zero, so
    robust accuracy equals clean accuracy; evaluate measures it and says so, as a matrix does."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 16), nn.Tanh(), nn.Linear(16, 5)).eval()

    class Scaled(nn.Module):
        def forward(self, x):
            return net(x) * 1e4

    x, _ = _images(n=100, c=1)
    with torch.no_grad():
        top = net(x).topk(2, dim=1)
    # clean-correct examples whose two best logits are 0.02 apart, 200 after scaling: softmax is
    # exactly one-hot in float32 and the cross-entropy gradient exactly zero
    keep = top.values[:, 0] - top.values[:, 1] > 0.02
    x, y = x[keep], top.indices[keep, 0]
    assert len(x) >= 20
    attacks = ["fgsm", ("bim", {"eps": 0.3, "alpha": 0.1, "steps": 5})]
    scaled = advx.evaluate(Scaled().eval(), (x, y), attacks)
    for r in scaled:
        assert r.metrics["robust_accuracy"] == r.metrics["clean_accuracy"] == 1.0
        assert r.diagnostics["gradients"]["zero_share"] == 1.0
        assert [f.check for f in r.flags] == ["zero-gradients"] and "[zero-gradients]" in str(r)
    assert scaled[1].diagnostics["convergence"]["steps"] == 5
    plain = advx.evaluate(net, (x, y), attacks)
    assert all(r.flags == [] and r.diagnostics["gradients"]["zero_share"] == 0.0 for r in plain)
    (off,) = advx.evaluate(Scaled().eval(), (x, y), ["fgsm"], diagnostics=False)
    assert off.diagnostics is None and off.flags == []
    # flags comparing attacks run over every attack of the call: BIM with a step too small to
    # move is weaker than the single FGSM step it iterates, at the same eps
    weaker = advx.evaluate(net, (x, y), [("fgsm", {"eps": 0.3}), ("bim", {"eps": 0.3, "alpha": 0.001, "steps": 1})])
    assert ["iterative-weaker"] == [f.check for f in weaker[0].flags] == [f.check for f in weaker[1].flags]


def test_a_matrix_cell_and_evaluate_are_one_pipeline(tmp_path, registry):
    """Issue 22, item 4: the same model, examples and attack give the same numbers, the same
    per-example outcomes and the same diagnostics in a matrix cell and through evaluate."""
    cache = tmp_path / "c"
    spec = {
        "matrix": {"samples": 60, "batch_size": 30, "cache_dir": str(cache), "seed": 4},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 3}}],
        "attacks": [{"name": "pgd", "eps": 0.1, "alpha": 0.02, "steps": 5}],
    }
    advx.run_matrix(spec, store=tmp_path / "r.db")
    ds = registry.dataset("digits")
    trained = advx.train_model(ds, registry.model("mlp"), {"epochs": 3}, cache=str(cache))
    assert trained.cached  # the matrix's own network
    x, y = advx.take(ds.load("test"), 60)
    (report,) = advx.evaluate(trained.model.eval(), (x, y), [("pgd", {"eps": 0.1, "alpha": 0.02, "steps": 5})], batch_size=30, seed=4)
    with advx.ResultStore(tmp_path / "r.db") as store:
        (row,) = store.cells()
        cell = store.samples(row["cell_key"])
    for k in ("clean_accuracy", "robust_accuracy", "success_rate", "mean_linf", "mean_l2", "forwards_per_sample", "backwards_per_sample"):
        assert row[k] == pytest.approx(report.metrics[k], abs=1e-6), k
    assert torch.equal(cell["adv_pred"], report.samples["adv_pred"])
    assert row["details"]["diagnostics"] == report.diagnostics


def test_evaluate_picks_the_logits_of_a_model_that_returns_a_dict(digits_cnn, digits):
    """``output`` is the same adapter the model plugins use: a dict's key, a tuple's index."""
    _, info, x, y = digits

    class AsDict(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"logits": self.net(x), "features": x.flatten(1)}

    class AsTuple(AsDict):
        def forward(self, x):
            return (x.flatten(1), self.net(x))

    plain = advx.evaluate(digits_cnn, (x[:40], y[:40]), [("fgsm", {"eps": 0.1})], diagnostics=False)[0]
    wrapped = advx.evaluate(AsDict(digits_cnn).eval(), (x[:40], y[:40]), [("fgsm", {"eps": 0.1})], diagnostics=False, output="logits")[0]
    indexed = advx.evaluate(AsTuple(digits_cnn).eval(), (x[:40], y[:40]), [("fgsm", {"eps": 0.1})], diagnostics=False, output=1)[0]
    assert wrapped.metrics["robust_accuracy"] == plain.metrics["robust_accuracy"] == indexed.metrics["robust_accuracy"]
    with pytest.raises(advx.AdvxError, match="'logits', 'features'"):
        advx.evaluate(AsDict(digits_cnn).eval(), (x[:40], y[:40]), ["fgsm"], output="scores")
