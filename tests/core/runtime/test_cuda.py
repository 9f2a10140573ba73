"""CUDA: the same matrix on the GPU (skipped where no GPU is present)."""

from __future__ import annotations

import pytest
import torch

import advx

pytestmark = pytest.mark.gpu


def test_matrix_on_cuda_matches_cpu(tmp_path):
    spec = {
        "matrix": {"name": "cuda", "samples": 200, "batch_size": 100, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mnist-cnn", "train": {"epochs": 10}}],
        "attacks": [{"name": "fgsm", "eps": 0.2}, {"name": "bim", "eps": 0.2}],
    }
    gpu = advx.run_matrix(spec, device="cuda")
    cpu = advx.run_matrix(spec, device="cpu")
    assert gpu.done == cpu.done == 2
    for g, c in zip(gpu.rows, cpu.rows):
        assert g["device"].startswith("cuda")
        # trained separately on each device: close, not equal
        assert abs(g["clean_accuracy"] - c["clean_accuracy"]) < 0.05
        assert g["max_linf"] <= 0.2 + 1e-5


def test_evaluate_keeps_tensors_on_the_model_device(digits, digits_cnn):
    _, info, x, y = digits
    model = digits_cnn.to("cuda")
    try:
        (rep,) = advx.evaluate(model, (x, y), [("bim", {"early_exit": False})], bounds=info.bounds)  # 8 steps each
        assert rep.x_adv.device.type == "cpu" and rep.metrics["backwards_per_sample"] == 8
    finally:
        digits_cnn.to("cpu")


def test_same_seed_same_weights_on_cuda(registry):
    ds, model = registry.dataset("digits"), registry.model("mlp")
    a = advx.train_model(ds, model, {"epochs": 2}, device="cuda", cache=False).model
    b = advx.train_model(ds, model, {"epochs": 2}, device="cuda", cache=False).model
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
