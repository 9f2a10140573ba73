"""Benchmark: a vectorised ensemble (``ensemble`` defense) against a Python loop over members.

For mnist-cnn (1x28x28) and cifar-cnn (3x32x32) with 2, 5 and 10 members, times

* ``forward``: the ensemble's output (log of the mean softmax) on a batch, no gradient;
* ``forward+backward``: the same plus the gradient of the summed cross-entropy with respect
  to the input, which is what every step of FGSM/BIM/PGD costs;

four ways: ``vectorised`` (``StackedEnsemble``: members stacked with
``torch.func.stack_module_state``, one ``vmap`` call on a GPU, views of the stacked
parameters called in turn on a CPU), ``loop`` (the same members called one after another,
outputs stacked, the same reduction), ``one member`` (a single network) and ``one member,
M x batch`` (a single network on the batch repeated M times: the same arithmetic and the
same memory of saved activations as M members, with no ensemble around it). It reports the
vectorised/loop ratio and the ratio of the vectorised ensemble to one member; a vectorised
M-member ensemble should cost at most about M members (no loop overhead on top). The
``M x batch`` reference tells the two costs apart on a CPU: an M-member ensemble keeps M
members' activations alive between forward and backward, which one member at the same
batch does not, and that memory traffic costs time even with no overhead at all. Members are freshly initialised networks in eval mode (timing does not
depend on the weights). Timings are the median of ``--repeats`` runs, the variants
measured round-robin so that a change of machine load hits all of them alike. The ratio to one
member is also given paired (the median over rounds of the within-round ratio, with the
number of rounds in which M members cost at most M times one member): the one-member
reference is the shortest and noisiest timing, and a ratio of two medians moved by 30%
between rows of one run. On a CPU a fifth variant, ``vmap``, forces the stacked members into
one vmapped call, the choice ``StackedEnsemble`` makes on a GPU.

    python benchmarks/ensemble.py [--repeats 15] [--threads 2] [--device cpu]

Writes ``benchmarks/results/ensemble-<device>.json`` and ``.md``.

``--train`` times training instead: one epoch of ``--steps`` optimiser steps (Adam, the
model's batch, random data of its own per member) for M members trained ``apart`` (``fit``,
one after another, as the ensemble does on a CPU), ``together`` (``advx.runtime.joint.fit_together``:
one vmapped step over all members, as it does on a GPU) and ``one member``, round-robin, with
the paired ratios together / apart and together / one member. Writes
``benchmarks/results/ensemble-train-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import advx
from advx.runtime.joint import fit_together
from advx.plugins.defenses.ensemble import StackedEnsemble, _MemberGroup
from advx.runtime.training import fit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

MODELS = {
    "mnist-cnn": (advx.DatasetInfo(name="mnist", input_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,)), 128),
    "cifar-cnn": (
        advx.DatasetInfo(name="cifar-10", input_shape=(3, 32, 32), num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)),
        32,
    ),
}


class Loop(torch.nn.Module):
    """The reference: members called in a Python loop, the same log-mean-probability output."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x):
        logits = torch.stack([m(x) for m in self.members])
        return torch.logsumexp(logits.log_softmax(-1), 0) - math.log(len(self.members))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model, x, y, backward: bool, device) -> None:
    if backward:
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    else:
        with torch.no_grad():
            model(x)
    sync(device)


