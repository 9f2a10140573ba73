"""Matrix throughput against worker count: cells per second with 1..N workers, and the scaling ratio.

The matrix has independent cells (one model per cell, trained beforehand so training is
not timed): N models x PGD. It runs once per worker count through the multi-device
executor (``cpu,cpu,...`` here; ``cuda:0,cuda:1,...`` on a GPU machine) or Ray
(``--executor ray``), wall time measured around ``run_matrix``. The scaling ratio is
throughput(N) / throughput(1); the target is at least 0.9 N on independent cells.

Like is compared with like: on a CPU every worker count runs worker *processes* with the
same torch threads each (``--threads-per-worker``, default cores / largest N), so N
workers have N times the cores of one, as N GPUs have N times the devices; the one-worker
row is a worker process too, so start-up (spawn, torch import, plugin discovery) is in
every row. An extra row gives the plain in-process run with all cores, for reference.
Cells must be long enough to amortise the start-up (a few seconds per worker).

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


def _busy(threads: int, seconds: float, out, shape: tuple[int, ...] = (1, 8, 8), batch: int = 128) -> None:
    """A worker of the machine's own ceiling: mnist-cnn forward+backward passes on batches of
    ``batch`` inputs of ``shape`` for ``seconds``; puts its passes per second."""
    torch.set_num_threads(threads)
    registry = advx.Registry.discover()
    model = registry.create("model", "mnist-cnn", {}).build(advx.DatasetInfo(name="ceiling", input_shape=shape, num_classes=10))
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    for _ in range(3):  # warm-up
        torch.nn.functional.cross_entropy(model(x.requires_grad_(True)), y).backward()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.nn.functional.cross_entropy(model(x.requires_grad_(True)), y).backward()
        done += 1
    out.put(done / (time.perf_counter() - t0))


def ceiling(n: int, threads: int, seconds: float = 20.0, shape: tuple[int, ...] = (1, 8, 8), batch: int = 128) -> float:
    """Passes per second of ``n`` independent processes doing plain torch work, no advx: what
    the machine itself gives N workers (shared caches, memory bandwidth, virtual cores).
    ``shape`` and ``batch``: the inputs of each pass (digits-sized batches of 128 by default)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_busy, args=(threads, seconds, q, shape, batch)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


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
    ap.add_argument("--threads-per-worker", type=int, default=None, help="CPU: torch threads of each worker (default: cores / largest N)")
    args = ap.parse_args()
    threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // max(args.workers))
    cache = tempfile.mkdtemp()
    advx.run_matrix(spec(cache, "cpu", "local", args.cells))  # train every model once, untimed
    rows = []

    def timed(label: str, n: int, device: str, executor) -> None:
        t0 = time.perf_counter()
        res = advx.run_matrix(spec(cache, device, args.executor, args.cells, args.samples, args.steps), rerun=True, executor=executor)
        wall = time.perf_counter() - t0
        assert res.failed == 0, [r.get("error") for r in res.rows]
        rows.append((label, n, wall, args.cells / wall))

    for n in args.workers:
        if args.executor == "local":
            devices = [args.device] * n if args.device == "cpu" else [f"cuda:{i}" for i in range(n)]
            timed(f"{n} worker process(es), {threads} thread(s) each" if args.device == "cpu" else f"{n} GPU(s)", n, args.device,
                  advx.MultiDeviceExecutor(devices, cpu_threads=threads))
        else:
            timed(f"Ray, {n} worker(s)", n, args.device, None)
    if args.device == "cpu":
        timed(f"in-process, {torch.get_num_threads()} torch threads (reference)", 1, "cpu", advx.InProcessExecutor())
    machine = []
    if args.device == "cpu":
        # the same workers without advx: the scaling the machine itself allows
        machine = [(n, ceiling(n, threads)) for n in args.workers]
    base = rows[0][3]
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    lines = [
        f"# Matrix throughput against workers ({args.executor} executor, {args.device}, {name})",
        "",
        f"`python benchmarks/scaling.py --workers {' '.join(map(str, args.workers))} --device {args.device} --executor {args.executor} "
        f"--cells {args.cells} --samples {args.samples} --steps {args.steps} --threads-per-worker {threads}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.cells} independent cells (mnist-cnn on digits, PGD {args.steps} steps, "
        f"{args.samples} examples); models trained beforehand; every worker-count row runs worker processes with the same "
        f"threads each, start-up included; load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.",
        "",
        "| run | workers | wall seconds | cells/s | scaling ratio (to the first row) | target (0.9 N) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, n, wall, tput in rows:
        lines.append(f"| {label} | {n} | {wall:.1f} | {tput:.3f} | {tput / base:.2f} | {0.9 * n:.1f} |")
    if machine:
        lines += [
            "",
            f"The machine's own ceiling: N processes of plain torch work ({threads} thread(s) each, mnist-cnn forward+backward "
            "on one batch of 128 for 20 s, no advx), and advx's scaling as a share of it:",
            "",
            "| processes | passes/s | machine scaling | advx scaling / machine scaling |",
            "|---:|---:|---:|---:|",
        ]
        ratio = {n: tput / base for label, n, wall, tput in rows if "worker process" in label}
        for n, rate in machine:
            m = rate / machine[0][1]
            lines.append(f"| {n} | {rate:.1f} | {m:.2f} | {ratio.get(n, float('nan')) / m:.2f} |")
    out = Path(__file__).parent / "results" / f"scaling-{args.device.split(':')[0]}-{args.executor}.md"
    previous = out.read_text() + "\n" if out.exists() else ""
    out.write_text(previous + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
