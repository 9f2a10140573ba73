"""Benchmark: APGD-CE-100 with its cross-entropy in float64 against float32 (advx before the
change) and against the peers' APGD-CE, on the same models and examples.

In float32 a confident network's softmax rounds p(true class) to exactly 1.0: the
cross-entropy's gradient loses its true-class term (the signed step follows the other
classes' tiny terms) and the loss rounds to 0 (APGD's checkpoints cannot see it rise).
advx now takes APGD's cross-entropy in float64 (``plugins/attacks/_common.ce_loss``). This
runs, in one process on the same examples: advx's ``apgd-ce`` (eps per model, 100 steps,
1 restart, early exit as default) as it is (float64) and with the float32 loss it had
before (``apgd.ce_loss`` swapped for the float32 cross-entropy for that run only), and
torchattacks' ``APGD`` (``loss="ce"``, seed 0), the original AutoAttack's ``APGDAttack``
(``loss="ce"``, seed 0) and adv-lib's ``apgd`` (``loss_function="ce"``), all 100 steps, one
restart. Every peer computes its loss in float32. Robust accuracy is the share of examples the
model still classifies correctly at the returned points; "differ" counts the examples whose
outcome (broken or not) differs from advx float64's. Passes are counted by one forward hook on
the model (``attacks.Counter``). Also reported: the share of clean examples whose float32
p(true class) is exactly 1.0. A peer that is not installed is skipped with a line saying so.

Models (``_models.py``): ``digits`` (eps 0.1, 300 examples), ``mnist-at`` (PGD adversarial
training on MNIST, eps 0.3, 200 examples) and ``seed002`` (seed 002's undefended MNIST
network, where a quarter of the test images saturate in float32; eps 0.1, 500 examples).
``--samples`` takes ``digits=300,mnist-at=200,seed002=500``. "points differ" counts the
examples whose returned point differs from advx float64's by more than 1e-6 (L-inf).

    python benchmarks/apgd_float64.py [--models digits,mnist-at,seed002] [--samples digits=300,mnist-at=200,seed002=500] [--threads 1]

Results: ``benchmarks/results/apgd-float64-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import advx
from _meta import begin, finish, header, parser, per_model, timed
from _models import EPS, load

STEPS = 100


def float32_ce(logits, y, targeted):
    """APGD's cross-entropy as it was before the change: float32, per example, signed."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return -ce if targeted else ce


