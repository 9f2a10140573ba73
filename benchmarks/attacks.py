"""Benchmark: speed of the built-in attacks against the peers', and against the model's floor.

For each case (a model and an input shape) and each attack, this measures, on the same
model, batch and parameters:

* the wall time of one call (median of ``--repeats`` after one untimed warm-up call;
  ``time.perf_counter`` on CPU, ``torch.cuda.Event`` + ``synchronize`` on GPU), as
  images per second;
* the forward and backward passes per example, counted by hooks on the model in a
  separate, untimed call (hooks cost time);
* the **floor**: the time of one forward + summed cross-entropy + input-gradient backward
  of the same model on the same batch (what one gradient step cannot avoid), measured
  right before every timed call so that both see the same machine load. The ratio
  ``time / (passes x floor)`` is reported per call and its median kept; ``passes`` is the
  counted number of backward passes per example (= steps for FGSM/BIM/PGD);
* what the result is worth: success rate and, for L2 attacks, the mean L2 norm of the
  successful perturbations (a faster attack that breaks less is not faster).

The same figures for torchattacks, Foolbox, ART and adv-lib where they are importable,
each called through its documented API with the parameters of ours. Run it with the
peers' venv so that they are included::

    /tmp/venv-peers/bin/python benchmarks/attacks.py [--device cpu|cuda] [--threads 1]

Results: ``benchmarks/results/attacks-<device>.json`` and ``.md`` (command, date, torch
version, CPU, load average before and after). Models are trained briefly (one epoch, the
kernel's training cache) on the real MNIST / CIFAR-10 copies when present, so that the
minimum-norm attacks (DeepFool, CW) see a realistic number of iterations; without the
data the models keep their random initialisation and the result file says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import advx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"

CASES = {
    "mnist": {
        "model": "mnist-cnn",
        "dataset": "mnist",
        "data_dir": "mnist",
        "batch": 256,
        "eps_linf": 0.3,
        "bim": {"eps": 0.3, "alpha": 0.03, "steps": 10},
        "pgd": {"eps": 0.3, "alpha": 0.03, "steps": 10},
        "apgd-ce": {"eps": 0.1, "steps": 20},
        "square": {"eps": 0.1, "queries": 100},
    },
    "cifar": {
        "model": "cifar-cnn",
        "dataset": "cifar-10",
        "data_dir": "cifar-10",
        "dataset_params": {"train_batches": [1, 2]},  # the offline copy has batches 1-2 and test
        "batch": 128,
        "eps_linf": 8 / 255,
        "bim": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10},
        "pgd": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10},
        "apgd-ce": {"eps": 8 / 255, "steps": 20},
        "square": {"eps": 8 / 255, "queries": 100},
    },
}
DEEPFOOL = {"steps": 50, "overshoot": 0.02, "candidates": 10}
CW = {"steps": 20, "binary_search_steps": 3, "lr": 0.01, "initial_const": 1.0, "kappa": 0.0, "abort_early": False}
TARGETS = {"fgsm": 1.15, "bim": 1.15, "pgd": 1.15, "apgd-ce": 1.1}


# ---- timing and counting ------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Seconds of one call of ``fn``; CUDA events on GPU (the host clock would time the queue)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        out = fn()
        end.record()
        sync(device)
        return start.elapsed_time(end) / 1000.0, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def floor_step(model, x, y):
    """One forward + summed CE + input gradient: the cost no gradient step can avoid."""
    xr = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y, reduction="sum")
    return torch.autograd.grad(loss, xr)[0]


def floor_time(model, x, y, device, n=5):
    return statistics.median(timed(lambda: floor_step(model, x, y), device)[0] for _ in range(n))


class Counter:
    """Forward/backward examples through ``model``, by a forward hook and a hook on its output."""

    def __init__(self, model):
        self.forwards = self.backwards = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, _module, inputs, output):
        n = inputs[0].shape[0]
        self.forwards += n
        if output.requires_grad:
            output.register_hook(lambda g, n=n: self._count(n))

    def _count(self, n):
        self.backwards += n

    def remove(self):
        self.handle.remove()


# ---- attack adapters (ours and peers) -------------------------------------------------


def ours(reg, name, params, model, bounds):
    attack = reg.attack(name, **params)
    return lambda x, y: attack.perturb(model, x, y, bounds)


def peers_for(attack, case, model, x, bounds, num_classes, device):
    """``{library: callable(x, y) -> x_adv}`` for the peers that provide ``attack``."""
    c = CASES[case]
    out = {}
    try:
        import torchattacks as ta

        if attack == "fgsm":
            a = ta.FGSM(model, eps=c["eps_linf"])
        elif attack == "bim":
            a = ta.BIM(model, **c["bim"])
        elif attack == "pgd":
            a = ta.PGD(model, **c["pgd"], random_start=True)
        elif attack == "deepfool":
            a = ta.DeepFool(model, steps=DEEPFOOL["steps"], overshoot=DEEPFOOL["overshoot"])
        elif attack == "cw-l2":  # no binary search in torchattacks: one run of all the steps
            a = ta.CW(model, c=CW["initial_const"], kappa=CW["kappa"], steps=CW["steps"] * CW["binary_search_steps"], lr=CW["lr"])
        elif attack == "apgd-ce":
            a = ta.APGD(model, norm="Linf", eps=c["apgd-ce"]["eps"], steps=c["apgd-ce"]["steps"], loss="ce", seed=0)
        elif attack == "square":
            a = ta.Square(model, norm="Linf", eps=c["square"]["eps"], n_queries=c["square"]["queries"], seed=0)
        else:
            a = None
        if a is not None:
            out["torchattacks"] = lambda x, y, a=a: a(x, y)
    except ImportError:
        pass
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=bounds, device=device)
        if attack == "fgsm":
            a, eps = fb.attacks.LinfFastGradientAttack(random_start=False), c["eps_linf"]
        elif attack == "bim":
            a, eps = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=c["bim"]["alpha"], steps=c["bim"]["steps"]), c["bim"]["eps"]
        elif attack == "pgd":
            a, eps = fb.attacks.LinfProjectedGradientDescentAttack(abs_stepsize=c["pgd"]["alpha"], steps=c["pgd"]["steps"], random_start=True), c["pgd"]["eps"]
        elif attack == "deepfool":
            a, eps = fb.attacks.L2DeepFoolAttack(steps=DEEPFOOL["steps"], candidates=DEEPFOOL["candidates"], overshoot=DEEPFOOL["overshoot"]), None
        elif attack == "cw-l2":
            a, eps = fb.attacks.L2CarliniWagnerAttack(
                binary_search_steps=CW["binary_search_steps"], steps=CW["steps"], stepsize=CW["lr"],
                confidence=CW["kappa"], initial_const=CW["initial_const"], abort_early=CW["abort_early"],
            ), None
        else:
            a = None  # no APGD or Square in Foolbox
        if a is not None:
            out["foolbox"] = lambda x, y, a=a, eps=eps: a(fmodel, x, y, epsilons=eps)[1]
    except ImportError:
        pass
    try:
        from art.attacks import evasion as art_ev
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=num_classes,
            clip_values=bounds, device_type="gpu" if device.type == "cuda" else "cpu",
        )
        b = len(x)
        a = None
        if attack == "fgsm":
            a = art_ev.FastGradientMethod(clf, norm=np.inf, eps=c["eps_linf"], batch_size=b)
        elif attack == "bim":
            p = c["bim"]
            a = art_ev.BasicIterativeMethod(clf, eps=p["eps"], eps_step=p["alpha"], max_iter=p["steps"], batch_size=b, verbose=False)
        elif attack == "pgd":
            p = c["pgd"]
            a = art_ev.ProjectedGradientDescent(
                clf, norm=np.inf, eps=p["eps"], eps_step=p["alpha"], max_iter=p["steps"], num_random_init=1, batch_size=b, verbose=False
            )
        elif attack == "deepfool":
            a = art_ev.DeepFool(clf, max_iter=DEEPFOOL["steps"], epsilon=DEEPFOOL["overshoot"], nb_grads=DEEPFOOL["candidates"], batch_size=b, verbose=False)
        # ART's CW-L2 is left out: numpy, per-iteration host round trips; on this CPU one
        # call at these settings takes minutes (torchattacks' and AttackBench's tables
        # show it 10-100x slower than the torch-native ones).
        if a is not None:
            # the numpy conversions are part of ART's API and of its cost
            out["ART"] = lambda x, y, a=a: torch.from_numpy(a.generate(x.cpu().numpy(), y.cpu().numpy())).to(x.device)
    except ImportError:
        pass
    advlib = import_adv_lib()
    if advlib is not None:
        pgd_linf, df, cw, apgd = advlib
        # No FGSM: adv-lib has none, and pgd_linf(steps=1) returns only iterates it has
        # evaluated, i.e. the clean input (its "success" would be the clean error rate).
        if attack == "bim":
            p = c["bim"]
            out["adv-lib"] = lambda x, y: pgd_linf(model, x, y, ε=p["eps"], steps=p["steps"], random_init=False, absolute_step_size=p["alpha"])
        elif attack == "pgd":
            p = c["pgd"]
            out["adv-lib"] = lambda x, y: pgd_linf(model, x, y, ε=p["eps"], steps=p["steps"], random_init=True, absolute_step_size=p["alpha"])
        elif attack == "deepfool":
            out["adv-lib"] = lambda x, y: df(model, x, y, steps=DEEPFOOL["steps"], overshoot=DEEPFOOL["overshoot"])
        elif attack == "cw-l2":
            out["adv-lib"] = lambda x, y: cw(
                model, x, y, confidence=CW["kappa"], learning_rate=CW["lr"], initial_const=CW["initial_const"],
                binary_search_steps=CW["binary_search_steps"], max_iterations=CW["steps"], abort_early=CW["abort_early"],
            )
        elif attack == "apgd-ce" and apgd is not None:  # adv-lib has no Square
            p = c["apgd-ce"]
            out["adv-lib"] = lambda x, y: apgd(model, x, y, eps=p["eps"], norm=float("inf"), n_iter=p["steps"], loss_function="ce")
    return out


ADV_LIB_NOTE = None


def import_adv_lib():
    """adv-lib's attacks, or None. Its package ``__init__`` imports torchvision (for LPIPS) and
    visdom (for live plots), neither used by the attacks timed here; where they are not
    installed, empty stand-ins are registered so the attack modules import."""
    global ADV_LIB_NOTE
    try:
        import adv_lib  # noqa: F401
    except ImportError:
        return None
    for name in ("torchvision", "visdom", "tqdm"):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - missing, or a torchvision built for another torch
            sys.modules.pop(name, None)
            stub = types.ModuleType(name)
            stub.models = types.SimpleNamespace()  # type: ignore[attr-defined]
            stub.Visdom = None  # type: ignore[attr-defined]
            stub.tqdm = lambda it=None, *a, **k: it  # type: ignore[attr-defined]
            sys.modules[name] = stub
            ADV_LIB_NOTE = f"adv-lib imported with an empty stand-in for {name} (not used by the timed attacks)"
    try:
        from adv_lib.attacks.carlini_wagner.l2 import carlini_wagner_l2
        from adv_lib.attacks.deepfool import df
        from adv_lib.attacks.projected_gradient_descent import pgd_linf
    except Exception as exc:  # noqa: BLE001
        ADV_LIB_NOTE = f"adv-lib not usable: {type(exc).__name__}: {exc}"
        return None
    try:
        from adv_lib.attacks.auto_pgd import apgd
    except Exception:  # noqa: BLE001 - older adv-lib
        apgd = None
    return pgd_linf, df, carlini_wagner_l2, apgd


# ---- the run ---------------------------------------------------------------------------


def load_case(reg, case, device, batch, data_root=SHARED_DATA):
    """(model in eval mode, x, y, bounds, num_classes, how the model was obtained)."""
    c = CASES[case]
    data_dir = Path(data_root) / c["data_dir"]
    model_plugin = reg.model(c["model"])
    if data_dir.is_dir():
        ds = reg.dataset(c["dataset"], data_dir=str(data_dir), download=False, **c.get("dataset_params", {}))
        info = ds.info()
        t0 = time.perf_counter()
        res = advx.train_model(ds, model_plugin, {"epochs": 1, "seed": 0}, device="cpu")
        how = f"trained 1 epoch on {c['dataset']} (training cache; {time.perf_counter() - t0:.0f} s this run)"
        model = res.model
        x, y = advx.take(ds.load("test"), batch)
    else:
        shape = (1, 28, 28) if case == "mnist" else (3, 32, 32)
        info = advx.DatasetInfo(name=case, input_shape=shape, num_classes=10)
        torch.manual_seed(0)
        model = advx.build_model(model_plugin, info)
        x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
        how = f"random weights ({data_dir} not found)"
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(True)  # as a user's model: parameters require grad, attacks must not pay for them
    return model, x.to(device), y.to(device), tuple(info.bounds), info.num_classes, how


def quality(model, x, y, x_adv, l2_attack):
    with torch.no_grad():
        ok = model(x_adv).argmax(1) != y
    d = (x_adv - x).flatten(1)
    q = {"success": float(ok.float().mean())}
    if l2_attack:
        q["mean_l2_success"] = float(d.norm(dim=1)[ok].mean()) if bool(ok.any()) else None
    else:
        q["max_linf"] = float(d.abs().max())
    return q


def measure_all(libs, model, x, y, device, repeats, l2_attack):
    """Per library: one counted call (hooks on; it doubles as the warm-up), then ``repeats``
    timed calls, round-robin over the libraries so that a change of machine load hits all
    of them alike. Before every timed call the floor is timed as the same number of
    gradient steps (at most 10, scaled), so each ratio compares two back-to-back timings."""
    n = len(x)
    res, outs = {}, {}
    for lib, fn in libs.items():
        counter = Counter(model)
        try:
            with torch.enable_grad():
                outs[lib] = fn(x, y)
            res[lib] = {"forwards_per_example": counter.forwards / n, "backwards_per_example": counter.backwards / n,
                        "times": [], "ratios": []}
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result too
            res[lib] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            counter.remove()
    live = [lib for lib in libs if "error" not in res[lib]]
    # The floor is timed on the batch the attack returned, not the clean one: on CPU the
    # same model runs ~10% slower on perturbed MNIST digits than on clean ones (measured),
    # and the attack's own steps run on perturbed inputs.
    floor_inputs = {lib: outs[lib].detach().to(x.dtype) for lib in live}
    for rep in range(repeats):
        order = live[rep % len(live):] + live[: rep % len(live)] if live else []
        for lib in order:
            r = res[lib]
            passes = max(r["backwards_per_example"], 1.0)
            k = max(1, min(10, round(passes)))
            x_fl = floor_inputs[lib]
            fl, _ = timed(lambda: [floor_step(model, x_fl, y) for _ in range(k)], device)
            t, outs[lib] = timed(lambda: libs[lib](x, y), device)
            r["times"].append(t)
            r["ratios"].append(t / (passes * fl / k))
    for lib in live:
        r = res[lib]
        t = statistics.median(r["times"])
        r.update(seconds=t, seconds_all=r.pop("times"), images_per_s=n / t,
                 ratio_to_floor=statistics.median(r["ratios"]), ratios_all=r.pop("ratios"),
                 **quality(model, x, y, outs[lib], l2_attack))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see the md)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", default="mnist,cifar")
    ap.add_argument("--attacks", default="fgsm,bim,pgd,apgd-ce,square,deepfool,cw-l2")
    ap.add_argument("--cifar-attacks", default="fgsm,bim,pgd,apgd-ce,square,deepfool", help="attacks of the cifar case (cw-l2 is long there)")
    ap.add_argument("--no-peers", action="store_true", help="time ours only")
    ap.add_argument("--peers", default="torchattacks,foolbox,ART,adv-lib", help="peer libraries to time (comma-separated)")
    ap.add_argument("--slow-repeats", type=int, default=3, help="repeats for deepfool and cw-l2")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--data", default=str(SHARED_DATA), help="folder holding mnist/ and cifar-10/ (default: ../shared/data)")
    ap.add_argument("--tag", default="", help="suffix of the result files: attacks-<device><tag>.json/.md")
    ap.add_argument("--default-allocator", action="store_true", help="leave glibc malloc untuned (see advx.runtime.allocator)")
    args = ap.parse_args(argv)

    # One process for every library, so the tuning (as `advx run` applies it) helps ours and
    # the peers' alike; it removes the page-fault churn that made CPU timings vary by tens of
    # percent from call to call.
    args.allocator_tuned = False if args.default_allocator else advx.tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reg = advx.Registry.discover()
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    results = []
    for case in args.cases.split(","):
        model, x, y, bounds, num_classes, how = load_case(reg, case, device, CASES[case]["batch"], args.data)
        fl = floor_time(model, x, y, device, n=11)
        print(f"[{case}] {how}; batch {len(x)}; floor {fl * 1e3:.2f} ms", flush=True)
        c = CASES[case]
        params = {
            "fgsm": {"eps": c["eps_linf"]},
            "bim": c["bim"],
            "pgd": {**c["pgd"], "random_start": True},
            "deepfool": DEEPFOOL,
            "cw-l2": CW,
            "apgd-ce": c["apgd-ce"],
            "square": c["square"],
        }
        for attack in (args.cifar_attacks if case == "cifar" else args.attacks).split(","):
            l2_attack = attack in ("deepfool", "cw-l2")
            repeats = args.slow_repeats if l2_attack else args.repeats
            libs = {"advx": ours(reg, attack, params[attack], model, bounds)}
            if not args.no_peers:
                wanted = set(args.peers.split(","))
                libs.update({k: v for k, v in peers_for(attack, case, model, x, bounds, num_classes, device).items() if k in wanted})
            for lib, r in measure_all(libs, model, x, y, device, repeats, l2_attack).items():
                r.update(case=case, attack=attack, library=lib, batch=len(x), model_source=how, floor_seconds=fl)
                results.append(r)
                if "error" in r:
                    print(f"  {attack:9s} {lib:13s} ERROR {r['error']}", flush=True)
                else:
                    print(
                        f"  {attack:9s} {lib:13s} {r['seconds'] * 1e3:9.1f} ms  {r['images_per_s']:9.0f} img/s  "
                        f"x{r['ratio_to_floor']:.2f} floor  fwd {r['forwards_per_example']:.1f} bwd {r['backwards_per_example']:.1f}  "
                        f"succ {r['success']:.3f}" + (f"  L2 {r['mean_l2_success']:.3f}" if r.get("mean_l2_success") else ""),
                        flush=True,
                    )
        write(args, device, started, load_before, results)


def write(args, device, started, load_before, results):
    """Write the JSON and the md (after every case, so a failure later keeps what was measured)."""
    meta = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": started.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "allocator_tuned": args.allocator_tuned,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "repeats": args.repeats,
        "slow_repeats": args.slow_repeats,
        "params": {"cases": CASES, "deepfool": DEEPFOOL, "cw-l2": CW},
        "peers": {k: v for k, v in peer_versions().items() if k in set(args.peers.split(",")) and not args.no_peers},
        "notes": [n for n in [ADV_LIB_NOTE] if n],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"attacks-{device.type}{args.tag}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / f"{stem}.md").write_text(markdown(meta, results))
    print(f"wrote {out / stem}.json and .md", flush=True)


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peer_versions():
    v = {}
    for mod, name in [("torchattacks", "torchattacks"), ("foolbox", "foolbox"), ("art", "ART"), ("adv_lib", "adv-lib")]:
        try:
            m = __import__(mod)
            v[name] = getattr(m, "__version__", "installed")
        except Exception:  # noqa: BLE001
            v[name] = None
    try:
        from importlib.metadata import version

        if v.get("adv-lib"):
            v["adv-lib"] = version("adv-lib")
    except Exception:  # noqa: BLE001
        pass
    return v


def paired_speedup(peer, ours):
    """``(median of peer/ours over rounds, rounds ours was faster, rounds)``.

    Each round times every library once, back to back (round-robin), so the ratio within a
    round cancels what drifts between rounds (machine load, clock); the median of those
    ratios resolves differences of a few percent that the ratio of two medians, each
    carrying the drift, leaves inside the noise."""
    pairs = list(zip(peer["seconds_all"], ours["seconds_all"]))
    ratios = [p / o for p, o in pairs]
    return statistics.median(ratios), sum(r > 1.0 for r in ratios), len(ratios)


def markdown(meta, results):
    lines = [
        "# Attack speed: advx vs peers, and vs the model's floor",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; torch {meta['torch']}, Python {meta['python']}",
        f"- device: {meta['device']}; CPU: {meta['cpu']} ({meta['cpu_count']} cores visible, {meta['threads']} torch thread(s)); "
        f"glibc malloc {'tuned (advx.tune_cpu_allocator, for every library)' if meta.get('allocator_tuned') else 'untuned'}",
        f"- load average (1/5/15 min) before: {', '.join(f'{v:.2f}' for v in meta['load_average_before'])}; "
        f"after: {', '.join(f'{v:.2f}' for v in meta['load_average_after'])}",
        "- peers: " + ", ".join(f"{k} {v}" for k, v in meta["peers"].items() if v) ,
        f"- timing: median of {meta['repeats']} calls ({meta['slow_repeats']} for deepfool and cw-l2) after one untimed call "
        "(warm-up, in which the passes per example are counted by hooks); libraries timed round-robin; "
        "advx speed-up = median over rounds of the peer's time / ours in the same round (paired), with the rounds ours won",
        "- floor = one forward + summed cross-entropy + input-gradient backward on the same model, on the batch the attack "
        "returned (the CPU speed of the model depends on pixel values: ~10% slower on perturbed than on clean digits), timed as a loop of "
        "min(passes, 10) such steps right before each timed call; ratio = time / (backward passes per example x floor), median over calls",
        *[f"- note: {n}" for n in meta["notes"]],
        "",
        "Reading the table:",
        "",
        "- one torch thread by default: on a shared 2-core machine two OpenMP threads that contend with other processes "
        "run 5-10x slower and far less repeatably than one (measured while writing this benchmark); `--threads 2` on a quiet machine;",
        "- a ratio below 1 is possible where an attack's passes are backward-only (DeepFool: one forward, then one backward per "
        "candidate class on the same graph) or run on a shrinking active set;",
        "- torchattacks' DeepFool loops over images one at a time and compounds the overshoot at every step (it does not "
        "accumulate the perturbation as the paper does); torchattacks' CW has no binary search over c, so it runs "
        "binary_search_steps x steps iterations at the initial c;",
        "- adv-lib has no FGSM (its pgd_linf with one step returns only iterates it evaluated, i.e. the clean input); its "
        "DeepFool is the same algorithm as ours (clip the iterate, continue from it: equal norms), so there the time is the "
        "whole difference; ART's CW-L2 is not timed (numpy, minutes per call here);",
        "- Foolbox computes success (one extra forward) inside every call, as its API returns it; ART's time includes its "
        "numpy conversions, which are its API;",
        "- apgd-ce: steps + 1 gradient passes (one at the random start, as AutoAttack's); unbroken examples come back at their "
        "highest-loss point in ours, at the clean input in the peers' (same success, different max L-inf);",
        "- square is forward-only: its 'x floor' is time / one fwd+bwd floor step, i.e. not comparable with the gradient attacks; "
        "compare ms and fwd / ex. Ours draws a window and signs per example (the paper's), torchattacks' one per query for the "
        "batch; adv-lib has no Square;",
        "- success = fraction of the batch misclassified after the attack (clean errors included); the CW settings are "
        "deliberately short (time per iteration is what is compared), so its success is low.",
        "",
    ]
    by_case = {}
    for r in results:
        by_case.setdefault(r["case"], []).append(r)
    for case, rows in by_case.items():
        r0 = rows[0]
        lines += [
            f"## {case}: {CASES[case]['model']}, batch {r0['batch']}, clean-batch floor at start {r0['floor_seconds'] * 1e3:.2f} ms",
            "",
            f"Model: {r0['model_source']}.",
            "",
            "| attack | library | ms / batch | images/s | x floor | fwd / ex | bwd / ex | success | mean L2 (successes) | advx speed-up |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        ours_r = {r["attack"]: r for r in rows if r["library"] == "advx" and "seconds" in r}
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['attack']} | {r['library']} | error: {r['error'][:80]} | | | | | | | |")
                continue
            speed = ""
            if r["library"] != "advx" and r["attack"] in ours_r:
                s, won, n = paired_speedup(r, ours_r[r["attack"]])
                speed = f"{s:.3f}x ({won}/{n})"
            l2 = r.get("mean_l2_success")
            lines.append(
                f"| {r['attack']} | {r['library']} | {r['seconds'] * 1e3:.1f} | {r['images_per_s']:.0f} | {r['ratio_to_floor']:.2f} | "
                f"{r['forwards_per_example']:.1f} | {r['backwards_per_example']:.1f} | {r['success']:.3f} | "
                f"{'' if l2 is None else f'{l2:.3f}'} | {speed} |"
            )
        lines.append("")
    lines += ["## Targets", ""]
    for case, rows in by_case.items():
        got = {(r["attack"], r["library"]): r for r in rows if "seconds" in r}
        for attack, limit in TARGETS.items():
            r = got.get((attack, "advx"))
            if r is None:
                continue
            peers = [p for (a, p) in got if a == attack and p != "advx"]
            slower = [p for p in peers if got[(attack, p)]["seconds"] < r["seconds"]]
            lines.append(
                f"- {case} {attack}: x{r['ratio_to_floor']:.2f} floor (target <= {limit}) "
                f"{'MET' if r['ratio_to_floor'] <= limit else 'MISSED'}; "
                + ("faster than every peer measured" if not slower else f"slower than {', '.join(slower)}")
            )
        r = got.get(("deepfool", "advx"))
        if r is not None:
            for peer, need in (("torchattacks", 5.0), ("foolbox", 1.0), ("adv-lib", 1.0)):
                p = got.get(("deepfool", peer))
                if p is not None:
                    s, won, n = paired_speedup(p, r)
                    lines.append(f"- {case} deepfool vs {peer}: {s:.3f}x faster, {won}/{n} rounds (target >= {need}x) {'MET' if s >= need else 'MISSED'}")
        r = got.get(("cw-l2", "advx"))
        if r is not None:  # equal steps: torchattacks runs binary_search_steps x steps at one c
            for peer in ("torchattacks", "adv-lib"):
                p = got.get(("cw-l2", peer))
                if p is not None:
                    s, won, n = paired_speedup(p, r)
                    lines.append(f"- {case} cw-l2 vs {peer}: {s:.3f}x faster, {won}/{n} rounds (target >= 1.0x) {'MET' if s >= 1.0 else 'MISSED'}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
