"""``mnist-cnn`` with ``relu_logits``: Table 1 of seed 002 as printed (a ReLU on the logits)."""

from __future__ import annotations

import torch

import advx


def test_relu_logits_puts_a_relu_on_the_output_layer(registry):
    info = advx.DatasetInfo(name="t", input_shape=(1, 8, 8), num_classes=10)
    torch.manual_seed(0)
    raw = registry.create("model", "mnist-cnn", {}).build(info).eval()
    torch.manual_seed(0)
    relu = registry.create("model", "mnist-cnn", {"relu_logits": True}).build(info).eval()
    x = torch.rand(16, 1, 8, 8)
    assert (raw(x) < 0).any()
    assert torch.equal(relu(x), torch.relu(raw(x)))
    # the masking the doc tests: no gradient reaches the input through a negative logit
    xr = x.clone().requires_grad_(True)
    out = relu(xr)
    neg = (raw(x) < 0).nonzero()[0]
    (g,) = torch.autograd.grad(out[neg[0], neg[1]], xr)
    assert g.abs().sum() == 0
