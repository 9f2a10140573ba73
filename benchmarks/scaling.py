"""Matrix throughput against worker count: cells per second with 1..N workers, and the scaling ratio.

The matrix has independent cells (one model per cell, trained beforehand so training is
not timed): N models x PGD. It runs once per worker count through the multi-device
executor (``cpu,cpu,...`` here; ``cuda:0,cuda:1,...`` on a GPU machine) or Ray
(``--executor ray``), wall time measured around ``run_matrix``. The scaling ratio is
throughput(N) / throughput(1); the target is at least 0.9 N on independent cells, which a
machine can only show with N free cores or devices: the number of cores is printed beside it.

    python benchmarks/scaling.py [--workers 1 2] [--device cpu] [--executor local|ray]

Results go to ``benchmarks/results/scaling-<device>.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import advx


def spec(cache: str, device: str, executor: str, cells: int, samples: int = 256, steps: int = 20) -> dict:
    return {
        "matrix": {"name": "scaling", "samples": samples, "batch_size": 128, "device": device, "cache_dir": cache, "diagnostics": False, "executor": executor},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mnist-cnn", "train": {"epochs": 2, "seed": s}} for s in range(cells)],
        "attacks": [{"name": "pgd", "eps": 0.1, "alpha": 0.02, "steps": steps}],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--executor", default="local", choices=["local", "ray"])
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--samples", type=int, default=256, help="evaluation examples per cell (digits has 360 test images)")
    ap.add_argument("--steps", type=int, default=20, help="PGD steps (cell size)")
    args = ap.parse_args()
    cache = tempfile.mkdtemp()
    advx.run_matrix(spec(cache, "cpu", "local", args.cells))  # train every model once, untimed
    rows = []
    for n in args.workers:
        device = ",".join([args.device] * n) if args.executor == "local" else args.device
        t0 = time.perf_counter()
        res = advx.run_matrix(spec(cache, device, args.executor, args.cells, args.samples, args.steps), rerun=True)
        wall = time.perf_counter() - t0
        assert res.failed == 0, [r.get("error") for r in res.rows]
        rows.append((n, wall, args.cells / wall))
    base = rows[0][2]
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    lines = [
        f"# Matrix throughput against workers ({args.executor} executor, {args.device}, {name})",
        "",
        f"`python benchmarks/scaling.py --workers {' '.join(map(str, args.workers))} --device {args.device} --executor {args.executor} "
        f"--cells {args.cells} --samples {args.samples} --steps {args.steps}`, "
        f"{time.strftime('%Y-%m-%d')}; {args.cells} independent cells (mnist-cnn on digits, PGD {args.steps} steps, "
        f"{args.samples} examples); models trained beforehand. One in-process worker already uses every core through "
        "torch's threads; N worker processes split the cores and each pays a start-up (torch import, plugin discovery).",
        "",
        "| workers | wall seconds | cells/s | scaling ratio | target (0.9 N) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, wall, tput in rows:
        lines.append(f"| {n} | {wall:.1f} | {tput:.3f} | {tput / base:.2f} | {0.9 * n:.1f} |")
    out = Path(__file__).parent / "results" / f"scaling-{args.device.split(':')[0]}-{args.executor}.md"
    previous = out.read_text() + "\n" if out.exists() else ""
    out.write_text(previous + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
