"""What every issue-24 benchmark records about its run: command, date, versions, threads, load."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
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
