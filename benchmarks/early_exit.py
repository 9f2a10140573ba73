"""Benchmark: what early exit per example saves (issue 24, items 1 and 4).

For every iterative attack with an ``early_exit`` switch, crafted by the kernel
(``advx.runtime.crafting.craft``: passes counted by the kernel, as in a matrix cell) on
the same model and examples with the switch on and off, this records the forward and
backward passes per example, the examples broken (which must be the same set), and the
wall time. Pass counts are exact and machine-independent; the ratio of passes is the
saving. Seconds are reported with the machine's load average before and after: on a
shared, loaded machine they are indicative only.

The model is the digits CNN of the tests (``mnist-cnn`` trained 30 epochs on the
embedded 8x8 digits, no download); budgets are chosen so that some examples survive.

    python benchmarks/early_exit.py [--samples 200] [--threads 1] [--out benchmarks/results]

Results: ``<out>/early-exit-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import advx
from advx.runtime.crafting import CraftOptions, craft

# Published step counts (AutoAttack's 100 APGD/FAB steps, 5000 Square queries cut to 1000
# to keep the whole run within minutes on a loaded CPU); budgets that leave survivors.
CASES = [
    ("bim", {"eps": 0.1, "alpha": 0.01, "steps": 20}),
    ("pgd", {"eps": 0.1, "alpha": 0.01, "steps": 40}),
    ("pgd-l2", {"eps": 0.8, "steps": 40}),
    ("iterative-l2", {"eps": 0.8, "steps": 10}),
    ("apgd-ce", {"eps": 0.1, "steps": 100}),
    ("apgd-dlr", {"eps": 0.1, "steps": 100}),
    ("apgd-ce-l2", {"eps": 0.7, "steps": 100}),
    ("fab", {"eps": 0.1, "steps": 100}),
    ("fab-l2", {"eps": 0.7, "steps": 100}),
    ("square", {"eps": 0.1, "queries": 1000}),
    ("square-l2", {"eps": 0.7, "queries": 1000}),
    ("suite", {"eps": 0.1, "steps": 100, "queries": 1000, "target_classes": 3}),
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reg = advx.Registry.discover()
    ds = reg.dataset("digits")
    x, y = advx.take(ds.load("test"), args.samples)
    model = advx.train_model(ds, reg.model("mnist-cnn"), {"epochs": 30, "seed": 0}, cache=False).model.eval()
    options = CraftOptions(ds.info().bounds, 10, "cpu", args.batch_size, 0)
    load_before = os.getloadavg()
    rows = []
    for name, params in CASES:
        runs = {}
        for early in (True, False):
            t0 = time.perf_counter()
            out = craft(model, reg.attack(name, **params, early_exit=early), x, y, options)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                broken = model(out.x_adv).argmax(1) != y
            runs[early] = (out.cost, broken, seconds)
        (on, b_on, s_on), (off, b_off, s_off) = runs[True], runs[False]
        n = len(x)
        rows.append({
            "attack": name, "params": params, "n": n,
            "broken_on": int(b_on.sum()), "broken_off": int(b_off.sum()), "same_broken_set": bool(torch.equal(b_on, b_off)),
            "forwards_on": on.forwards / n, "forwards_off": off.forwards / n,
            "backwards_on": on.backwards / n, "backwards_off": off.backwards / n,
            "seconds_on": s_on, "seconds_off": s_off,
        })
        print(f"{name}: forwards {on.forwards / n:.1f} / {off.forwards / n:.1f}, same broken set {rows[-1]['same_broken_set']}", flush=True)
    meta = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": args.threads,
        "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
        "batch_size": args.batch_size, "model": "mnist-cnn on digits (30 epochs)",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "early-exit-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Early exit per example: passes and time, on and off",
        "",
        f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, {meta['cpus']} CPUs, {meta['threads']} thread(s);",
        f"load average {load_before[0]:.1f} before, {meta['load_after'][0]:.1f} after (a shared machine: seconds are",
        "indicative only; the passes are counted by the kernel and exact). Model: the digits CNN of the",
        f"tests, {args.samples} test digits, batch {args.batch_size}.",
        "",
        "| attack | settings | broken (on / off) | same set | forwards per example (on / off) | backwards (on / off) | passes saved | seconds (on / off) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        saved = 1 - (r["forwards_on"] + r["backwards_on"]) / (r["forwards_off"] + r["backwards_off"])
        settings = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        lines.append(
            f"| {r['attack']} | {settings} | {r['broken_on']} / {r['broken_off']} | {'yes' if r['same_broken_set'] else 'NO'} | "
            f"{r['forwards_on']:.1f} / {r['forwards_off']:.1f} | {r['backwards_on']:.1f} / {r['backwards_off']:.1f} | "
            f"{saved:.0%} | {r['seconds_on']:.1f} / {r['seconds_off']:.1f} |"
        )
    (out / "early-exit-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
