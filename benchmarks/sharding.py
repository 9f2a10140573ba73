"""One large cell spread over workers: throughput of a sharded cell on 1 and 2 workers.

The cell: MNIST, all 10,000 test images, PGD-40 (L-inf, eps 0.3, no early exit: every
example costs its 40 steps) on a trained ``mnist-cnn``. The model is trained first, outside
the timed part, into a cache directory every row reads. Each row is one ``run_matrix`` of
the cell into a fresh results file, timed from before the executor is made to the merged
row (start-up included: worker processes spawned, torch imported, plugins discovered, a
local Ray cluster started):

* ``unsharded``: the cell whole, in this process, with the same threads as one worker (the
  reference the sharded rows must equal, example by example);
* ``workers 1`` / ``workers 2``: the cell in shards over 1 or 2 worker processes
  (``MultiDeviceExecutor``), 1 torch thread each;
* ``ray 1`` / ``ray 2``: the shards as Ray tasks on a local cluster of 1 or 2 CPUs, 1
  thread each.

Throughput is images per second of wall time; the ratio is to the one-worker row of the
same executor, target at least 0.9 N. Every row's per-example records are compared with
the unsharded row's. The machine is shared: run it under the heavy lock
(e.g. ``flock LOCKFILE python benchmarks/sharding.py``), and the load average before and after is
recorded with the numbers.

    ADVX_DATA=... python benchmarks/sharding.py [--samples 10000] [--steps 40] [--shard-size 1000]

Results: ``benchmarks/results/sharding-<device>.md`` and ``.json``. On a GPU machine
(``--device cuda``, ``benchmarks/device_check.sh``) the workers are spread over ``--gpus``
GPUs (two workers on one GPU share it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import advx
from advx.engine.executors import InProcessExecutor, MultiDeviceExecutor
from advx.engine.run import run_matrix


def spec(
    cache: str, samples: int, steps: int, batch: int, shard: int | None, epochs: int, executor: str = "local", dataset: str = "mnist",
    device: str = "cpu",
) -> dict:
    matrix = {
        "name": "sharding", "samples": samples, "batch_size": batch, "cache_dir": cache, "threads": 1, "device": device,
        "diagnostics": False, "keep_examples": 0, "executor": executor,
    }
    if shard:
        matrix["shard_size"] = shard
    return {
        "matrix": matrix,
        "datasets": [{"name": dataset}],
        "models": [{"name": "mnist-cnn", "train": {"epochs": epochs, "seed": 0}}],
        "attacks": [{"name": "pgd", "eps": 0.3, "alpha": 0.01, "steps": steps, "early_exit": False}],
    }


def timed(name: str, s: dict, executor, folder: Path) -> dict:
    db = folder / f"{name.replace(' ', '-')}.db"
    t0 = time.perf_counter()
    result = run_matrix(s, store=db, executor=executor() if executor else None)
    wall = time.perf_counter() - t0
    (row,) = result.rows
    if row.status != "done":
        raise SystemExit(f"{name}: the cell {row.status}: {row.error}")
    with advx.ResultStore(db, readonly=True) as store:
        samples = store.samples(row.cell_key)
    n = len(samples["idx"])
    return {"row": name, "wall_seconds": wall, "images": n, "images_per_second": n / wall, "shards": result.shards,
            "robust_accuracy": row.metrics["robust_accuracy"], "samples": samples, "attack_seconds": row.metrics["attack_seconds"]}


def ceiling(n: int, batch: int, seconds: float = 20.0) -> float:
    """Image passes per second of ``n`` independent 1-thread processes of plain torch work
    (mnist-cnn forward+backward on MNIST-sized batches, ``scaling.ceiling``): what the machine
    itself gives N workers at the time of the run."""
    from scaling import ceiling as passes_per_second

    return passes_per_second(n, 1, seconds, shape=(1, 28, 28), batch=batch) * batch


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k].nan_to_num(-9.0), b[k].nan_to_num(-9.0)) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2, help="mnist-cnn training epochs (untimed)")
    ap.add_argument("--cache", default=None, help="training cache (default: a temporary folder)")
    ap.add_argument("--rows", nargs="+", default=["unsharded", "workers 1", "workers 2", "ray 1", "ray 2"])
    ap.add_argument("--out", default="benchmarks/results/sharding-cpu")
    ap.add_argument("--dataset", default="mnist", help="digits: a quick check of the script itself")
    ap.add_argument("--device", default="cpu", help="cuda: the workers share one GPU (several GPUs: the rows of one per GPU are 'workers N' with --gpus)")
    ap.add_argument("--ceiling", action="store_true", help="also measure what the machine gives 1 and 2 plain torch processes (CPU)")
    ap.add_argument("--gpus", type=int, default=1, help="with --device cuda: GPUs to spread the workers over (cuda:0, cuda:1, ...)")
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="advx-sharding-"))
    cache = args.cache or str(folder / "cache")
    load0 = os.getloadavg()
    # the model, trained once, outside the timed rows (a 1-example cell trains it into the cache)
    t0 = time.perf_counter()
    run_matrix(spec(cache, args.batch_size, 1, args.batch_size, None, args.epochs, dataset=args.dataset, device=args.device), store=folder / "train.db")
    train_seconds = time.perf_counter() - t0

    def s(shard: bool, executor: str = "local") -> dict:
        return spec(cache, args.samples, args.steps, args.batch_size, args.shard_size if shard else None, args.epochs, executor, args.dataset, args.device)

    def devices(n: int) -> list[str]:
        if args.device == "cpu":
            return ["cpu"] * n
        return [f"cuda:{i % args.gpus}" for i in range(n)]

    def ray(n: int):
        from advx.engine.ray_executor import RayExecutor

        return lambda: RayExecutor(num_cpus=n)

    plans = {
        "unsharded": (s(False), InProcessExecutor),
        "workers 1": (s(True), lambda: MultiDeviceExecutor(devices(1), cpu_threads=1)),
        "workers 2": (s(True), lambda: MultiDeviceExecutor(devices(2), cpu_threads=1)),
        "ray 1": (s(True, "ray"), ray(1)),
        "ray 2": (s(True, "ray"), ray(2)),
    }
    rows = []
    for name in args.rows:
        sp, ex = plans[name]
        r = timed(name, sp, ex, folder)
        print(f"{name}: {r['wall_seconds']:.1f} s, {r['images_per_second']:.1f} images/s, robust acc {r['robust_accuracy']:.4f}", flush=True)
        rows.append(r)
    ceil = {n: ceiling(n, args.batch_size) for n in (1, 2)} if args.ceiling else {}
    load1 = os.getloadavg()
    ref = next((r for r in rows if r["row"] == "unsharded"), rows[0])
    base = {"workers": next((r for r in rows if r["row"] == "workers 1"), None), "ray": next((r for r in rows if r["row"] == "ray 1"), None)}
    for r in rows:
        kind, _, n = r["row"].partition(" ")
        one = base.get(kind)
        r["workers"] = int(n) if n else 1
        r["ratio"] = r["images_per_second"] / one["images_per_second"] if one is not None else None
        r["target"] = 0.9 * r["workers"] if one is not None else None
        r["same_records_as_unsharded"] = same(r["samples"], ref["samples"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/sharding.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if v is not None and v is not False and k not in ("cache", "out", "rows")
        ),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "device": args.device if args.device == "cpu" else f"{args.gpus} x {torch.cuda.get_device_name(0)}",
        "load_average_before": load0, "load_average_after": load1, "train_seconds_untimed": train_seconds,
        "cell": f"{args.dataset}, {args.samples} test images, PGD-{args.steps} (eps 0.3, alpha 0.01, no early exit), mnist-cnn trained {args.epochs} epochs",
        "batch_size": args.batch_size, "shard_size": args.shard_size,
        "ceiling_images_per_second": ceil,
    }
    clean = [{k: v for k, v in r.items() if k != "samples"} for r in rows]
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": clean}, indent=2))
    lines = [
        f"# One large cell over workers ({meta['cpus']} CPU cores, " + ("no GPU)" if args.device == "cpu" else f"{meta['device']})"),
        "",
        f"`{meta['command']}`, {meta['date']}; torch {meta['torch']}, Python {meta['python']}.",
        f"Cell: {meta['cell']}; batch {args.batch_size}, shards of {args.shard_size}; model trained beforehand "
        f"({train_seconds:.0f} s, untimed). Wall time from before the executor is made to the merged row (start-up included); "
        "every worker or Ray task has 1 torch thread; the unsharded row runs in this process with 1 thread.",
        f"Load average before: {', '.join(f'{x:.2f}' for x in load0)}; after: {', '.join(f'{x:.2f}' for x in load1)} (the machine is shared).",
        "",
        "| run | workers | shards | wall seconds | images/s | ratio to 1 worker | target (0.9 N) | robust acc | same per-example records as unsharded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in clean:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        target = f"{r['target']:.1f}" if r["target"] is not None else "-"
        lines.append(
            f"| {r['row']} | {r['workers']} | {r['shards'] or '-'} | {r['wall_seconds']:.1f} | {r['images_per_second']:.1f} | {ratio} | {target} | "
            f"{r['robust_accuracy']:.4f} | {'yes' if r['same_records_as_unsharded'] else 'NO'} |"
        )
    if ceil:
        lines += [
            "",
            f"What the machine gave plain torch processes during the run (mnist-cnn forward+backward, batch {args.batch_size}, "
            f"1 thread each, no advx, 20 s): 1 process {ceil[1]:.0f} images/s, 2 processes {ceil[2]:.0f} images/s "
            f"(ratio {ceil[2] / ceil[1]:.2f}); the ceiling of the ratio of two workers.",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
