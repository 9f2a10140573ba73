"""Benchmark: advx's ``suite`` against AutoAttack (standard version), time and robust accuracy
(issue 24, items 2 and 4 (a)).

In one process, on the same model, examples (one batch) and device, one run each:

* advx ``suite`` at AutoAttack's standard settings (APGD-CE, APGD-T and FAB-T towards the 9
  classes of highest clean logit, Square 5000 queries; early exit per example, the default);
* advx ``suite`` with MALT's target selection (``target_selection = "malt"``) and fewer targets
  (``--malt-targets``, default 3), everything else the same;
* the same, and Square leaving the examples whose margin is not closing
  (``square_hopeless_after``, ``--hopeless-after``, default 0.1: judged from query 500 of 5000);
* torchattacks' ``AutoAttack(version="standard")`` (note: its APGD, APGD-T and FAB run their
  classes' default of 10 steps, not AutoAttack's 100; its Square 5000 queries);
* the original AutoAttack (``from autoattack import AutoAttack``, ``version="standard"``).

For each: seconds, robust accuracy (correct at the returned points, checked here with the
same forward for every library), passes per example (forward hook, ``attacks.Counter``), and
the ratio of each peer's time to each advx configuration's. For advx, the seconds and the
examples broken per member (``Suite.broken_by``) are recorded too: the profile that says
where the time goes. A peer that is not installed is skipped with a line saying so.

Target (issue 24): ours at least 1.5x faster than each AutoAttack at equal or lower robust
accuracy, on both models (``_models.py``: ``digits``, 300 test digits, eps 0.1; ``mnist-at``,
adversarially trained, eps 0.3).

    python benchmarks/suite_vs_autoattack.py [--models digits,mnist-at] [--samples digits=300,mnist-at=200]

Results: ``benchmarks/results/suite-vs-autoattack-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import torch

import advx
from _meta import begin, finish, header, parser, per_model, timed
from _models import EPS, load


def advx_suite(model, bounds, eps, **params):
    """The suite as a callable, timing each member (``_run`` wrapped on the instance)."""
    attack = advx.Registry.discover().attack("suite", eps=eps, **params)
    member_seconds: dict[str, float] = {}
    run = attack._run

    def timed_run(member, *a, **k):
        t0 = time.perf_counter()
        out = run(member, *a, **k)
        member_seconds[member] = member_seconds.get(member, 0.0) + time.perf_counter() - t0
        return out

    attack._run = timed_run

    def fn(x, y):
        member_seconds.clear()
        return attack.perturb(model, x, y, bounds)

    def profile():
        names = ["clean"] + attack.member_names
        counts = {name: int((attack.broken_by == i).sum()) for i, name in zip([-2, *range(len(attack.member_names))], names)}
        counts["unbroken"] = int((attack.broken_by == -1).sum())
        return {"member_seconds": dict(member_seconds), "broken_by": counts}

    return fn, profile


def contenders(model, bounds, eps, malt_targets, hopeless, steps=None, peers=("torchattacks", "autoattack")):
    """The contenders; with ``steps`` (a list), only advx's fast configuration at each of those
    numbers of steps per APGD and FAB run (torchattacks' standard AutoAttack runs 10) beside
    the ``peers``."""
    out, skipped = [], []
    if steps is not None:
        for n in steps:
            fn, prof = advx_suite(model, bounds, eps, steps=n, target_selection="malt", target_classes=malt_targets, square_hopeless_after=hopeless)
            out.append((f"advx suite, {n} steps, MALT targets ({malt_targets}), Square hopeless_after {hopeless}", "advx", fn, prof))
        return out + _peers(model, eps, peers, skipped), skipped
    fn, prof = advx_suite(model, bounds, eps)
    out.append(("advx suite, AutoAttack standard settings (logit targets, 9)", "advx", fn, prof))
    fn, prof = advx_suite(model, bounds, eps, target_selection="malt", target_classes=malt_targets)
    out.append((f"advx suite, MALT targets ({malt_targets})", "advx", fn, prof))
    fn, prof = advx_suite(model, bounds, eps, target_selection="malt", target_classes=malt_targets, square_hopeless_after=hopeless)
    out.append((f"advx suite, MALT targets ({malt_targets}), Square hopeless_after {hopeless}", "advx", fn, prof))
    return out + _peers(model, eps, peers, skipped), skipped


def _peers(model, eps, peers, skipped):
    out = []
    if "torchattacks" in peers:
        try:
            import torchattacks as ta

            a = ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
            out.append(("torchattacks AutoAttack(version='standard')", "torchattacks", lambda x, y: a(x, y), None))
        except ImportError:
            skipped.append("torchattacks: not installed, skipped")
    if "autoattack" in peers:
        try:
            from autoattack import AutoAttack

            aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=str(next(model.parameters()).device), verbose=False)
            aa.seed = 0

            def original(x, y):
                with contextlib.redirect_stdout(io.StringIO()):
                    return aa.run_standard_evaluation(x, y, bs=len(x))

            out.append(("original AutoAttack (version='standard')", "autoattack", original, None))
        except ImportError:
            skipped.append("autoattack (the original AutoAttack): not installed, skipped")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", default="digits,mnist-at")
    ap.add_argument("--samples", default="digits=300,mnist-at=200", help="examples per model, name=n,...")
    ap.add_argument("--malt-targets", type=int, default=3)
    ap.add_argument("--hopeless-after", type=float, default=0.1, help="square_hopeless_after of the third advx configuration")
    ap.add_argument("--steps", type=lambda v: [int(n) for n in v.split(",")],
                    help="instead: only the third configuration at each of these steps per APGD/FAB run (e.g. 10,20), beside --peers")
    ap.add_argument("--peers", default="torchattacks,autoattack")
    ap.add_argument("--name", default="suite-vs-autoattack", help="stem of the result files")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="also run advx's fast configuration and the peers on the model as the channels_last option runs it")
    args = ap.parse_args(argv)
    samples = per_model(args.samples)
    meta = begin(args)
    rows, skipped = [], []
    for mname in args.models.split(","):
        model, x, y, bounds = load(mname, samples.get(mname, 200), args.device)
        for p in model.parameters():
            p.requires_grad_(True)
        eps = EPS[mname]
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        layouts = [("default", model, args.steps)]
        if args.channels_last:
            # the model as advx's channels_last option runs it: converted, and every input put in
            # channels-last strides (PassCounter(channels_last=True)); the peers get the same module
            cl = advx.PassCounter(copy.deepcopy(model).to(memory_format=torch.channels_last), channels_last=True).eval()  # eval: a peer puts back the mode it found
            layouts.append(("channels_last", cl, args.steps if args.steps is not None else [100]))
        for layout, net, steps in layouts:
            runs, skipped = contenders(net, bounds, eps, args.malt_targets, args.hopeless_after, steps, args.peers.split(","))
            for label, lib, fn, prof in runs:
                got = timed(net, fn, x, y, args.device)
                robust, linf, seconds = got["robust_accuracy"], got["max_linf"], got["seconds"]
                row = {
                    "model": mname, "eps": eps, "n": len(x), "clean": clean, "contender": label, "library": lib, "layout": layout,
                    "robust_accuracy": robust, "max_linf": linf, "seconds": seconds,
                    "forwards": got["forwards"], "backwards": got["backwards"],
                }
                if prof is not None:
                    row.update(prof())
                rows.append(row)
                print(f"{mname} [{layout}]: {label}: robust {robust:.4f} in {seconds:.1f} s (max Linf {linf:.4f})", flush=True)
    meta, md = finish(args, meta, args.name, rows, skipped, malt_targets=args.malt_targets, hopeless_after=args.hopeless_after)
    md.write_text("\n".join(markdown(meta, rows)) + "\n")


def markdown(meta, rows):
    lines = header("advx's suite against AutoAttack (standard version): time and robust accuracy", meta) + [
        f"Models: {'; '.join(f'`{k}` (eps {EPS[k]}): {v}' for k, v in meta['models'].items())}. One batch per model, one run per contender.",
        "Robust accuracy: correct at the returned points (the same forward for every library). Passes: examples through the",
        "model per example (one forward hook, every library). Speed-up: the peer's seconds over advx's (> 1: advx faster).",
        "torchattacks' AutoAttack(version='standard') runs APGD, APGD-T and FAB-T with 10 steps each (its classes' default),",
        "the original AutoAttack and advx with 100: a smaller budget, not the same attack.",
        *[f"- {s}" for s in meta["skipped"]],
        "",
        "Layout `channels_last`: the model as advx's `channels_last` matrix option runs it (converted, every input in",
        "channels-last strides: `advx.PassCounter(..., channels_last=True)`), for advx and the peers alike; ratios compare",
        "contenders on the same layout, and the last two columns compare advx on that layout with the peers on the default one.",
        "",
        "| model | layout | contender | robust accuracy | seconds | forwards / ex. | backwards / ex. | torchattacks / this | original AA / this | torchattacks (default layout) / this | original AA (default layout) / this |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        layout = r.get("layout", "default")

        def ratios(lay):
            peers = {p["library"]: p for p in rows if p["model"] == r["model"] and p.get("layout", "default") == lay and p["library"] != "advx"}
            return [f"{peers[p]['seconds'] / r['seconds']:.2f}x" if p in peers and r["library"] == "advx" else "" for p in ("torchattacks", "autoattack")]

        same, plain = ratios(layout), (ratios("default") if layout != "default" else ["", ""])
        lines.append(
            f"| {r['model']} | {layout} | {r['contender']} | {r['robust_accuracy']:.4f} | {r['seconds']:.1f} | {r['forwards']:.0f} | "
            f"{r['backwards']:.0f} | {same[0]} | {same[1]} | {plain[0]} | {plain[1]} |"
        )
    lines += ["", "Where advx's time goes (seconds per member; examples broken per member, of the batch):", ""]
    for r in rows:
        if "member_seconds" in r:
            secs = ", ".join(f"{k} {v:.1f} s" for k, v in r["member_seconds"].items())
            broken = ", ".join(f"{k} {v}" for k, v in r["broken_by"].items())
            lines.append(f"- {r['model']} [{r.get('layout', 'default')}], {r['contender']}: {secs}; broken: {broken}")
    return lines


if __name__ == "__main__":
    main()
