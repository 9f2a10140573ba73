"""Benchmark: AttackBench's optimality of advx's attacks and the peers' on the same models
(issue 24, items 3 and 4 (c)).

For each model (``_models.py``) and the same examples, every fixed-budget attack runs at each
eps of a sweep, and the minimum-norm attacks once; the per-example robust flags go through
``advx.analysis.optimality.optimality`` (the function behind ``advx results --optimality``):
per attack its mean robust accuracy over [0, eps max], the per-example best over all the
attacks here, their gap and ratio (optimality: 1 = no attack here does better anywhere).

Attacks, L-inf: advx ``pgd`` (40 steps of 2.5 eps / 40, random start), ``apgd-ce`` (100
steps), ``fab`` (minimum norm: 100 steps, early exit off, eps large enough to keep every
point found); torchattacks ``PGD`` and ``APGD`` at the same settings; adv-lib ``pgd_linf``,
``apgd`` and ``fmn`` (its Fast Minimum-Norm attack, 100 steps, minimum norm). Passes per
example are counted by one forward hook for all (the sum over the sweep). AttackBench fixes
2,000 forward+backward passes per attack; here each attack runs its published settings and
its passes are reported beside its optimality. A peer that is not installed is skipped with
a line saying so.

    python benchmarks/optimality.py [--models digits,mnist,mnist-at] [--samples 200]

Results: ``benchmarks/results/optimality-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import math
import time

import torch

import advx
from advx.analysis.optimality import optimality, robust_on_grid
from _meta import begin, finish, header, models_under_test, parser, peer_pgd_apgd, sync
from attacks import Counter, import_adv_lib

GRIDS = {
    "digits": [0.02, 0.04, 0.06, 0.08, 0.1, 0.15],
    "mnist": [0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
    "mnist-at": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
}


def attacks(model, bounds):
    """``[(label, library, kind, fn)]``: kind ``"eps"`` (``fn(x, y, eps)``) or ``"min"`` (``fn(x, y)``)."""
    reg = advx.Registry.discover()
    out, skipped = [], []

    def ours(name, **extra):
        def fn(x, y, eps):
            params = {"eps": eps, **extra}
            if name == "pgd":
                params.update(alpha=2.5 * eps / 40, steps=40)
            return reg.attack(name, **params).perturb(model, x, y, bounds)

        return fn

    out.append(("advx pgd-40", "advx", "eps", ours("pgd")))
    out.append(("advx apgd-ce-100", "advx", "eps", ours("apgd-ce", steps=100)))
    fab = reg.attack("fab", eps=10.0, steps=100, early_exit=False)
    out.append(("advx fab-100 (minimum norm)", "advx", "min", lambda x, y: fab.perturb(model, x, y, bounds)))
    peers, peers_skipped = peer_pgd_apgd(model)
    skipped += peers_skipped
    out += [(PEER_LABELS[(name, lib)], lib, "eps", fn) for name, lib, fn in peers]
    if import_adv_lib() is not None:
        try:
            from adv_lib.attacks.fast_minimum_norm import fmn

            out.append(("adv-lib fmn-100 (minimum norm)", "adv-lib", "min", lambda x, y: fmn(model, x, y, norm=float("inf"), steps=100)))
        except Exception as exc:  # noqa: BLE001
            skipped.append(f"adv-lib fmn: not importable ({type(exc).__name__}), skipped")
    return out, skipped


#: the tables' names of the peers' attacks
PEER_LABELS = {
    ("pgd", "torchattacks"): "torchattacks PGD-40", ("apgd-ce", "torchattacks"): "torchattacks APGD-CE-100",
    ("pgd", "adv-lib"): "adv-lib pgd_linf-40", ("apgd-ce", "adv-lib"): "adv-lib apgd-ce-100",
}


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", default="digits,mnist,mnist-at")
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args(argv)
    meta = begin(args)
    rows, skipped = [], []
    for mname, model, x, y, bounds in models_under_test(args):
        grid = GRIDS[mname]
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        runs, skipped = attacks(model, bounds)
        curves, cost = {}, {}
        for label, lib, kind, fn in runs:
            torch.manual_seed(0)
            counter = Counter(model)
            sync(args.device)
            t0 = time.perf_counter()
            if kind == "eps":
                cols = []
                for eps in grid:
                    x_adv = fn(x, y, eps)
                    assert float((x_adv - x).detach().abs().amax()) <= eps * (1 + 1e-5) + 1e-6, f"{label} left the ball at eps {eps}"
                    with torch.no_grad():
                        cols.append(correct & (model(x_adv).argmax(1) == y))
                curves[label] = torch.stack(cols, 1)
            else:
                x_adv = fn(x, y)
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != y
                d = (x_adv - x).flatten(1).abs().amax(1).double()
                curves[label] = robust_on_grid(correct, torch.where(fooled & correct, d, torch.full_like(d, math.inf)), grid)
            sync(args.device)
            cost[label] = (time.perf_counter() - t0, (counter.forwards + counter.backwards) / len(x))
            counter.remove()
            print(f"{mname}: {label}: {cost[label][0]:.1f} s, {cost[label][1]:.0f} passes per example", flush=True)
        for label, (auc, best, gap, opt) in optimality(correct, curves, grid).items():
            rows.append({
                "model": mname, "attack": label, "grid": grid, "n": len(x), "clean": float(correct.float().mean()),
                "robust_at_grid": [float(v) for v in curves[label].float().mean(0)],
                "mean_robust_accuracy": auc, "best_mean_robust_accuracy": best, "gap": gap, "optimality": opt,
                "passes_per_example": cost[label][1], "seconds": cost[label][0],
            })
    meta, md = finish(args, meta, "optimality", rows, skipped)
    lines = header("Optimality (AttackBench) of advx's attacks and the peers' on the same models", meta) + [
        f"Models: {'; '.join(f'`{k}`: {v}' for k, v in meta['models'].items())}. {args.samples} test examples each, one batch.",
        "Mean robust accuracy: the area under the attack's robust-accuracy curve over [0, eps max] (trapezoids on eps 0 and the",
        "grid), divided by eps max; best: the same for the per-example best over every attack of the table (robust at eps only",
        "if no attack broke the example at eps or below). Gap: the difference; optimality: best / attack (1: nothing here does",
        "better anywhere). Passes: forwards + backwards per example over the whole sweep (one hook, every library).",
        *[f"- {s}" for s in skipped],
        "",
    ]
    for mname in args.models.split(","):
        mrows = sorted((r for r in rows if r["model"] == mname), key=lambda r: -r["optimality"])
        if not mrows:
            continue
        lines += [
            f"## {mname} (clean accuracy {mrows[0]['clean']:.4f}; eps {', '.join(f'{g:g}' for g in mrows[0]['grid'])})", "",
            "| attack | robust accuracy at each eps | mean robust accuracy | per-example best | gap | optimality | passes / example | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in mrows:
            at = " / ".join(f"{v:.3f}" for v in r["robust_at_grid"])
            lines.append(
                f"| {r['attack']} | {at} | {r['mean_robust_accuracy']:.4f} | {r['best_mean_robust_accuracy']:.4f} | {r['gap']:.4f} | "
                f"{r['optimality']:.3f} | {r['passes_per_example']:.0f} | {r['seconds']:.1f} |"
            )
        lines.append("")
    md.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
