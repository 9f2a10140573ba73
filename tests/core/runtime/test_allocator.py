"""The CPU allocator tuning (``advx.runtime.allocator``): freed tensor memory is reused, not refaulted."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys

import pytest
import torch

import advx

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _faults_per_alloc(mib: int = 40, n: int = 5) -> float:
    """Minor page faults per allocate-fill-free of a ``mib`` MiB tensor (the pattern of every
    forward pass: same-sized activations allocated and freed again and again)."""
    torch.empty(mib << 18).fill_(1.0)  # warm: the first one faults in any case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(mib << 18).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def _in_subprocess(code: str, env: dict | None = None) -> str:
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc only")
def test_tuned_process_reuses_large_blocks_instead_of_faulting_them_in_again():
    """Steady state: no page faults, where the untuned process faults every page in again on
    every allocation. The tuned heap first grows to hold the blocks, which takes one or two
    rounds of five allocations (measured: 8,192-10,240 then 2,048-6,144 faults per
    allocation, then 0 from the third round on, in 8 of 8 processes), so two rounds settle it."""
    code = (
        "import advx, tests.core.runtime.test_allocator as t;"
        "untuned = t._faults_per_alloc(); ok = advx.tune_cpu_allocator(); t._faults_per_alloc(); t._faults_per_alloc();"
        "tuned = t._faults_per_alloc();"
        "print(untuned, ok, tuned)"
    )
    untuned, ok, tuned = _in_subprocess(code).split()
    assert ok == "True"
    assert float(untuned) > 8_000  # 40 MiB = 10,240 pages, faulted in again on every allocation
    assert float(tuned) < 0.2 * float(untuned)


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc only")
def test_the_environment_variable_leaves_the_allocator_alone():
    code = "import advx, tests.core.runtime.test_allocator as t; ok = advx.tune_cpu_allocator(); print(ok, t._faults_per_alloc())"
    ok, faults = _in_subprocess(code, {"ADVX_MALLOC_TUNING": "0"}).split()
    assert ok == "False" and float(faults) > 8_000


def test_running_a_matrix_tunes_the_process(tmp_path):
    code = (
        "import advx, advx.runtime.allocator as a;"
        f"advx.run_matrix({{'datasets': [{{'name': 'synthetic'}}], 'models': [{{'name': 'mlp', 'train': {{'epochs': 1}}}}],"
        f"'attacks': [{{'name': 'fgsm', 'eps': 0.1}}], 'matrix': {{'samples': 20, 'cache_dir': {str(tmp_path)!r}}}}});"
        "print(a._state.get('tuned'))"
    )
    assert _in_subprocess(code) == str(GLIBC)
