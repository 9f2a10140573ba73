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
    reports = advx.evaluate(model, loader, ["fgsm", ("bim", {"eps": 0.05, "alpha": 0.01, "steps": 10})], num_classes=3)
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
