"""Seed 003 (Thang & Matsui): rotating targeted adversarial examples, LeNet-5 on real MNIST.

What the paper reports (Figures 2-5, Table I): for 10 test images of digit 1 attacked towards
8 (and 10 of digit 6 towards 9) with 20 iterations of step 0.01, the probability of the true
and target class as the adversarial image is rotated by 0..90 degrees, and per image the
angle at which the true class comes back best. That best angle is chosen with the true
label: it is an ORACLE, not a defense. This script reproduces the oracle analysis (labelled
ORACLE in every key and line that carries it) and adds what a deployed defense gets:

* fixed angles and a random angle (the ``rotation`` defense), on the same adversarial
  examples crafted on the undefended LeNet-5 (the paper's setting: the attacker does not
  know about the rotation), and on the clean test set (what rotation costs);
* the white-box attacker who knows the rotation: the same targeted attack through the
  (differentiable) rotation; for the random angle, with EOT (logits averaged over
  ``--eot`` draws per step), since its forward is random.

Table I's image indices are MNIST *test* indices (all ten are 1s there); they are used as
they are. The paper does not give the 6 -> 9 indices: ten test 6s are drawn with a seed.

Run (about 2-4 minutes on 2 CPU cores, LeNet-5 training included; DIR holds mnist/*.gz, or
leave ADVX_DATA out if the files are already in the cache):
    ADVX_DATA=DIR .venv/bin/python experiments/seed003-rotation/rotation.py \
        --cache-dir /tmp/advx-cache --out experiments/results/seed003-rotation.json
``--quick`` uses 200 examples per class and 2 training epochs (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import advx
from advx.plugins.defenses.rotation import RandomRotate, Rotate, oracle_best_angle, rotation_sweep

TABLE_I = [7463, 1773, 9737, 7738, 9071, 7399, 3765, 6670, 9896, 228]  # seed 003 Table I, digit 1 -> 8
PAPER_TABLE_I = {  # index: (original p(1) %, adversarial p(8) %, rotated p(1) %, best angle)
    7463: (100, 96.1, 99.8, 26), 1773: (94.2, 96.9, 96.2, 20), 9737: (100, 96.7, 99.8, 27),
    7738: (99.5, 97.2, 99.5, 38), 9071: (92.0, 97.3, 48.7, 10), 7399: (100, 96.5, 99.5, 34),
    3765: (100, 97.6, 90.4, 15), 6670: (99.9, 97.5, 100, 35), 9896: (100, 95.8, 99.5, 31),
    228: (100, 96.0, 99.4, 19),
}  # fmt: skip
ANGLES = list(range(0, 91))
FIXED = [10, 20, 30, 45]
RANDOM_RANGE = (0.0, 45.0)


class EOT(nn.Module):
    """Mean logits over ``draws`` calls of a randomised model (Athalye et al.'s expectation over transformation)."""

    def __init__(self, model: nn.Module, draws: int) -> None:
        super().__init__()
        self.model, self.draws = model, draws

    def forward(self, x):
        return torch.stack([self.model(x) for _ in range(self.draws)]).mean(0)


def targeted_early_stop(model: nn.Module, x, target, eps: float, alpha: float, steps: int, bounds) -> torch.Tensor:
    """The same targeted iterations, but each example stops at the first step where the target is top-1.

    A weaker, minimal-perturbation variant: the paper's adversarial images reach about 96-97%
    on the target class (Table I), not the ~100% that 20 full steps give here.
    """
    x_adv = x.clone()
    active = torch.ones(len(x), dtype=torch.bool)
    for _ in range(steps):
        xg = x_adv.clone().requires_grad_(True)
        logits = model(xg)
        active &= logits.argmax(1) != target
        if not active.any():
            break
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, target, reduction="sum"), xg)
        step = -alpha * g.sign() * active.view(-1, 1, 1, 1)
        x_adv = torch.min(torch.max(x_adv + step, x - eps), x + eps).clamp(*bounds).detach()
    return x_adv


