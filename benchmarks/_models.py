"""The models the issue-24 benchmarks share (``early_exit_peers.py``, ``suite_vs_autoattack.py``,
``optimality.py``), each trained once through the kernel's training cache and reused.

* ``digits``: ``mnist-cnn`` trained 8 epochs on the embedded 8x8 digits (no download), as in
  issue 24's measurement (300 test digits, eps 0.1);
* ``mnist``: ``mnist-cnn`` trained on real MNIST (``$ADVX_DATA/mnist``), undefended;
* ``mnist-at``: the same network adversarially trained as in
  ``experiments/seed002-mnist-madry`` (PGD eps 0.3, 10 steps of 0.075, rho 0.5: half clean
  loss, Adam 1e-3, batch 128), for ``AT_EPOCHS`` epochs instead of 10 so that it trains in
  minutes on a shared 2-core CPU. Most of its test images survive eps 0.3, which is where
  AutoAttack's cost sits (APGD-T, FAB-T, Square);
* ``seed002``: seed 002's single MNIST network (``mnist-cnn``, 10 epochs, Adam 1e-3, batch 128,
  seed 0, as ``experiments/seed002-mnist-masking/saturation.py``), undefended and confident: a
  quarter of its test images have a float32 p(true class) of exactly 1.0 (``apgd_float64.py``).
  Trained once (about 80 s on 2 idle cores), then cached.

Real MNIST comes from ``$ADVX_DATA`` (``ADVX_DATA=<data root>``) or the user cache; the cache
of trained checkpoints is the kernel's (``$ADVX_CACHE_DIR``, else the user cache dir).

    python benchmarks/_models.py mnist-at     # train (or load) one model, print its clean accuracy
"""

from __future__ import annotations

import sys
import time

import torch

import advx

AT_EPOCHS = 3
MODELS = {
    "digits": "mnist-cnn, 8 epochs on the embedded 8x8 digits",
    "mnist": "mnist-cnn, 1 epoch on MNIST (undefended)",
    "mnist-at": f"mnist-cnn, PGD adversarial training on MNIST (eps 0.3, 10 steps of 0.075, rho 0.5, {AT_EPOCHS} epochs)",
    "seed002": "mnist-cnn, 10 epochs on MNIST (Adam 1e-3, batch 128: seed 002's single network, undefended)",
}
EPS = {"digits": 0.1, "mnist": 0.3, "mnist-at": 0.3, "seed002": 0.1}


def load(name: str, samples: int, device: str = "cpu"):
    """``(model in eval mode, x, y, bounds)``: the model ``name`` and its first ``samples`` test examples,
    on ``device`` (trained on the CPU, so that a GPU run reuses the CPU's cached checkpoints)."""
    reg = advx.Registry.discover()
    if name == "digits":
        ds = reg.dataset("digits")
        model = advx.train_model(ds, reg.model("mnist-cnn"), {"epochs": 8, "seed": 0}).model
    elif name == "mnist":
        ds = reg.dataset("mnist", download=False)
        model = advx.train_model(ds, reg.model("mnist-cnn"), {"epochs": 1, "seed": 0}).model
    elif name == "seed002":
        ds = reg.dataset("mnist", download=False)
        train = {"epochs": 10, "batch_size": 128, "optimizer": "adam", "lr": 0.001, "seed": 0}
        model = advx.train_model(ds, reg.model("mnist-cnn"), train).model
    elif name == "mnist-at":
        from advx.runtime.context import DefenseContext
        from advx.runtime.training import TrainConfig

        ds = reg.dataset("mnist", download=False)
        train = TrainConfig.model_validate({"epochs": AT_EPOCHS, "batch_size": 128, "optimizer": "adam", "lr": 0.001})
        # trained on the CPU whatever the device (the cache key names the device): one checkpoint for all
        ctx = DefenseContext(dataset=ds, model=reg.model("mnist-cnn"), train_config=train, device=torch.device("cpu"), registry=reg)
        defense = reg.defense("adversarial-training", rho=0.5, attack={"name": "pgd", "eps": 0.3, "steps": 10, "alpha": 0.075})
        model = defense.apply(None, ctx)
    else:
        raise SystemExit(f"unknown model {name!r}: one of {', '.join(MODELS)}")
    x, y = advx.take(ds.load("test"), samples)
    model = model.to(device).eval()
    return model, x.to(device), y.to(device), tuple(ds.info().bounds)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(MODELS):
        t0 = time.perf_counter()
        model, x, y, _ = load(name, 1000)
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        print(f"{name}: clean accuracy {acc:.4f} on 1000 test examples ({time.perf_counter() - t0:.0f} s)", flush=True)
