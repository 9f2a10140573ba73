"""Input-transformation defenses: rotation (seed 003), bit-depth reduction, median smoothing,
Xu et al.'s squeezing detector and the median filter; what they declare (differentiable,
randomised), what BPDA gives, and that every config field changes the output."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import advx
from advx.plugins.defenses.rotation import RandomRotate, Rotate, oracle_best_angle, rotate, rotation_sweep
from advx.plugins.defenses.squeezing import BitDepth, MedianSmooth, SqueezeDetector, median_filter




def stub_ctx(bounds=(0.0, 1.0), train=None):
    info = types.SimpleNamespace(bounds=bounds, num_classes=10)
    return types.SimpleNamespace(info=info, device=torch.device("cpu"), train_data=train)


def images(n=4, c=1, h=9, w=9, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# -- rotation ----------------------------------------------------------------------------------


def test_rotation_by_zero_is_exactly_the_identity(registry):
    x = images()
    assert rotate(x, 0.0) is x
    mod = registry.create("defense", "rotation", {"angle": 0}).apply(nn.Identity(), stub_ctx())
    assert torch.equal(mod(x), x)
    assert torch.equal(rotate(x, torch.zeros(len(x))), x)  # per-image zeros too


@pytest.mark.parametrize("hw", [(9, 9), (8, 8)])
def test_rotation_by_90_equals_rot90(registry, hw):
    x = images(h=hw[0], w=hw[1])
    mod = registry.create("defense", "rotation", {"angle": 90}).apply(nn.Identity(), stub_ctx())
    assert torch.allclose(mod(x), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)  # counterclockwise, as seed 003 eq. 5
    assert torch.allclose(rotate(x, -90.0), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(rotate(x, 180.0), torch.rot90(x, 2, dims=(2, 3)), atol=1e-5)


def test_rotation_fills_corners_with_the_lower_bound(registry):
    x = torch.ones(1, 1, 9, 9)
    mod = registry.create("defense", "rotation", {"angle": 45}).apply(nn.Identity(), stub_ctx(bounds=(-1.0, 1.0)))
    out = mod(x)
    assert out[0, 0, 0, 0].item() == pytest.approx(-1.0) and out[0, 0, 4, 4].item() == pytest.approx(1.0)


def test_gradients_flow_through_rotation():
    x = images().requires_grad_(True)
    t = Rotate(30.0)
    assert t.differentiable and not t.randomized
    (g,) = torch.autograd.grad(t(x).pow(2).sum(), x)
    assert g.abs().sum() > 0
    assert advx.contract.protocols.non_differentiable_parts(nn.Sequential(t)) == []


def test_random_rotation_is_declared_random_and_draws_from_its_range(registry):
    x = images()
    mod = registry.create("defense", "rotation", {"angle_range": [90, 90]}).apply(nn.Identity(), stub_ctx())
    assert isinstance(mod[0], RandomRotate) and mod[0].randomized
    assert advx.contract.protocols.randomized_parts(mod) == ["0"]
    assert torch.allclose(mod(x), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)  # the range is used, angle is not
    wide = registry.create("defense", "rotation", {"angle_range": [-30, 30]}).apply(nn.Identity(), stub_ctx())
    assert not torch.equal(wide(x), wide(x))  # a fresh draw per call
    # the seed makes the draws reproducible, another seed gives others
    again = registry.create("defense", "rotation", {"angle_range": [-30, 30]}).apply(nn.Identity(), stub_ctx())
    other = registry.create("defense", "rotation", {"angle_range": [-30, 30], "seed": 1}).apply(nn.Identity(), stub_ctx())
    first = registry.create("defense", "rotation", {"angle_range": [-30, 30]}).apply(nn.Identity(), stub_ctx())(x)
    assert torch.equal(again(x), first) and not torch.equal(other(x), first)
    with pytest.raises(advx.ConfigError):
        registry.create("defense", "rotation", {"angle_range": [40, 10]})


def test_rotation_sweep_and_oracle_best_angle():
    model = nn.Sequential(nn.Flatten(), nn.Linear(81, 3)).eval()
    x = images(n=5)
    angles = list(range(0, 91, 15))
    probs = rotation_sweep(model, x, angles, batch_size=2)
    assert probs.shape == (5, len(angles), 3)
    with torch.no_grad():
        assert torch.allclose(probs[:, 0], model(x).softmax(1))
        assert torch.allclose(probs[:, -1], model(torch.rot90(x, 1, dims=(2, 3))).softmax(1), atol=1e-5)
    true = torch.tensor([0, 1, 2, 0, 1])
    best, p_best = oracle_best_angle(probs, angles, true)
    p_true = probs[torch.arange(5), :, true][:, 1:]  # angle 0 excluded (seed 003: [1, 90])
    assert torch.equal(p_best, p_true.max(1).values) and bool((best >= 15).all())


# -- bit depth, median, BPDA -------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 3])
def test_bit_depth_keeps_2_to_the_bits_levels(bits):
    x = torch.linspace(0, 1, 1001).view(1, 1, 7, 143)
    out = BitDepth(bits)(x)
    assert len(out.unique()) == 2**bits
    assert (out - x).abs().max() <= 0.5 / (2**bits - 1) + 1e-6
    scaled = BitDepth(bits, bounds=(-1.0, 1.0))(x * 2 - 1)
    assert torch.allclose(scaled, out * 2 - 1, atol=1e-6)


@pytest.mark.parametrize("size, hw", [(2, (10, 7)), (3, (10, 7)), (4, (10, 7)), (15, (5, 5)), (14, (3, 8)), (15, (1, 1))])
def test_median_filter_equals_scipy(size, hw):
    """Windows far larger than the image too (15 on 5x5): scipy reflects again at the far edge."""
    x = images(n=2, c=3, h=hw[0], w=hw[1])
    ours = median_filter(x, size)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    np.testing.assert_allclose(ours.numpy(), ref, atol=0)


@pytest.mark.parametrize("transform", [BitDepth(2), MedianSmooth(3)])
def test_non_differentiable_transforms_declare_it_and_bpda_passes_the_gradient(transform):
    assert transform.differentiable is False
    model = nn.Sequential(transform, nn.Flatten(), nn.Linear(81, 3)).eval()
    assert advx.contract.protocols.non_differentiable_parts(model) == ["0"]
    x = images()
    with advx.bpda(model):
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        assert torch.equal(out, model[2](model[1](transform.transform(x))))  # forward unchanged
        (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
    # BPDA: the gradient is the classifier's at the transformed input, passed straight through
    xt = transform.transform(x).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(model[2](model[1](xt))[:, 0].sum(), xt)
    assert torch.allclose(g, g_ref) and g.abs().sum() > 0
    assert transform.bpda is False  # switched back after the block


def test_without_bpda_bit_depth_gives_no_gradient():
    x = images().requires_grad_(True)
    (g,) = torch.autograd.grad(BitDepth(2)(x).sum(), x)
    assert g.abs().sum() == 0  # what BPDA exists for


# -- the defenses' configs ---------------------------------------------------------------------


def test_median_filter_defense_uses_its_size(registry):
    x = images()
    for size in (2, 3):
        mod = registry.create("defense", "median-filter", {"size": size}).apply(nn.Identity(), stub_ctx())
        assert torch.equal(mod(x), median_filter(x, size))


@pytest.fixture(scope="module")
def squeeze_ctx(digits, registry):
    ds = digits[0]
    return stub_ctx(bounds=tuple(ds.info().bounds), train=ds.load("train"))


def test_feature_squeezing_squeeze_mode_applies_its_squeezers_in_order(registry, digits_cnn, digits, squeeze_ctx):
    x = digits[2][:20]
    mod = registry.create(
        "defense", "feature-squeezing", {"mode": "squeeze", "squeezers": ["median", "bit-depth"], "bits": 3, "median_size": 3}
    ).apply(digits_cnn, squeeze_ctx)
    with torch.no_grad():
        assert torch.equal(mod(x), digits_cnn(BitDepth(3)(median_filter(x, 3))))
        only_bits = registry.create("defense", "feature-squeezing", {"mode": "squeeze", "squeezers": ["bit-depth"], "bits": 1})
        assert torch.equal(only_bits.apply(digits_cnn, squeeze_ctx)(x), digits_cnn(BitDepth(1)(x)))


def test_feature_squeezing_detector_score_and_calibrated_threshold(registry, digits_cnn, digits, squeeze_ctx):
    x = digits[2][:50]
    det = registry.create("defense", "feature-squeezing", {"fpr": 0.1, "calibration_samples": 400}).apply(digits_cnn, squeeze_ctx)
    assert isinstance(det, SqueezeDetector) and isinstance(det, advx.Detector)
    with torch.no_grad():
        p = digits_cnn(x).softmax(1)
        d1 = (p - digits_cnn(BitDepth(1)(x)).softmax(1)).abs().sum(1)
        d2 = (p - digits_cnn(median_filter(x, 2)).softmax(1)).abs().sum(1)
        assert torch.allclose(det.detector_score(x), torch.maximum(d1, d2), atol=1e-6)
        assert torch.equal(det(x), digits_cnn(x))  # the prediction is the raw input's
        xt, _ = advx.take(squeeze_ctx.train_data, 400)
        assert abs(det.rejects(xt).double().mean().item() - 0.1) <= 0.01  # fpr on the calibration examples
        fewer = registry.create("defense", "feature-squeezing", {"fpr": 0.1, "calibration_samples": 20}).apply(digits_cnn, squeeze_ctx)
        assert fewer.threshold != det.threshold
        only_median = registry.create("defense", "feature-squeezing", {"squeezers": ["median"], "median_size": 3})
        assert torch.allclose(
            only_median.apply(digits_cnn, squeeze_ctx).detector_score(x),
            (p - digits_cnn(median_filter(x, 3)).softmax(1)).abs().sum(1),
            atol=1e-6,
        )
    # the detector-aware attacker gets a gradient through the squeezers under BPDA
    xg = x.clone().requires_grad_(True)
    with advx.bpda(det):
        (g,) = torch.autograd.grad(det.detector_score(xg).sum(), xg)
    assert g.abs().sum() > 0
