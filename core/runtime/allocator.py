"""The CPU memory allocator: keep freed tensor memory in the process instead of returning it.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc serves blocks above its
mmap threshold (128 KiB, raised dynamically to at most 32 MiB) with a fresh ``mmap`` and
returns them with ``munmap`` when freed, so every large activation of every forward pass
comes back as new pages the kernel must fault in and zero. An attack runs thousands of
forward and backward passes on same-sized batches: on the 2-core development CPU that churn
made forward+backward passes on a run's batch sizes 1.93x slower for mnist-cnn and 1.77x for
cifar-cnn (55,000 and 193,000 page faults per step against 88 and 1,200;
``benchmarks/results/allocator-cpu.md``), and it made CPU timings vary by tens of percent
from call to call.

``tune_cpu_allocator`` raises glibc's mmap and trim thresholds (``mallopt``) so that freed
blocks stay in the heap and the next batch reuses them. The cost is memory: the process keeps
what it freed instead of shrinking between passes (peak resident memory 618 to 728 MB for
mnist-cnn, 1,240 to 1,856 MB for cifar-cnn in that benchmark). The kernel applies it when it runs
a matrix (the ``advx`` command, ``run_matrix`` and its worker processes); code that embeds
``run_attack``/``evaluate`` in a process of its own may call it too. Set
``ADVX_MALLOC_TUNING=0`` to leave the allocator alone. Elsewhere (macOS, Windows, musl) it
does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: bytes below which blocks come from the heap, and free heap kept before trimming; glibc
#: before 2.35 caps the mmap threshold at 32 MiB (it refuses more), hence the fallback
_THRESHOLDS = (1 << 30, 32 << 20)

_state: dict[str, bool] = {}


def tune_cpu_allocator() -> bool:
    """Keep freed CPU tensor memory for reuse (glibc only); True when the process is tuned.

    Idempotent and process-wide: it changes ``malloc`` for everything in the process, which is
    why ``run_attack`` and ``evaluate`` (called inside other tools) leave it to their caller.
    """
    if "tuned" in _state:
        return _state["tuned"]
    _state["tuned"] = tuned = _apply()
    return tuned


def _apply() -> bool:
    if os.environ.get("ADVX_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    for value in _THRESHOLDS:
        if libc.mallopt(_M_MMAP_THRESHOLD, value) == 1:
            libc.mallopt(_M_TRIM_THRESHOLD, value)
            return True
    return False
