"""I-defender (seed 004): torch scoring equals scikit-learn's, thresholds keep what they say,
every config field changes what is fitted, fitting is cached, and the detector-aware
attacker of eq. 6 evades it more often than the plain attacker at the same eps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from torch import nn

import advx
from advx.plugins.defenses import i_defender
from advx.plugins.defenses.i_defender import IDefenderModule, gmm_log_prob

COV_TYPES = ["full", "diag", "tied", "spherical"]




@pytest.fixture(scope="module")
def ctx_factory(registry, digits, tmp_path_factory):
    ds = digits[0]
    model_plugin = registry.model("mnist-cnn")
    cache = str(tmp_path_factory.mktemp("advx-cache"))

    def make(cache_dir=cache):
        return advx.DefenseContext(
            dataset=ds,
            model=model_plugin,
            train_config=advx.TrainConfig(epochs=30, seed=0),
            device=torch.device("cpu"),
            registry=registry,
            cache_dir=cache_dir,
        )

    return make


def defend(registry, model, ctx, **params) -> IDefenderModule:
    params.setdefault("n_components", 1)
    params.setdefault("covariance_type", "diag")
    return registry.create("defense", "i-defender", params).apply(model, ctx)


@pytest.fixture(scope="module")
def train_xy(ctx_factory):
    return advx.take(ctx_factory().train_data, 10_000)


# -- scoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cov", COV_TYPES)
def test_torch_scoring_equals_sklearn_score_samples(cov):
    rng = np.random.default_rng(0)
    h = np.concatenate([rng.normal(0, 1, (150, 6)), rng.normal(3, 0.5, (150, 6))])
    test = rng.normal(1, 2, (40, 6))
    gms = [GaussianMixture(3, covariance_type=cov, random_state=c).fit(h + c) for c in range(2)]
    mix = i_defender.fit_mixtures(np.concatenate([h, h + 1]), np.repeat([0, 1], len(h)), 2, 3, cov, 1e-6, 100, 0)
    ours = gmm_log_prob(torch.from_numpy(test), **mix, cov=cov)
    for c in range(2):
        gm = GaussianMixture(3, covariance_type=cov, random_state=0, reg_covar=1e-6).fit(h + c)
        np.testing.assert_allclose(ours[:, c].numpy(), gm.score_samples(test), atol=1e-4, rtol=0)
    assert gms  # the per-class fits above are independent of each other


def test_module_scores_equal_sklearn_on_the_models_hidden_states(registry, digits_cnn, ctx_factory, train_xy):
    det = defend(registry, digits_cnn, ctx_factory(), n_components=2, covariance_type="full", layer="fc1", reg_covar=1e-3)
    x, y = train_xy
    with torch.no_grad():
        h = digits_cnn.hidden_states(x)["fc1"].double().numpy()
        ll = det.class_log_likelihood(x[:64]).numpy()
    for c in (0, 7):
        gm = GaussianMixture(2, covariance_type="full", reg_covar=1e-3, random_state=0).fit(h[y.numpy() == c])
        np.testing.assert_allclose(ll[:, c], gm.score_samples(h[:64]), atol=1e-4, rtol=0)


# -- thresholds (operating points) -------------------------------------------------------------


@pytest.mark.parametrize("keep", [95.0, 99.0])
def test_operating_point_keeps_that_share_of_natural_training_data(registry, digits_cnn, ctx_factory, train_xy, keep):
    det = defend(registry, digits_cnn, ctx_factory(), keep=keep)
    x, y = train_xy
    with torch.no_grad():
        ll = det.class_log_likelihood(x).gather(1, y[:, None])[:, 0]
        for c in range(10):
            kept = (ll[y == c] >= det.thresholds[c]).double().mean().item()
            assert abs(kept - keep / 100) <= 0.01, (c, kept)
        # the rule the kernel applies (score of the predicted class > 0) rejects about the rest
        rejected = det.rejects(x).double().mean().item()
    assert abs(rejected - (1 - keep / 100)) <= 0.01


def test_score_is_threshold_minus_loglik_of_predicted_class(registry, digits_cnn, ctx_factory, digits):
    det = defend(registry, digits_cnn, ctx_factory())
    x = digits[2][:50]
    with torch.no_grad():
        pred = digits_cnn(x).argmax(1)
        ll = det.class_log_likelihood(x)[torch.arange(50), pred]
        expected = det.thresholds[pred] - ll
        assert torch.allclose(det.detector_score(x).double(), expected, atol=1e-3)
        assert torch.equal(det.rejects(x), ll < det.thresholds[pred])
        assert torch.equal(det(x), digits_cnn(x))  # classification is the model's


# -- every config field matters ----------------------------------------------------------------


def test_layer_n_components_and_covariance_type_shape_the_mixtures(registry, digits_cnn, ctx_factory):
    ctx = ctx_factory()
    a = defend(registry, digits_cnn, ctx, n_components=2, covariance_type="full")
    assert tuple(a.means.shape) == (10, 2, 128) and tuple(a.prec_chol.shape) == (10, 2, 128, 128)
    b = defend(registry, digits_cnn, ctx, n_components=3, covariance_type="spherical", layer="last")
    assert tuple(b.means.shape) == (10, 3, 128) and tuple(b.prec_chol.shape) == (10, 3)
    c = defend(registry, digits_cnn, ctx, covariance_type="tied")
    assert tuple(c.prec_chol.shape) == (10, 128, 128)
    with pytest.raises(advx.ConfigError, match="not a hidden state"):
        defend(registry, digits_cnn, ctx, layer="conv9")


def test_layer_all_concatenates_every_hidden_state(registry, ctx_factory):
    """A two-hidden-layer MLP: 'all' models 16 + 8 values, 'last' 8, 'fc1' 16."""
    ds = ctx_factory().dataset
    mlp = advx.train_model(ds, registry.model("mlp", hidden=(16, 8)), {"epochs": 2, "seed": 0}, cache=False).model
    ctx = ctx_factory()
    dims = {layer: defend(registry, mlp, ctx, layer=layer).means.shape[-1] for layer in ("all", "last", "fc1")}
    assert dims == {"all": 24, "last": 8, "fc1": 16}


def test_reg_covar_max_iter_and_seed_change_the_fit(registry, digits_cnn, ctx_factory):
    ctx = ctx_factory()
    base = defend(registry, digits_cnn, ctx, n_components=3)
    big_reg = defend(registry, digits_cnn, ctx, n_components=3, reg_covar=10.0)
    assert float(big_reg.prec_chol.max()) <= 10.0**-0.5 + 1e-9 < float(base.prec_chol.max())
    other_seed = defend(registry, digits_cnn, ctx, n_components=3, seed=1)
    assert not torch.allclose(base.means, other_seed.means)
    with pytest.warns(Warning):  # scikit-learn's ConvergenceWarning after one EM step
        one_step = defend(registry, digits_cnn, ctx, n_components=3, max_iter=1)
    assert not torch.allclose(base.means, one_step.means)


# -- caching -----------------------------------------------------------------------------------


def test_fitting_is_cached_and_shared_by_operating_points(registry, digits_cnn, ctx_factory, tmp_path, monkeypatch):
    calls = []
    real = i_defender.fit_mixtures
    monkeypatch.setattr(i_defender, "fit_mixtures", lambda *a, **k: calls.append(1) or real(*a, **k))
    ctx = ctx_factory(str(tmp_path))
    a = defend(registry, digits_cnn, ctx, keep=95)
    b = defend(registry, digits_cnn, ctx, keep=99)  # same mixtures, other thresholds: no refit
    assert len(calls) == 1 and torch.equal(a.means, b.means) and bool((b.thresholds < a.thresholds).all())
    assert list((tmp_path / "artifacts").glob("i-defender-*.pt"))
    # other weights are another fit: the mixtures belong to the model they were fitted on
    other = advx.train_model(ctx.dataset, registry.model("mnist-cnn"), {"epochs": 1, "seed": 3}, cache=False).model
    defend(registry, other, ctx, keep=95)
    assert len(calls) == 2


# -- gradients and the detector-aware attacker (seed 004 eq. 6) --------------------------------


def test_scores_are_differentiable(registry, digits_cnn, ctx_factory, digits):
    det = defend(registry, digits_cnn, ctx_factory())
    x = digits[2][:8].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(det.detector_score(x).sum(), x)
    assert g.abs().sum() > 0
    (g2,) = torch.autograd.grad(det.evasion_logits(x).sum(), x)
    assert torch.isfinite(g2).all()


def test_evasion_term_gives_eq6_gradient_through_the_kernels_view(registry, digits_cnn, ctx_factory, digits):
    """logits + alpha * (E - E.detach()) under cross-entropy on s: grad J + alpha * g * grad max_{k != s} log p(H|k)."""
    det = defend(registry, digits_cnn, ctx_factory())
    _, info, x, y = digits
    x = registry.attack("fgsm", eps=0.1).perturb(digits_cnn, x[:200], y[:200], info.bounds)  # less confident inputs
    y = y[:200]
    alpha = 0.01
    x = x.clone().requires_grad_(True)
    e = det.evasion_logits(x, y)
    view = det(x) + alpha * (e - e.detach())
    assert torch.equal(view.detach(), det(x).detach())  # forward values unchanged
    (g_view,) = torch.autograd.grad(nn.functional.cross_entropy(view, y, reduction="sum"), x)

    x2 = x.detach().clone().requires_grad_(True)
    ll = det.class_log_likelihood(x2)
    others = torch.ones_like(ll, dtype=torch.bool).scatter_(1, y[:, None], False)
    gate = ((ll < det.thresholds) | ~others).all(1).detach()
    best_other = ll.masked_fill(~others, float("-inf")).max(1).values
    eq6 = nn.functional.cross_entropy(det(x2), y, reduction="sum") + alpha * (gate * best_other).sum()
    (g_eq6,) = torch.autograd.grad(eq6, x2)

    with torch.no_grad():
        p_s = det(x).softmax(1).gather(1, y[:, None])[:, 0]
    ok = (1 - p_s) > 1e-3  # where float32 cross-entropy resolves 1 - p_s
    assert gate[ok].sum() >= 10 and (~gate[ok]).sum() >= 1
    a, b = g_view[ok].flatten(1), g_eq6[ok].flatten(1)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
    # without labels the source class is the predicted one
    with torch.no_grad():
        pred = det(x).argmax(1)
        assert torch.equal(det.evasion_logits(x), det.evasion_logits(x, pred))


class _Aware(nn.Module):
    """The detector-aware attacker's view, as the kernel builds it: logits + alpha * (E - E.detach())."""

    def __init__(self, det: IDefenderModule, alpha: float) -> None:
        super().__init__()
        self.det, self.alpha = det, alpha

    def forward(self, x):
        e = self.det.evasion_logits(x)
        return self.det(x) + self.alpha * (e - e.detach())