def bench(variants: dict, backward: bool, repeats: int, device) -> dict[str, list[float]]:
    """Seconds per round for each variant; ``variants`` maps a name to ``(module, x, y)``.

    All variants run once per round, in turn, so that the i-th times of two variants were
    measured under the same machine load: their ratio, round by round (``paired``), is much
    steadier than the ratio of two medians taken over different moments.
    """
    for m, x, y in variants.values():  # warm-up
        step(m, x, y, backward, device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, (m, x, y) in variants.items():
            t0 = time.perf_counter()
            step(m, x, y, backward, device)
            times[k].append(time.perf_counter() - t0)
    return times


def round_ratios(times: dict[str, list[float]], a: str, b: str) -> list[float]:
    """``a``'s time divided by ``b``'s in the same round, round by round."""
    return [ta / tb for ta, tb in zip(times[a], times[b])]


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s time divided by ``b``'s in the same round."""
    return statistics.median(round_ratios(times, a, b))


class ForcedVmap(torch.nn.Module):
    """The stacked ensemble with its members in one ``vmap`` call even on a CPU (where
    ``StackedEnsemble`` calls them in turn), to keep that choice measured."""

    def __init__(self, ensemble: StackedEnsemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x):
        saved = _MemberGroup.loop_devices
        _MemberGroup.loop_devices = ()
        try:
            return self.ensemble(x)
        finally:
            _MemberGroup.loop_devices = saved


def members(plugin, info, m: int, device) -> list[torch.nn.Module]:
    """``m`` freshly initialised networks of ``plugin``, member ``i`` built after ``manual_seed(i)``."""
    nets = []
    for i in range(m):
        torch.manual_seed(i)
        nets.append(advx.build_model(plugin, info).to(device))
    return nets


def train_rounds(plugin, info, batch: int, m: int, steps: int, repeats: int, device) -> dict[str, list[float]]:
    """Seconds per round for M members trained apart, together, and one member trained alone
    (one epoch of ``steps`` steps each); fresh networks every round, built outside the timing."""
    gen = torch.Generator().manual_seed(0)
    n = steps * batch
    datas = [
        advx.as_tensor_dataset(torch.rand((n, *info.input_shape), generator=gen), torch.randint(info.num_classes, (n,), generator=gen))
        for _ in range(m)
    ]
    cfgs = [advx.TrainConfig(epochs=1, batch_size=batch, seed=i) for i in range(m)]

    def fresh() -> list[torch.nn.Module]:
        return members(plugin, info, m, device)

    variants = {
        "apart": lambda nets: [fit(net, d, c, device) for net, d, c in zip(nets, datas, cfgs)],
        "together": lambda nets: fit_together(nets, datas, cfgs, device),
        "one member": lambda nets: fit(nets[0], datas[0], cfgs[0], device),
    }
    for run in variants.values():  # warm-up
        run(fresh())
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, run in variants.items():
            nets = fresh()
            sync(device)
            t0 = time.perf_counter()
            run(nets)
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def train_main(args, registry, device, meta: dict) -> None:
    rows = []
    for model_name, (info, batch) in MODELS.items():
        plugin = registry.model(model_name)
        for m in args.members:
            times = train_rounds(plugin, info, batch, m, args.steps, args.repeats, device)
            t = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "model": model_name,
                "members": m,
                "batch": batch,
                "steps": args.steps,
                "ms_per_step_apart": 1e3 * t["apart"] / args.steps,
                "ms_per_step_together": 1e3 * t["together"] / args.steps,
                "ms_per_step_one_member": 1e3 * t["one member"] / args.steps,
                "paired_together_over_apart": paired(times, "together", "apart"),
                "rounds_together_faster": sum(r < 1 for r in round_ratios(times, "together", "apart")),
                "paired_together_over_one_member": paired(times, "together", "one member"),
                "paired_apart_over_one_member": paired(times, "apart", "one member"),
            }
            rows.append(row)
            print(
                f"{model_name:10s} M={m:2d} train step: apart {row['ms_per_step_apart']:8.2f} ms  together {row['ms_per_step_together']:8.2f} ms  "
                f"one {row['ms_per_step_one_member']:7.2f} ms  together/apart {row['paired_together_over_apart']:.2f} "
                f"({row['rounds_together_faster']}/{args.repeats} rounds faster)  together/one {row['paired_together_over_one_member']:.2f}",
                flush=True,
            )
    table = [
        "| model | members | batch | apart ms/step | together ms/step | one member ms/step | paired: together / apart "
        "| rounds together faster | paired: together / one member | paired: apart / one member |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['members']} | {r['batch']} | {r['ms_per_step_apart']:.2f} | {r['ms_per_step_together']:.2f} | "
            f"{r['ms_per_step_one_member']:.2f} | {r['paired_together_over_apart']:.2f} | {r['rounds_together_faster']}/{args.repeats} | "
            f"{r['paired_together_over_one_member']:.2f} | {r['paired_apart_over_one_member']:.2f} |"
        )
    what = (
        f"median of {args.repeats} round-robin runs of one epoch of {args.steps} Adam steps. Milliseconds per optimiser step "
        "(of all M members). \"Paired\" ratios are the median over rounds of the two variants' ratio within a round."
    )
    write_results(f"ensemble-train-{device.type}", "Ensemble training benchmark", meta, rows, what, table, args.out)