def contenders(model, bounds, eps):
    """``[(library, variant, fn(x, y) -> x_adv)]`` and the lines naming the peers skipped."""
    from advx.plugins.attacks import apgd as apgd_module

    attack = advx.Registry.discover().attack("apgd-ce", eps=eps, steps=STEPS)

    def advx_float32(x, y):
        exact = apgd_module.ce_loss
        apgd_module.ce_loss = float32_ce
        try:
            return attack.perturb(model, x, y, bounds)
        finally:
            apgd_module.ce_loss = exact

    out = [
        ("advx", "float64 CE (now)", lambda x, y: attack.perturb(model, x, y, bounds)),
        ("advx", "float32 CE (before)", advx_float32),
    ]
    skipped = []
    try:
        import torchattacks as ta

        out.append(("torchattacks", "APGD loss=ce", lambda x, y: ta.APGD(model, norm="Linf", eps=eps, steps=STEPS, loss="ce", seed=0)(x, y)))
    except ImportError:
        skipped.append("torchattacks: not installed, skipped")
    try:
        from autoattack.autopgd_base import APGDAttack

        def original(x, y):
            a = APGDAttack(model, n_iter=STEPS, norm="Linf", n_restarts=1, eps=eps, seed=0, loss="ce", device=x.device)
            return a.perturb(x, y)

        out.append(("autoattack", "APGDAttack loss=ce", original))
    except ImportError:
        skipped.append("autoattack (the original AutoAttack): not installed, skipped")
    from attacks import import_adv_lib

    advlib = import_adv_lib()
    if advlib is None or advlib[3] is None:
        skipped.append("adv-lib: not installed, skipped")
    else:
        apgd = advlib[3]
        out.append(("adv-lib", "apgd loss_function=ce", lambda x, y: apgd(model, x, y, eps=eps, norm=float("inf"), n_iter=STEPS, loss_function="ce")))
    return out, skipped


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, threads=1)
    ap.add_argument("--models", default="digits,mnist-at,seed002")
    ap.add_argument("--samples", default="digits=300,mnist-at=200,seed002=500", help="examples per model, name=count,...")
    args = ap.parse_args(argv)
    samples = per_model(args.samples)
    meta = begin(args)
    rows, skipped, saturated = [], [], {}
    for mname in args.models.split(","):
        model, x, y, bounds = load(mname, samples[mname], args.device)
        for p in model.parameters():  # as a user's model: an attack computing parameter gradients pays here
            p.requires_grad_(True)
        eps = EPS[mname]
        with torch.no_grad():
            logits = model(x)
            clean = float((logits.argmax(1) == y).float().mean())
            saturated[mname] = float((F.softmax(logits, 1).gather(1, y[:, None]) == 1.0).float().mean())
        runs, skipped = contenders(model, bounds, eps)
        reference = reference_x = None
        for lib, variant, fn in runs:
            got = timed(model, fn, x, y, args.device)
            x_adv = got["x_adv"].detach()
            with torch.no_grad():
                broken = model(x_adv).argmax(1) != y
            if reference is None:
                reference, reference_x = broken, x_adv
            rows.append({
                "model": mname, "eps": eps, "n": len(x), "clean": clean, "library": lib, "variant": variant,
                "robust_accuracy": got["robust_accuracy"], "robust": int((~broken).sum()),
                "differ_from_advx_float64": int((broken != reference).sum()),
                "broken_only_here": int((broken & ~reference).sum()), "broken_only_by_advx_float64": int((reference & ~broken).sum()),
                "points_differ_from_advx_float64": int(((x_adv - reference_x).flatten(1).abs().amax(1) > 1e-6).sum()),
                "max_linf": got["max_linf"], "forwards": got["forwards"], "backwards": got["backwards"], "seconds": got["seconds"],
            })
            r = rows[-1]
            print(f"{mname} {lib} {variant}: robust {r['robust_accuracy']:.4f} ({r['robust']}/{len(x)}), differ {r['differ_from_advx_float64']}, "
                  f"points differ {r['points_differ_from_advx_float64']}, "
                  f"max linf {r['max_linf']:.4f}, {r['seconds']:.1f} s", flush=True)
    meta, md = finish(args, meta, "apgd-float64", rows, skipped, saturated_clean=saturated, steps=STEPS, samples_per_model=samples)
    lines = header("APGD-CE-100: cross-entropy in float64 against float32, beside the peers", meta) + [
        f"Models: {'; '.join(f'`{k}`: {v} (eps {EPS[k]}, {samples[k]} test examples, one batch)' for k, v in meta['models'].items())}.",
        "Every contender: 100 steps, one restart, L-inf. Robust accuracy: correct at the returned points. "
        "Differ: examples whose outcome differs from advx float64's (broken here only / broken by advx float64 only).",
        "Clean examples whose float32 p(true class) is exactly 1.0: "
        + "; ".join(f"`{k}` {v:.3f}" for k, v in saturated.items()) + ".",
        *[f"- {s}" for s in skipped],
        "",
        "| model | library | variant | robust accuracy | robust / n | outcomes differ (here only / float64 only) | points differ | max L-inf | forwards / example | backwards / example | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['library']} | {r['variant']} | {r['robust_accuracy']:.4f} | {r['robust']}/{r['n']} | "
            f"{r['differ_from_advx_float64']} ({r['broken_only_here']} / {r['broken_only_by_advx_float64']}) | "
            f"{r['points_differ_from_advx_float64']} | {r['max_linf']:.4f} | "
            f"{r['forwards']:.1f} | {r['backwards']:.1f} | {r['seconds']:.2f} |"
        )
    md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
