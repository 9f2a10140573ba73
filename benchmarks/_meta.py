"""What every issue-24 benchmark records about its run: command, date, versions, threads, load."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch


def peer_versions() -> dict[str, str]:
    """The peers importable in this interpreter and their versions (absent ones are left out)."""
    out = {}
    for mod in ("torchattacks", "autoattack", "adv_lib"):
        try:
            m = __import__(mod)
        except Exception:  # noqa: BLE001 - not installed, or broken: the benchmark says which it skipped
            continue
        out[mod] = getattr(m, "__version__", "source")
    return out


def sync(device: str) -> None:
    """Wait for the device's queued work (a CUDA timing would otherwise time the queue)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def meta_of(args: Any, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's metadata; called at the start, then again with the first result at the end
    (which adds the load average after the run)."""
    if before is not None:
        return {**before, "load_after": os.getloadavg()}
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "load_before": os.getloadavg(), "peers": peer_versions(),
        "samples": getattr(args, "samples", None), "device": getattr(args, "device", "cpu"),
        "device_name": torch.cuda.get_device_name(0) if getattr(args, "device", "cpu").startswith("cuda") else None,
    }


def parser(doc: str | None, threads: int = 2) -> Any:
    """An argument parser with the options every benchmark takes: ``--threads`` (torch's,
    ``threads``), ``--device`` (cpu) and ``--out`` (``benchmarks/results``); ``begin(args)``
    then starts the run."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap


def per_model(text: str) -> dict[str, int]:
    """``"digits=300,mnist-at=200"`` (a ``--samples`` option naming a count per model) as a dict."""
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def begin(args: Any) -> dict[str, Any]:
    """Set torch's threads from ``args`` and return the run's metadata (``meta_of``)."""
    torch.set_num_threads(args.threads)
    return meta_of(args)


def header(title: str, meta: dict[str, Any]) -> list[str]:
    peers = ", ".join(f"{k} {v}" for k, v in meta["peers"].items()) or "none installed"
    return [
        f"# {title}",
        "",
        f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, {meta['device_name'] or str(meta['cpus']) + ' CPUs'}, {meta['threads']} thread(s), "
        f"peers: {peers}; load average {meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after "
        "(a shared machine: seconds are indicative; counted passes are exact).",
        "",
    ]


def timed(model: Any, fn: Any, x: Any, y: Any, device: str) -> dict[str, Any]:
    """One contender's run, measured alike for every library: ``fn(x, y)`` from seed 0, timed
    with the device synchronised, its passes counted by one forward hook on the model
    (``attacks.Counter``), its points scored by the same forward. Returns ``x_adv``,
    ``seconds``, ``forwards`` and ``backwards`` per example, ``robust_accuracy`` and ``max_linf``."""
    from attacks import Counter

    torch.manual_seed(0)
    counter = Counter(model)
    sync(device)
    t0 = time.perf_counter()
    x_adv = fn(x, y)
    sync(device)
    seconds = time.perf_counter() - t0
    counter.remove()
    with torch.no_grad():
        robust = float((model(x_adv).argmax(1) == y).float().mean())
    n = len(x)
    return {
        "x_adv": x_adv, "seconds": seconds, "forwards": counter.forwards / n, "backwards": counter.backwards / n,
        "robust_accuracy": robust, "max_linf": float((x_adv - x).detach().abs().amax()),
    }


def models_under_test(args: Any) -> Any:
    """Each model of ``--models`` with its ``--samples`` test examples, as
    ``(name, model, x, y, bounds)``; its parameters require grad, as a user's model's do, so
    an attack that computed parameter gradients would pay for them here as there."""
    from _models import load

    for name in args.models.split(","):
        model, x, y, bounds = load(name, args.samples, args.device)
        for p in model.parameters():
            p.requires_grad_(True)
        yield name, model, x, y, bounds


def finish(args: Any, meta: dict[str, Any], name: str, rows: list[dict[str, Any]], skipped: list[str], **extra: Any) -> tuple[dict[str, Any], Path]:
    """End a run: the metadata completed (load after, the models, the peers skipped, ``extra``),
    ``<out>/<name>-<device>.json`` written with the rows; returns the metadata and the path of
    the run's Markdown file (``.md`` beside the JSON), for the caller to write."""
    from _models import MODELS

    meta = {**meta_of(args, meta), "models": {m: MODELS[m] for m in args.models.split(",")}, "skipped": skipped, **extra}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return meta, stem.with_suffix(".md")


def peer_pgd_apgd(model: Any, pgd_steps: int = 40, apgd_steps: int = 100, alpha: Any = None) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """The peers' PGD and APGD-CE on ``model``, as ``[(attack, library, fn(x, y, eps) -> x_adv)]``
    (attack ``"pgd"`` or ``"apgd-ce"``), and the lines naming the peers not installed.
    ``alpha(eps)``: PGD's step (default 2.5 eps / steps, Madry et al.); random start for PGD,
    seed 0 for torchattacks' APGD, every library with the same settings."""
    from attacks import import_adv_lib

    step = alpha or (lambda eps: 2.5 * eps / pgd_steps)
    out, skipped = [], []
    try:
        import torchattacks as ta

        out.append(("pgd", "torchattacks", lambda x, y, eps: ta.PGD(model, eps=eps, alpha=step(eps), steps=pgd_steps, random_start=True)(x, y)))
        out.append(("apgd-ce", "torchattacks", lambda x, y, eps: ta.APGD(model, norm="Linf", eps=eps, steps=apgd_steps, loss="ce", seed=0)(x, y)))
    except ImportError:
        skipped.append("torchattacks: not installed, skipped")
    advlib = import_adv_lib()
    if advlib is None:
        skipped.append("adv-lib: not installed, skipped")
    else:
        pgd_linf, _, _, apgd = advlib
        out.append(("pgd", "adv-lib", lambda x, y, eps: pgd_linf(model, x, y, ε=eps, steps=pgd_steps, random_init=True, absolute_step_size=step(eps))))
        if apgd is not None:
            out.append(("apgd-ce", "adv-lib", lambda x, y, eps: apgd(model, x, y, eps=eps, norm=float("inf"), n_iter=apgd_steps, loss_function="ce")))
    return out, skipped
