"""Benchmark: passes and time of PGD-40 and APGD-CE-100, early exit on and off, beside the
peers (issue 24, item 4 (b)).

On the same model, examples and device, in one process: advx's ``pgd`` (eps 0.3, 40 steps of
0.01, random start) and ``apgd-ce`` (eps 0.3, 100 steps) with ``early_exit`` on and off,
torchattacks' ``PGD`` and ``APGD`` and adv-lib's ``pgd_linf`` and ``apgd`` at the same
settings. Every attack's forward and backward passes are counted by the same forward hook on
the model (``attacks.Counter``: examples through the model, and through its output's
gradient), in the timed call itself (the hook costs every library the same); robust accuracy
is the share of examples the model still classifies correctly at the returned points. Two
models (``_models.py``): ``mnist`` (undefended) and ``mnist-at`` (PGD adversarial training).
A peer that is not installed is skipped with a line saying so.

Target (issue 24): on the undefended model, advx's PGD-40 spends at least 3x fewer passes
than the peers' at identical robust accuracy.

    python benchmarks/early_exit_peers.py [--samples 500] [--threads 2] [--models mnist,mnist-at]

Results: ``benchmarks/results/early-exit-peers-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import sys

import torch

import advx
from _models import EPS
from _meta import begin, finish, header, models_under_test, parser, peer_pgd_apgd, timed

PGD = {"eps": 0.3, "alpha": 0.01, "steps": 40}
APGD = {"eps": 0.3, "steps": 100}


def contenders(model, bounds):
    """``[(attack, library, variant, fn(x, y) -> x_adv)]`` and the lines naming skipped peers."""
    reg = advx.Registry.discover()
    out = []
    for name, params in (("pgd", PGD), ("apgd-ce", APGD)):
        for early in (True, False):
            a = reg.attack(name, **params, early_exit=early)
            out.append((name, "advx", "early exit" if early else "no early exit", lambda x, y, a=a: a.perturb(model, x, y, bounds)))
    peers, skipped = peer_pgd_apgd(model, PGD["steps"], APGD["steps"], alpha=lambda eps: PGD["alpha"])
    eps = {"pgd": PGD["eps"], "apgd-ce": APGD["eps"]}
    out += [(name, lib, "", lambda x, y, fn=fn, e=eps[name]: fn(x, y, e)) for name, lib, fn in peers]
    order = {"pgd": 0, "apgd-ce": 1}
    return sorted(out, key=lambda r: order[r[0]]), skipped


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--models", default="mnist,mnist-at")
    args = ap.parse_args(argv)
    meta = begin(args)
    rows, skipped = [], []
    for mname, model, x, y, bounds in models_under_test(args):
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        runs, skipped = contenders(model, bounds)
        for attack, lib, variant, fn in runs:
            got = timed(model, fn, x, y, args.device)
            robust, linf, seconds = got["robust_accuracy"], got["max_linf"], got["seconds"]
            rows.append({
                "model": mname, "attack": attack, "library": lib, "variant": variant, "n": len(x), "clean": clean,
                "robust_accuracy": robust, "max_linf": linf, "forwards": got["forwards"],
                "backwards": got["backwards"], "seconds": seconds,
            })
            print(f"{mname} {attack} {lib} {variant}: robust {robust:.4f}, fwd {got['forwards']:.1f}, bwd {got['backwards']:.1f}, {seconds:.1f} s", flush=True)
    meta, md = finish(args, meta, "early-exit-peers", rows, skipped)
    lines = header("PGD-40 and APGD-CE-100: passes and time, early exit on and off, beside the peers", meta) + [
        f"Models: {'; '.join(f'`{k}`: {v}' for k, v in meta['models'].items())}. {args.samples} test images, one batch, eps {EPS['mnist']}.",
        "Passes: examples through the model per example, counted by one forward hook on the model for every library",
        "(forwards; backwards: through the output's gradient). Robust accuracy: correct at the returned points.",
        *[f"- {s}" for s in skipped],
        "",
        "| model | attack | library | variant | robust accuracy | forwards / example | backwards / example | passes vs advx early exit | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = next(o for o in rows if o["model"] == r["model"] and o["attack"] == r["attack"] and o["library"] == "advx" and o["variant"] == "early exit")
        ratio = (r["forwards"] + r["backwards"]) / max(ours["forwards"] + ours["backwards"], 1e-9)
        lines.append(
            f"| {r['model']} | {r['attack']} | {r['library']} | {r['variant']} | {r['robust_accuracy']:.4f} | {r['forwards']:.1f} | "
            f"{r['backwards']:.1f} | {ratio:.1f}x | {r['seconds']:.2f} |"
        )
    md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
