"""Speed options of a matrix (amp, channels_last, compile): time ratio to the plain run and change in robust accuracy.

Each option runs the same cell as the plain run (same model, data, attack, seed) through
``advx.run_matrix``; the ratio is attack seconds of the option over attack seconds of the
plain run, measured in one process, round-robin over ``--repeats`` (median). Half precision
can change what an attack finds, so the change in robust accuracy is reported beside the
ratio, never assumed to be zero.

    python benchmarks/kernels.py [--device cpu|cuda] [--model cifar-cnn] [--repeats 3]

Results go to ``benchmarks/results/kernels-<device>.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import advx

OPTIONS = {
    "plain": {},
    "amp bf16": {"amp": "bf16"},
    "amp fp16": {"amp": "fp16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}


def spec(model: str, dataset: dict, device: str, cache: str, **options) -> dict:
    return {
        "matrix": {"name": "kernels", "samples": 512, "batch_size": 256, "device": device, "cache_dir": cache, "diagnostics": False, **options},
        "datasets": [dataset],
        "models": [{"name": model, "train": {"epochs": 1}}],
        "attacks": [{"name": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10}],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="cifar-cnn")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dataset = {"name": "synthetic", "shape": [3, 32, 32], "test_size": 512} if args.model == "cifar-cnn" else {"name": "digits"}
    options = dict(OPTIONS)
    if args.device == "cpu":
        options.pop("amp fp16")  # float16 autocast is a CUDA feature
    cache = tempfile.mkdtemp()
    times: dict[str, list[float]] = {k: [] for k in options}
    acc: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, opt in options.items():
            try:
                res = advx.run_matrix(spec(args.model, dataset, args.device, cache, **opt), rerun=True)
            except Exception as exc:  # noqa: BLE001 - an option this machine cannot run is reported, not fatal
                times[name].append(float("nan"))
                acc[name] = float("nan")
                print(f"{name}: {type(exc).__name__}: {exc}")
                continue
            (row,) = res.rows
            if row["status"] != "done":
                print(f"{name}: {row['error']}")
                times[name].append(float("nan"))
                continue
            times[name].append(row["attack_seconds"])
            acc[name] = row["robust_accuracy"]
    base = statistics.median(times["plain"])
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or platform.machine()
    lines = [
        f"# Speed options, {args.model}, PGD 10 steps, 512 examples, batch 256, device {args.device} ({dev})",
        "",
        f"`python benchmarks/kernels.py --device {args.device} --model {args.model} --repeats {args.repeats}`, "
        f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {torch.get_num_threads()} threads. The first "
        "compile run includes compilation.",
        "",
        "| option | attack seconds (median) | ratio to plain | robust accuracy | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in options:
        t = statistics.median(times[name]) if times[name] else float("nan")
        a = acc.get(name, float("nan"))
        lines.append(f"| {name} | {t:.3f} | {t / base:.2f} | {a:.4f} | {a - acc['plain']:+.4f} |")
    out = Path(__file__).parent / "results" / f"kernels-{args.device.split(':')[0]}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
