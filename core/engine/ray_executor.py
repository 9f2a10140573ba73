"""``RayExecutor``: the cells of a matrix as Ray tasks, on an existing cluster or a local one.

Ray is an optional extra (``pip install 'advx[distributed]'``); without it, choosing this
executor is a one-line error saying what to install.

How a run is laid out, so that each model is trained once per cluster, not once per worker:

1. one task per distinct trained model the cells need (base models, transfer sources,
   gray-box copies) trains it into the cache directory;
2. one task per distinct defended model applies the defense once (ensemble members,
   adversarially trained twins and fitted detectors go to the same cache);
3. one task per cell, or per (cell, shard) for a sharded cell (``[matrix] shard_size``),
   which loads what it needs from the cache and returns its row, per-sample records and
   trainings to the driver, which commits it at once (so killing the driver loses no
   finished cell or shard, and a rerun resumes). A Ray worker keeps its workspace between
   tasks, so the shards it runs one after another share the loaded data and models.

The cache must be a directory every node can reach (``[matrix] cache_dir`` on a shared
file system). Without one, each node trains what it needs on its own (correct results,
repeated work): steps 1 and 2 then only warm the nodes they ran on.

A task whose worker dies is retried once by Ray (``max_retries``); if it dies again, the
cell (or shard) is recorded as failed with the cause, never lost silently; the shards that
finished are stored and kept. Cells on CUDA request a
GPU from Ray. Plugins must be installed on every node (entry points); classes registered
in-process with ``Registry.add`` are shipped with the tasks.

Each cell is claimed in the results file just before its task is submitted (another run on
the file may be computing it); a task runs with ``[matrix] threads`` torch threads (and as
many Ray CPUs, up to the cluster's) when the spec gives them, else one, and stops itself at
``[matrix] cell_timeout``. The driver keeps its own SIGTERM handling (Ray's would exit with
code 15 and a stack dump), and a local cluster started for the run does not outlive its
driver: a small reaper process, told the cluster's processes, kills them if the driver
dies without shutting the cluster down (``kill -9``), instead of Ray's agents lingering
for a minute or more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from advx.runtime.allocator import tune_cpu_allocator
from advx.contract.errors import ConfigError
from advx.contract.registry import Registry
from advx.engine.execute import CellOutcome, execute_cell, failed_outcome
from advx.engine.executors import WAIT_POLL, Dispatch, Executor
from advx.engine.plan import Cell, cell_of, digest
from advx.engine.workspace import Workspace

#: tries of a task whose worker died (Ray's max_retries)
RETRIES = 1


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'advx[distributed]'") from None
    return ray


#: the workspace of this Ray worker process, by (device, cache, added plugins): the tasks a worker
#: runs one after the other (the shards of a cell) share its loaded data and models
_WORKSPACES: dict[str, Workspace] = {}


def _workspace(added: list, device: str, cache_dir: str | None, threads: int | None = None) -> Workspace:
    tune_cpu_allocator()  # Ray workers are processes of their own
    torch.set_num_threads(threads or 1)  # as many threads as Ray CPUs: tasks do not fight over cores
    k = digest([device, cache_dir, [(kind, cls.__module__, cls.__qualname__, package) for kind, cls, package in added]])
    ws = _WORKSPACES.get(k)
    if ws is None:
        reg = Registry.discover()
        for kind, cls, package in added:
            if cls.name not in reg.names(kind):
                reg.add(kind, cls, package=package)
        ws = _WORKSPACES[k] = Workspace(reg, torch.device(device), cache_dir)
    ws.trainings.clear()  # a task reports the trainings it did itself
    return ws


def _train_task(added, device, cache_dir, threads, ds, model):
    ws = _workspace(added, device, cache_dir, threads)
    ws.base_model(ds, model)
    return [t.as_dict() for t in ws.trainings]


def _defend_task(added, device, cache_dir, threads, ds, model, defense):
    ws = _workspace(added, device, cache_dir, threads)
    ws.defended_model(ds, model, defense)
    return [t.as_dict() for t in ws.trainings]


def _cell_task(added, device, cache_dir, threads, cell):
    ws = _workspace(added, device, cache_dir, threads)
    out = execute_cell(cell, ws)
    samples = None if out.samples is None else {k: v.numpy() for k, v in out.samples.items()}
    return out.row, samples, out.trainings, out.shard


class RayExecutor(Executor):
    """Cells as Ray tasks (see the module docstring); ``address`` of a cluster, or None for a local one."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        _ray()  # fail now, with the install hint

    def _init(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - an unreachable cluster is one line
            where = f"cluster at {self.address!r}" if self.address else "a local Ray cluster"
            raise ConfigError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        finally:
            if main and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)  # Ray's exits with code 15 and a stack dump
        return True

    def map(self, cells: Sequence[Cell], registry: Registry, device: torch.device, cache_dir: str | None, on_event, claim=None):
        ray = _ray()
        started = self._init(ray)
        reaper = _Reaper.start() if started and not self.address else None
        try:
            yield from self._run(ray, list(cells), registry, str(device), cache_dir, on_event, claim)
        finally:
            if started:
                ray.shutdown()
            if reaper is not None:
                reaper.stop()

    def _run(self, ray, cells, registry, device, cache_dir, on_event, claim=None):
        if not cells:
            return
        gpus = 1 if device.startswith("cuda") else 0
        threads = cells[0].options.threads
        cpus = 1 if not threads else max(1, min(threads, int(ray.cluster_resources().get("CPU", 1))))
        opts = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": RETRIES, "retry_exceptions": False}
        added = list(registry.added)
        train = ray.remote(**opts)(_train_task)
        defend = ray.remote(**opts)(_defend_task)
        run_cell = ray.remote(**opts)(_cell_task)

        distinct = list({cell_of(u).key: cell_of(u) for u in cells}.values())  # a sharded cell once
        # 1. every trained model the cells need, once
        bases: dict[str, tuple] = {}
        for c in distinct:
            bases.setdefault(digest([c.dataset.key(), c.model.key()]), (c.dataset, c.model))
            for n in c.threat.needs(c):
                bases.setdefault(digest([c.dataset.key(), n.model.key()]), (c.dataset, n.model))
        trainings = self._wait(ray, [train.remote(added, device, cache_dir, threads, ds, m) for ds, m in bases.values()])
        # 2. every defended model, once (defenses train or fit more)
        defended: dict[str, tuple] = {}
        for c in distinct:
            defended.setdefault(c.model_group(), (c.dataset, c.model, c.defense))
            for n in c.threat.needs(c):
                if n.defended:  # a gray-box copy, a defended substitute: defended once, here
                    defended.setdefault(digest([c.dataset.key(), n.model.key(), c.defense.key()]), (c.dataset, n.model, c.defense))
        trainings += self._wait(ray, [defend.remote(added, device, cache_dir, threads, *d) for d in defended.values()])
        # 3. the cells, each claimed as it is submitted, committed by the caller as each comes back
        todo = Dispatch(cells, claim)
        pending: dict[Any, Cell] = {}
        first = True
        while pending or not todo.empty():
            while (c := todo.next()) is not None:
                pending[run_cell.remote(added, device, cache_dir, threads, c)] = c
                if on_event is not None:
                    on_event("cell_start", c, {})
            if not pending:  # only cells another run is computing
                time.sleep(WAIT_POLL / 4)
                continue
            done, _ = ray.wait(list(pending), num_returns=1, timeout=None if todo.empty() else WAIT_POLL)
            if not done:
                continue
            ref = done[0]
            cell = pending.pop(ref)
            try:
                row, samples, cell_trainings, shard = ray.get(ref)
                # Ray returns read-only arrays (shared memory): copy before handing them to torch
                samples = None if samples is None else {k: torch.from_numpy(v.copy()) for k, v in samples.items()}
            except Exception as exc:  # noqa: BLE001 - a task that died (twice) is a failed cell with its cause
                row = failed_outcome(cell, device, f"Ray task of this cell failed after {RETRIES + 1} tries: {_cause(exc)}").row
                samples, cell_trainings, shard = None, [], None
            if first:  # the trainings of steps 1 and 2 are reported with the first cell
                cell_trainings = trainings + list(cell_trainings)
                first = False
            yield cell, CellOutcome(row, samples, cell_trainings, shard)

    @staticmethod
    def _wait(ray, refs) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ref in refs:
            try:
                out += ray.get(ref)
            except Exception:  # noqa: BLE001 - the cells that need it will fail with the cause
                continue
        return out