def write_results(
    stem_name: str, title: str, meta: dict, rows: list[dict], what: str, table: list[str], out: Path | str = RESULTS
) -> None:
    """``<out>/<stem_name>.json`` (meta and rows) and ``.md`` (a line on how it ran, then ``table``)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    stem = Path(out) / stem_name
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# {title} ({meta['device']})",
        "",
        f"`{meta['command']}` on {meta['date']}: torch {meta['torch']}, {meta['cpu_count']} CPUs, "
        f"{meta['threads']} torch threads, glibc malloc {'tuned' if meta['allocator_tuned'] else 'untuned'} (advx.runtime.allocator), " + what,
        "",
        *table,
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS), help="folder of the result files (default: benchmarks/results)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--members", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--default-allocator", action="store_true", help="leave glibc malloc untuned (see advx.runtime.allocator)")
    ap.add_argument("--train", action="store_true", help="time training apart vs together instead (see the docstring)")
    ap.add_argument("--steps", type=int, default=20, help="--train: optimiser steps per timed epoch")
    args = ap.parse_args()
    tuned = False if args.default_allocator else advx.tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    registry = advx.Registry.discover()
    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "advx": advx.__version__,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "repeats": args.repeats,
        "allocator_tuned": tuned,
    }
    if args.train:
        train_main(args, registry, device, meta)
        return
    rows = []
    for model_name, (info, batch) in MODELS.items():
        plugin = registry.model(model_name)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((batch, *info.input_shape), generator=gen).to(device)
        y = torch.randint(10, (batch,), generator=gen).to(device)
        for m in args.members:
            nets = [net.eval() for net in members(plugin, info, m, device)]
            x_m, y_m = x.repeat(m, *([1] * (x.dim() - 1))), y.repeat(m)
            ensemble = StackedEnsemble(nets).to(device).eval()
            variants = {
                "vectorised": (ensemble, x, y),
                "loop": (Loop(nets).eval(), x, y),
                "one member": (nets[0], x, y),
                "one member, M x batch": (nets[0], x_m, y_m),
            }
            if device.type in _MemberGroup.loop_devices:
                variants["vmap"] = (ForcedVmap(ensemble), x, y)
            for backward in (False, True):
                times = bench(variants, backward, args.repeats, device)
                t = {k: statistics.median(v) for k, v in times.items()}
                per_round = round_ratios(times, "vectorised", "one member")
                row = {
                    "model": model_name,
                    "members": m,
                    "batch": batch,
                    "pass": "forward+backward" if backward else "forward",
                    "ms_vectorised": 1e3 * t["vectorised"],
                    "ms_loop": 1e3 * t["loop"],
                    "ms_one_member": 1e3 * t["one member"],
                    "ms_one_member_m_batch": 1e3 * t["one member, M x batch"],
                    "vectorised_over_loop": t["vectorised"] / t["loop"],
                    "vectorised_over_one_member": t["vectorised"] / t["one member"],
                    "loop_over_one_member": t["loop"] / t["one member"],
                    "vectorised_over_one_member_m_batch": t["vectorised"] / t["one member, M x batch"],
                    "paired_vectorised_over_one_member": statistics.median(per_round),
                    "rounds_within_m": sum(r <= m for r in per_round),
                    "paired_vectorised_over_one_member_m_batch": paired(times, "vectorised", "one member, M x batch"),
                    "ms_vmap": 1e3 * t["vmap"] if "vmap" in t else None,
                    "paired_vmap_over_vectorised": paired(times, "vmap", "vectorised") if "vmap" in t else None,
                }
                rows.append(row)
                print(
                    f"{model_name:10s} M={m:2d} {row['pass']:16s} vec {row['ms_vectorised']:8.2f} ms  loop {row['ms_loop']:8.2f} ms  "
                    f"one {row['ms_one_member']:7.2f} ms  one@Mx {row['ms_one_member_m_batch']:8.2f} ms  vec/loop {row['vectorised_over_loop']:.2f}  "
                    f"vec/one {row['vectorised_over_one_member']:.2f}  vec/(one@Mx) {row['vectorised_over_one_member_m_batch']:.2f}  "
                    f"paired vec/one {row['paired_vectorised_over_one_member']:.2f} ({row['rounds_within_m']}/{args.repeats} rounds <= {m}x)"
                    + (f"  vmap/vec {row['paired_vmap_over_vectorised']:.2f}" if row["ms_vmap"] is not None else ""),
                    flush=True,
                )
    table = [
        "| model | members | batch | pass | vectorised ms | loop ms | one member ms | one member, M x batch ms | vectorised / loop "
        "| vectorised / one member | loop / one member | vectorised / (one member, M x batch) | paired: vectorised / one member "
        "| rounds <= M x | paired: vectorised / (one member, M x batch) | vmap ms | paired: vmap / vectorised |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['members']} | {r['batch']} | {r['pass']} | {r['ms_vectorised']:.2f} | {r['ms_loop']:.2f} | "
            f"{r['ms_one_member']:.2f} | {r['ms_one_member_m_batch']:.2f} | {r['vectorised_over_loop']:.2f} | "
            f"{r['vectorised_over_one_member']:.2f} | {r['loop_over_one_member']:.2f} | {r['vectorised_over_one_member_m_batch']:.2f} | "
            f"{r['paired_vectorised_over_one_member']:.2f} | {r['rounds_within_m']}/{args.repeats} | "
            f"{r['paired_vectorised_over_one_member_m_batch']:.2f} | "
            + (f"{r['ms_vmap']:.2f} | {r['paired_vmap_over_vectorised']:.2f} |" if r["ms_vmap"] is not None else "- | - |")
        )
    what = (
        f"median of {args.repeats} round-robin runs. Milliseconds per batch. \"Paired\" ratios are the median over rounds "
        "of the two variants' ratio within a round; \"rounds <= M x\" counts the rounds in which M members cost at most M "
        "times one member. \"vmap\" (CPU only) is the same stacked ensemble forced into one vmapped call."
    )
    write_results(f"ensemble-{device.type}", "Ensemble benchmark", meta, rows, what, table, args.out)


if __name__ == "__main__":
    main()
