"""Benchmark: the CPU allocator tuning (``advx.tune_cpu_allocator``) against glibc's defaults.

Each variant runs in a fresh process (the tuning is process-wide and cannot be undone), the
two alternating ``--rounds`` times: forward + summed cross-entropy + input-gradient backward
of a freshly initialised mnist-cnn and cifar-cnn on batches of the sizes a matrix run and
its attacks see (500, 128, 1000, 37, 500, ... cycled, ``--steps`` steps), one torch thread.
Per variant: wall time of the steps, minor page faults per step and peak resident memory.

    python benchmarks/allocator.py [--rounds 3] [--steps 60]

Writes ``benchmarks/results/allocator-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BATCHES = (500, 128, 1000, 37, 500)

CHILD = r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
import advx
tuned = advx.tune_cpu_allocator() if sys.argv[1] == "tuned" else False
torch.set_num_threads(1)
reg = advx.Registry.discover()
model, steps = sys.argv[2], int(sys.argv[3])
shape = (1, 28, 28) if model == "mnist-cnn" else (3, 32, 32)
info = advx.DatasetInfo(name="x", input_shape=shape, num_classes=10)
torch.manual_seed(0)
net = advx.build_model(reg.model(model), info).eval()
batches = [int(b) for b in sys.argv[4].split(",")]
def step(n):
    x = torch.rand(n, *shape).requires_grad_(True)
    y = torch.randint(10, (n,))
    torch.autograd.grad(F.cross_entropy(net(x), y, reduction="sum"), x)
for n in batches:  # warm-up: one of each size
    step(n)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t0 = time.perf_counter()
for i in range(steps):
    step(batches[i % len(batches)])
seconds = time.perf_counter() - t0
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"tuned": tuned, "seconds": seconds, "faults_per_step": (r.ru_minflt - f0) / steps,
                  "max_rss_mb": r.ru_maxrss / 1024}))
"""


def run(variant: str, model: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, model, str(steps), ",".join(map(str, BATCHES))],
        capture_output=True, text=True, check=True, env={**os.environ, "ADVX_MALLOC_TUNING": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    rows = []
    for model in ("mnist-cnn", "cifar-cnn"):
        got: dict[str, list[dict]] = {"default": [], "tuned": []}
        for _ in range(args.rounds):
            for variant in got:
                got[variant].append(run(variant, model, args.steps))
        row = {"model": model, "steps": args.steps, "batches": list(BATCHES)}
        for variant, runs in got.items():
            row[variant] = {
                "seconds": statistics.median(r["seconds"] for r in runs),
                "seconds_all": [r["seconds"] for r in runs],
                "faults_per_step": statistics.median(r["faults_per_step"] for r in runs),
                "max_rss_mb": max(r["max_rss_mb"] for r in runs),
                "applied": all(r["tuned"] for r in runs) if variant == "tuned" else False,
            }
        row["speedup"] = row["default"]["seconds"] / row["tuned"]["seconds"]
        rows.append(row)
        print(f"{model}: default {row['default']['seconds']:.2f} s, tuned {row['tuned']['seconds']:.2f} s, "
              f"{row['speedup']:.2f}x; faults/step {row['default']['faults_per_step']:.0f} -> {row['tuned']['faults_per_step']:.0f}",
              flush=True)
    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()),
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / "allocator-cpu"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# CPU allocator: glibc defaults vs advx.tune_cpu_allocator",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['platform']}, {meta['libc']}, {meta['cpu_count']} CPUs, one torch "
        f"thread; each variant a fresh process, alternating, median of {args.rounds}. {args.steps} forward+backward steps on "
        f"batches cycling through {', '.join(map(str, BATCHES))}.",
        "",
        "| model | default s | tuned s | speed-up | page faults / step, default | tuned | peak RSS MB, default | tuned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, t = r["default"], r["tuned"]
        lines.append(
            f"| {r['model']} | {d['seconds']:.2f} | {t['seconds']:.2f} | {r['speedup']:.2f}x | {d['faults_per_step']:.0f} | "
            f"{t['faults_per_step']:.0f} | {d['max_rss_mb']:.0f} | {t['max_rss_mb']:.0f} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
