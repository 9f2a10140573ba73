"""Seed 002's pipeline as literally as the paper allows, attacked with and without gradient masking.

The question (docs/reproductions.md, [3]): the paper's ensembles keep 45-98% of MNIST under
its Grad.2 attacks, ours under 6%, and its single network keeps 0.3791 under FGSM where ours
keeps 0.09. The most plausible cause is a pipeline whose gradients were masked. The paper
(2017) prints its network (Table 1: ReLU convolution, max pooling, ReLU dense 128, dropout,
"Relu Fully Connected 10 units", softmax), its attacks (FGSM eps 0.3; BIM eps 0.2, alpha
0.025, 8 steps; the gradient of the loss J(theta, x, y)) and cites cleverhans; it gives
neither code nor loss. A 2017 Keras/TensorFlow pipeline could take that gradient in three
ways, and this script attacks the same trained networks through each:

* ``logits``: the cross-entropy of the pre-softmax outputs (advx's attacks; what
  cleverhans's ``model_loss`` does when the model's output is a Softmax op, whose input it
  takes as the logits);
* ``keras-probabilities``: Keras's ``categorical_crossentropy`` on the softmax output,
  ``-log(clip(p_y, 1e-7, 1 - 1e-7))`` in float32. Wherever the network is confident
  (p_y rounds above 1 - 1e-7) the clip has zero gradient: the input gradient is exactly 0,
  its sign is 0 and FGSM and BIM leave the image as it is (a saturated softmax);
* ``probabilities-as-logits``: cleverhans's ``model_loss`` when the output is *not* a
  Softmax op, as for an ensemble whose output is the mean of its members' softmax: the
  probabilities are taken as logits and softmaxed again.

Each on two networks of Table 1, trained alike (10 epochs, Adam 1e-3, batch 128, advx's
training seeds 0 and 1): as printed (``relu_logits = true``: a ReLU on the logits) and
with raw logits (ours). Per network and gradient path: the single network (seed 0) under
FGSM and BIM, attacked on itself (Table 2's Grad.1 "Single"), and the 2-member random-init
ensemble (seeds 0 and 1; the mean of the softmax) under FGSM and BIM with the paper's two
gradients, of member 0 (Grad.1) and the mean of the members' gradients (Grad.2), each scored
on the ensemble. Plus the mechanism itself: the share of test images whose input gradient is
exactly zero. BIM stops an example once the attacked network is fooled where it is the
scored one (the single network: advx's ``early_exit``), and
runs all 8 steps otherwise, as advx's BIM does. Every loss here is computed in float32, as a
2017 Keras/TensorFlow pipeline computed it: the ``logits`` rows are the attacks advx ran
before its attacks took the cross-entropy in float64 (the stored cells of
``seed002-mnist-relu-logits`` and ``seed002-mnist-table2-reduced`` are of that time), so on
saturated images they carry the float32 rounding that ``saturation.py`` measures.

Writes ``experiments/results/seed002-mnist-masking.json`` (counts and shares of ``n`` test
images; the document renders them with Wilson intervals). Uses advx's public API for the
data, the networks and their training cache (the networks are the matrix runs' own when the
cache holds them).

Run (about 20 minutes on 2 CPU cores with 2,000 images, four 10-epoch trainings included;
10,000 images take about five times as long):
    ADVX_DATA=DIR python experiments/seed002-mnist-masking/masking.py --cache-dir CACHE
``--samples N`` attacks the first N test images; ``--quick``: 1 epoch, 200 images (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import advx

PATHS = ("logits", "keras-probabilities", "probabilities-as-logits")
KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), the clip of categorical_crossentropy on probabilities
FGSM_EPS = 0.3
BIM = {"eps": 0.2, "alpha": 0.025, "steps": 8}
TRAIN = {"epochs": 10, "batch_size": 128, "optimizer": "adam", "lr": 0.001}


def member_loss(path: str, logits: Tensor, y: Tensor) -> Tensor:
    """The summed loss of one network whose pre-softmax outputs are ``logits``, as ``path`` takes it."""
    if path == "logits":
        return F.cross_entropy(logits, y, reduction="sum")
    probs = torch.softmax(logits, -1)
    return probs_loss(path, probs, y)


def probs_loss(path: str, probs: Tensor, y: Tensor) -> Tensor:
    """The summed loss of a softmax output ``probs`` (one network's, or an ensemble's mean)."""
    if path == "keras-probabilities":
        p = probs.gather(1, y[:, None]).clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
        return -p.log().sum()
    if path == "probabilities-as-logits":
        return F.cross_entropy(probs, y, reduction="sum")
    raise ValueError(f"unknown gradient path {path!r}")


def ensemble_probs(members: list[nn.Module], x: Tensor) -> Tensor:
    return torch.stack([torch.softmax(m(x), -1) for m in members]).mean(0)


def gradient(kind: str, path: str, members: list[nn.Module], x: Tensor, y: Tensor) -> Tensor:
    """The input gradient an attacker of ``kind`` takes through ``path``:

    ``single``/``grad1``: member 0's loss; ``grad2``: the mean of the members' loss gradients."""
    x = x.detach().clone().requires_grad_(True)
    if kind in ("single", "grad1"):
        loss = member_loss(path, members[0](x), y)
    elif kind == "grad2":
        loss = sum(member_loss(path, m(x), y) for m in members) / len(members)
    else:
        raise ValueError(kind)
    (g,) = torch.autograd.grad(loss, x)
    return g


def attack(attack_name: str, kind: str, path: str, members: list[nn.Module], score: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """The adversarial batch: FGSM (one step of eps) or BIM (eps 0.2, alpha 0.025, 8 steps)."""
    if attack_name == "fgsm":
        return (x + FGSM_EPS * gradient(kind, path, members, x, y).sign()).clamp(0, 1)
    lo, hi = (x - BIM["eps"]).clamp(min=0), (x + BIM["eps"]).clamp(max=1)
    adv = x.clone()
    early_exit = kind == "single"  # the attacked network is the scored one (advx's early_exit)
    for _ in range(BIM["steps"]):
        active = torch.ones(len(x), dtype=torch.bool) if not early_exit else score(adv).argmax(1) == y
        if not bool(active.any()):
            break
        g = gradient(kind, path, members, adv[active], y[active])
        adv[active] = torch.max(torch.min(adv[active] + BIM["alpha"] * g.sign(), hi[active]), lo[active])
    return adv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="experiments/results/seed002-mnist-masking.json")
    ap.add_argument("--samples", type=int, default=2_000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    reg = advx.Registry.discover()
    ds = reg.dataset("mnist", download=False)
    train = {**TRAIN, "epochs": 1} if args.quick else TRAIN
    samples = 200 if args.quick else args.samples
    x_test, y_test = advx.take(advx.load_split(ds, "test"), samples)
    out: dict = {
        "setup": {
            "networks": "mnist-cnn of seed 002 Table 1, as printed (relu_logits = true) and with raw logits; training seeds 0 and 1",
            "train": train,
            "fgsm": {"eps": FGSM_EPS},
            "bim": BIM,
            "paths": list(PATHS),
            "keras_epsilon": KERAS_EPSILON,
            "n": len(y_test),
            "torch": torch.__version__,
            "advx": advx.__version__,
        },
        "networks": {},
    }
    for label, relu in (("as-printed", True), ("raw-logits", False)):
        model = reg.model("mnist-cnn", relu_logits=True) if relu else reg.model("mnist-cnn")
        members, train_seconds = [], []
        for seed in (0, 1):
            res = advx.train_model(ds, model, {**train, "seed": seed}, cache=args.cache_dir)
            members.append(res.model.eval())
            train_seconds.append(round(res.seconds, 1))
        for m in members:
            m.requires_grad_(False)

        def single(x: Tensor) -> Tensor:
            return members[0](x)

        def ens(x: Tensor) -> Tensor:
            return ensemble_probs(members, x)

        net: dict = {"train_seconds": train_seconds, "paths": {}}
        with torch.no_grad():
            net["clean_correct"] = {
                "single": int(sum((single(b).argmax(1) == t).sum() for b, t in zip(x_test.split(args.batch_size), y_test.split(args.batch_size)))),
                "ensemble": int(sum((ens(b).argmax(1) == t).sum() for b, t in zip(x_test.split(args.batch_size), y_test.split(args.batch_size)))),
            }
        for path in PATHS:
            t0 = time.perf_counter()
            zero = 0
            correct = {f"{a}/{k}": 0 for a in ("fgsm", "bim") for k in ("single", "grad1", "grad2")}
            for xb, yb in zip(x_test.split(args.batch_size), y_test.split(args.batch_size)):
                g = gradient("single", path, members, xb, yb)
                zero += int((g.flatten(1).abs().amax(1) == 0).sum())
                for a in ("fgsm", "bim"):
                    for k in ("single", "grad1", "grad2"):
                        scorer = single if k == "single" else ens
                        adv = attack(a, k, path, members, scorer, xb, yb)
                        with torch.no_grad():
                            correct[f"{a}/{k}"] += int((scorer(adv).argmax(1) == yb).sum())
            n = len(y_test)
            net["paths"][path] = {
                "zero_gradient_share": zero / n,
                "zero_gradient": zero,
                "adversarial_correct": correct,
                "adversarial_accuracy": {k: v / n for k, v in correct.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(f"{label} {path}: zero gradients {zero}/{n}, " + ", ".join(f"{k} {v / n:.4f}" for k, v in correct.items()), flush=True)
        net["clean_accuracy"] = {k: v / len(y_test) for k, v in net["clean_correct"].items()}
        out["networks"][label] = net
    out["setup"]["seconds"] = round(time.perf_counter() - t_start, 1)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out} in {out['setup']['seconds']} s")


if __name__ == "__main__":
    main()