def _descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every process below ``pid`` (Linux ``/proc``; elsewhere none)."""
    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        start[int(entry.name)] = fields[19]
    out, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        out.append((p, start[p]))
        stack.extend(children.get(p, []))
    return out


#: the reaper: reads ``pid start`` lines of the processes to end if its driver dies; ``done``
#: (the cluster was shut down) or nothing at all lets it exit without killing
_REAPER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
procs = {}
for line in sys.stdin:
    if line.strip() == "done":
        sys.exit(0)
    pid, start = line.split()
    procs[int(pid)] = start
for pid, start in procs.items():
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[19] == start:
                os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass
"""


class _Reaper:
    """Ends the processes of a local Ray cluster when its driver dies without shutting it down.

    A thread of the driver tells the reaper process the driver's descendants every second;
    if the driver dies, the reaper reads the end of its pipe and kills those still running."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.known: set[tuple[int, str]] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._tell, name="advx-ray-reaper", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls) -> _Reaper | None:
        if not Path("/proc/self/stat").exists():
            return None
        proc = subprocess.Popen([sys.executable, "-c", _REAPER], stdin=subprocess.PIPE, text=True, start_new_session=True)
        return cls(proc)

    def _tell(self) -> None:
        while True:
            new = {p for p in _descendants(os.getpid()) if p[0] != self.proc.pid} - self.known
            try:
                for pid, start in new:
                    self.proc.stdin.write(f"{pid} {start}\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
            except (OSError, ValueError):
                return
            self.known |= new
            if self.done.wait(1.0):
                return

    def stop(self) -> None:
        """The cluster was shut down: the reaper exits without killing."""
        self.done.set()
        self.thread.join()
        try:
            self.proc.stdin.write("done\n")  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass
        self.proc.wait(timeout=10)


def _cause(exc: BaseException) -> str:
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    return f"{name}: {text[:300]}" if text else name