def test_detector_aware_attack_evades_more_than_the_plain_attack(registry, digits_cnn, ctx_factory, digits):
    det = defend(registry, digits_cnn, ctx_factory(), n_components=1, covariance_type="diag")
    _, info, x, y = digits
    x, y = x[:200], y[:200]
    fgsm = registry.attack("fgsm", eps=0.2)  # seed 004's attack
    plain = fgsm.perturb(det, x, y, info.bounds)
    aware = fgsm.perturb(_Aware(det, alpha=0.01), x, y, info.bounds)
    with torch.no_grad():
        det_rate_p = det.rejects(plain).double().mean().item()
        det_rate_a = det.rejects(aware).double().mean().item()
        # successful evasions: misclassified and not rejected
        evaded_p = ((det(plain).argmax(1) != y) & ~det.rejects(plain)).double().mean().item()
        evaded_a = ((det(aware).argmax(1) != y) & ~det.rejects(aware)).double().mean().item()
    assert det_rate_a < det_rate_p - 0.05, (det_rate_p, det_rate_a)
    assert evaded_a > evaded_p, (evaded_p, evaded_a)


def test_detector_aware_threat_of_the_kernel_lowers_detection_and_defended_accuracy(tmp_path):
    """The same comparison through a matrix: the kernel's detector-aware view and detection metrics."""
    spec = advx.MatrixSpec.from_toml_string(
        f"""
[matrix]
name = "aware"
samples = 200
batch_size = 200
seed = 0
cache_dir = "{tmp_path}"
[[datasets]]
name = "digits"
[[models]]
name = "mnist-cnn"
train = {{ epochs = 10 }}
[[defenses]]
name = "i-defender"
n_components = 1
covariance_type = "diag"
[[threats]]
name = "white-box"
[[threats]]
name = "detector-aware"
alpha = 0.01
[[attacks]]
name = "fgsm"
eps = 0.2
"""
    )
    res = advx.run_matrix(spec)
    rows = {r["threat_config"]["name"]: r for r in res.rows}
    plain, aware = rows["white-box"], rows["detector-aware"]
    assert plain["detection_auc"] is not None and aware["detection_auc"] < plain["detection_auc"]
    assert aware["detection_tpr"] < plain["detection_tpr"]
    assert aware["accuracy_with_rejection"] < plain["accuracy_with_rejection"]