def r4(t) -> list:
    return [round(float(v), 4) for v in t]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="experiments/results/seed003-rotation.json")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eot", type=int, default=8)
    ap.add_argument("--white-box-samples", type=int, default=300, help="examples per class attacked white-box through each defense")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is faster and steadier
    reg = advx.Registry.discover()
    ds = reg.dataset("mnist", download=False)
    info = ds.info()
    lo = float(info.bounds[0])
    epochs = 2 if args.quick else args.epochs
    train = {"epochs": epochs, "seed": 0}
    res = advx.train_model(ds, reg.model("lenet5"), train, cache=args.cache_dir)
    net = res.model.eval()
    x_test, y_test = advx.take(advx.load_split(ds, "test"), 10_000)
    with torch.no_grad():
        clean_acc = float((torch.cat([net(b) for b in x_test.split(1000)]).argmax(1) == y_test).float().mean())
    attack = reg.attack("bim", eps=0.2, alpha=0.01, steps=20)  # 20 iterations of step 0.01 (the paper)
    out: dict = {
        "setup": {
            "model": "lenet5 (LeCun C3 table, tanh, avg pooling), trained with advx defaults",
            "train": train,
            "train_seconds": round(res.seconds, 1),
            "clean_test_accuracy": round(clean_acc, 4),
            "attack": "bim eps=0.2 alpha=0.01 steps=20, targeted (the paper: 20 iterations of step 0.01)",
            "angles": [ANGLES[0], ANGLES[-1]],
            "note": "ORACLE = chosen with the true label; not deployable",
        },
        "pairs": {},
    }

    early = lambda xb, tb: targeted_early_stop(net, xb, tb, 0.2, 0.01, 20, info.bounds)  # noqa: E731
    full = lambda xb, tb: attack.perturb(net, xb, tb, info.bounds, targeted=True)  # noqa: E731
    for src, tgt, variant in ((1, 8, "bim-20"), (6, 9, "bim-20"), (1, 8, "bim-early-stop"), (6, 9, "bim-early-stop")):
        idx_all = (y_test == src).nonzero()[:, 0]
        if args.quick:
            idx_all = idx_all[:200]
        if src == 1:
            table_idx = torch.tensor(TABLE_I)
        else:
            table_idx = idx_all[torch.randperm(len(idx_all), generator=torch.Generator().manual_seed(0))[:10]].sort().values
        x, y = x_test[idx_all], y_test[idx_all]
        target = torch.full_like(y, tgt)
        craft = full if variant == "bim-20" else early
        x_adv = torch.cat([craft(xb, tb) for xb, tb in zip(x.split(500), target.split(500))])
        p_clean = rotation_sweep(net, x, ANGLES, fill=lo)  # (N, A, 10)
        p_adv = rotation_sweep(net, x_adv, ANGLES, fill=lo)
        best, p_best = oracle_best_angle(p_adv, ANGLES, y)
        pred_adv = p_adv.argmax(2)  # (N, A)
        hit = pred_adv[:, 0] == tgt  # targeted success at angle 0 (no defense)
        recovered_oracle = (pred_adv[:, 1:] == y[:, None]).any(1)  # ORACLE: some angle in [1, 90] gives the true class
        pair = {
            "attack": variant,
            "n": len(y),
            "mean_adv_p_target_no_defense": round(float(p_adv[:, 0, tgt].mean()), 4),
            "linf_mean": round(float((x_adv - x).flatten(1).abs().max(1).values.mean()), 4),
            "targeted_success_no_defense": round(float(hit.float().mean()), 4),
            "mean_curve_adv_p_true": r4(p_adv[:, :, src].mean(0)),
            "mean_curve_adv_p_target": r4(p_adv[:, :, tgt].mean(0)),
            "mean_curve_clean_p_true": r4(p_clean[:, :, src].mean(0)),
            "accuracy_by_angle_adv": r4((pred_adv == y[:, None]).float().mean(0)),
            "accuracy_by_angle_clean": r4((p_clean.argmax(2) == y[:, None]).float().mean(0)),
            "ORACLE_best_angle_median": float(best.median()),
            "ORACLE_mean_p_true_at_best_angle": round(float(p_best.mean()), 4),
            "ORACLE_share_recovered_at_some_angle": round(float(recovered_oracle.float().mean()), 4),
            "ORACLE_share_p_true_above_0.99_at_best_angle": round(float((p_best > 0.99).float().mean()), 4),
            "table": [],
        }
        pos = {int(i): k for k, i in enumerate(idx_all.tolist())}
        for i in table_idx.tolist():
            k = pos.get(int(i))
            if k is None:  # --quick may leave a table image out
                continue
            row = {
                "index": int(i),
                "clean_p_true": round(float(p_clean[k, 0, src]), 4),
                "adv_p_target": round(float(p_adv[k, 0, tgt]), 4),
                "ORACLE_best_angle": int(best[k]),
                "ORACLE_p_true_at_best_angle": round(float(p_best[k]), 4),
                "curve_adv_p_true": r4(p_adv[k, :, src]),
                "curve_adv_p_target": r4(p_adv[k, :, tgt]),
                "curve_clean_p_true": r4(p_clean[k, :, src]),
            }
            if src == 1:
                row["paper"] = dict(zip(("clean_p_true_pct", "adv_p_target_pct", "rotated_p_true_pct", "best_angle"), PAPER_TABLE_I[i]))
            pair["table"].append(row)

        # deployable defenses: fixed angles and a random angle, against the attacker who
        # does not know them (examples above) and the one who does (white-box through them)
        deploy = {}
        variants = [(f"fixed {a}", Rotate(a, fill=lo)) for a in FIXED]
        variants.append((f"random {RANDOM_RANGE[0]:g}-{RANDOM_RANGE[1]:g}", RandomRotate(*RANDOM_RANGE, fill=lo, seed=0)))
        for name, t in variants:
            defended = nn.Sequential(t, net).eval()
            with torch.no_grad():
                clean = float((torch.cat([defended(b) for b in x.split(1000)]).argmax(1) == y).float().mean())
                pred_u = torch.cat([defended(b) for b in x_adv.split(1000)]).argmax(1)
            attacked = EOT(defended, args.eot) if t.randomized else defended
            nw = args.white_box_samples
            if variant == "bim-20":
                x_wb = attack.perturb(attacked, x[:nw], target[:nw], info.bounds, targeted=True)
            else:
                x_wb = targeted_early_stop(attacked, x[:nw], target[:nw], 0.2, 0.01, 20, info.bounds)
            with torch.no_grad():
                pred_w = defended(x_wb).argmax(1)
            deploy[name] = {
                "clean_accuracy_this_class": round(clean, 4),
                "undefended_attacker_accuracy": round(float((pred_u == y).float().mean()), 4),
                "undefended_attacker_targeted_success": round(float((pred_u == tgt).float().mean()), 4),
                "white_box_n": len(pred_w),
                "white_box_accuracy": round(float((pred_w == y[:nw]).float().mean()), 4),
                "white_box_targeted_success": round(float((pred_w == tgt).float().mean()), 4),
                "white_box_eot_draws": args.eot if t.randomized else None,
            }
        pair["deployable"] = deploy
        out["pairs"][f"{src}->{tgt} {variant}"] = pair
        print(f"{src}->{tgt} {variant}: n={len(y)} targeted success {pair['targeted_success_no_defense']:.3f}; "
              f"ORACLE recovered at some angle {pair['ORACLE_share_recovered_at_some_angle']:.3f}", flush=True)  # fmt: skip

    # what each fixed angle costs on the whole clean test set
    cost = {}
    for name, t in [(f"fixed {a}", Rotate(a, fill=lo)) for a in FIXED] + [
        (f"random {RANDOM_RANGE[0]:g}-{RANDOM_RANGE[1]:g}", RandomRotate(*RANDOM_RANGE, fill=lo, seed=0))
    ]:
        with torch.no_grad():
            pred = torch.cat([net(t(b)) for b in x_test.split(1000)]).argmax(1)
        cost[name] = round(float((pred == y_test).float().mean()), 4)
    out["clean_test_accuracy_with_rotation"] = cost
    out["setup"]["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    out["setup"]["torch"] = torch.__version__
    out["setup"]["machine"] = "2-core x86-64 CPU, no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "pairs"}, indent=1))
    for key, pair in out["pairs"].items():
        print(key, json.dumps(pair["deployable"], indent=1))


if __name__ == "__main__":
    main()
