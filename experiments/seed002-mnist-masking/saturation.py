"""Float32 softmax saturation in FGSM on seed 002's single network (a control for masking.py).

The cross-entropy gradient with respect to the logits is p - onehot(y). Where the network is
confident, p_y rounds to exactly 1.0 in float32, the true-class term of the gradient vanishes
and only the tiny terms of the other classes are left (or, through one more log-softmax, as
in advx's ensemble of one member, rounding noise of the same size). FGSM takes the sign of
the input gradient, so these examples get a different step than the exact (float64) gradient
gives. This script attacks the same trained network (mnist-cnn of Table 1, 10 epochs, Adam
1e-3, batch 128, seed 0) with FGSM eps 0.3 on all 10,000 MNIST test images three ways: plain
float32 (advx's ``none`` defense), float32 through the 1-member ensemble (``ensemble(members=1)``),
and plain float64, each scored in float32; and counts the images whose float32 p_y is exactly 1.

Writes ``experiments/results/seed002-mnist-saturation.json``. About a minute on 2 CPU cores
(the network from the training cache of the matrix runs, or trained once).
    ADVX_DATA=DIR python experiments/seed002-mnist-masking/saturation.py --cache-dir CACHE
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F

import advx
from advx.plugins.defenses.ensemble import StackedEnsemble

TRAIN = {"epochs": 10, "batch_size": 128, "optimizer": "adam", "lr": 0.001}


def fgsm(model, x, y, eps=0.3):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return (x + eps * g.sign()).clamp(0, 1).detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="experiments/results/seed002-mnist-saturation.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    reg = advx.Registry.discover()
    ds = reg.dataset("mnist", download=False)
    net = advx.train_model(ds, reg.model("mnist-cnn"), TRAIN, cache=args.cache_dir).model.eval()
    net.requires_grad_(False)
    x, y = advx.take(advx.load_split(ds, "test"), 10_000)
    ens = StackedEnsemble([net]).eval()  # advx's ensemble of one member: log(mean p) of the one network
    n64 = copy.deepcopy(net).double().eval()
    correct = {"clean": 0, "saturated": 0, "fgsm_float32": 0, "fgsm_ensemble_of_one": 0, "fgsm_float64": 0}
    for xb, yb in zip(x.split(500), y.split(500)):
        with torch.no_grad():
            p = torch.softmax(net(xb), -1)
            correct["clean"] += int((p.argmax(1) == yb).sum())
            correct["saturated"] += int((p.gather(1, yb[:, None]) == 1.0).sum())
        for key, adv in (("fgsm_float32", fgsm(net, xb, yb)), ("fgsm_ensemble_of_one", fgsm(ens, xb, yb)),
                         ("fgsm_float64", fgsm(n64, xb.double(), yb).float())):
            with torch.no_grad():
                correct[key] += int((net(adv).argmax(1) == yb).sum())
    n = len(y)
    out = {"setup": {"network": "mnist-cnn, seed 002 Table 1 with raw logits, seed 0", "train": TRAIN, "fgsm_eps": 0.3, "n": n,
                     "torch": torch.__version__, "advx": advx.__version__, "seconds": round(time.perf_counter() - t0, 1)},
           "counts": correct, "shares": {k: v / n for k, v in correct.items()}}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps(out["shares"]))


if __name__ == "__main__":
    main()
