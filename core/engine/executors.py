"""Executors: where cells run.

``Executor.map(cells, registry, device, cache_dir, on_event)`` yields ``(cell, outcome)``
as each cell finishes, in any order; ``run_matrix`` commits each to the results store at
once. Cells are self-describing, so an executor may run them anywhere:

* ``InProcessExecutor`` (the default): every cell in this process, in order, sharing one
  ``Workspace``;
* ``MultiDeviceExecutor``: one worker process per device (``cuda:0,cuda:1``, ``cuda:all``,
  or several ``cpu``). A worker discovers the installed plugins itself, keeps its own
  workspace and sends each finished cell back. Cells that share a trained model go to the
  same worker, so each model is trained once; checkpoints are written atomically, so
  workers that do train the same model (a transfer source) cannot corrupt the cache.
  Plugins registered in-process with ``Registry.add`` are not visible to workers: install
  them as packages (entry points) to use them here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from advx.runtime.allocator import tune_cpu_allocator
from advx.contract.errors import AdvxError
from advx.contract.registry import Registry
from advx.engine.execute import CellOutcome, execute_cell
from advx.engine.plan import Cell
from advx.engine.workspace import Event, Workspace


class Executor(ABC):
    """Runs cells and yields ``(cell, outcome)`` as each finishes, in any order."""

    @abstractmethod
    def map(
        self, cells: Sequence[Cell], registry: Registry, device: torch.device, cache_dir: str | None, on_event: Event | None
    ) -> Iterator[tuple[Cell, CellOutcome]]: ...


class InProcessExecutor(Executor):
    """The default: every cell in this process, in order, sharing one ``Workspace``."""

    def map(self, cells, registry, device, cache_dir, on_event):
        ws = Workspace(registry, device, cache_dir, on_event)
        for cell in cells:
            ws.emit("cell_start", cell)
            yield cell, execute_cell(cell, ws)


def _worker(worker: int, device: str, cells: list[Cell], cache_dir: str | None, out: Any, threads: int) -> None:
    tune_cpu_allocator()  # a spawned process starts with glibc's defaults
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    def on_event(event: str, cell: Cell | None, payload: dict[str, Any]) -> None:
        if event in ("batch", "train_start", "train_epoch", "train_done"):
            out.put(("event", event, cell.key if cell is not None else None, payload))

    ws = Workspace(Registry.discover(), dev, cache_dir, on_event)
    for cell in cells:
        out.put(("start", cell.key))
        outcome = execute_cell(cell, ws)
        # numpy, not tensors: torch shares tensors through file descriptors that die with the worker
        arrays = None if outcome.samples is None else {k: v.numpy() for k, v in outcome.samples.items()}
        out.put(("result", cell.key, outcome.row, arrays, outcome.trainings))
    out.put(("exit", worker))


def assign(cells: Sequence[Cell], n: int) -> list[list[Cell]]:
    """Split cells into ``n`` lists, keeping cells of one trained model together, balanced by count."""
    groups: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        groups[c.model_group()].append(c)
    shares: list[list[Cell]] = [[] for _ in range(n)]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(shares, key=len).extend(group)
    # a single big group would leave workers idle: split it, at the cost of training twice
    while len(groups) < n and any(len(s) == 0 for s in shares):
        big = max(shares, key=len)
        if len(big) < 2:
            break
        empty = next(s for s in shares if not s)
        half = len(big) // 2
        empty.extend(big[half:])
        del big[half:]
    return shares


def worker_threads(devices: Sequence[str], shares: Sequence[Sequence[Cell]], cpu_threads: int | None = None) -> list[int]:
    """Torch threads of each worker: CPU workers with cells split the cores between them
    (instead of each claiming all of them, which oversubscribes the machine) unless
    ``cpu_threads`` is given; a GPU worker keeps torch's default."""
    n_cpu = sum(1 for d, s in zip(devices, shares) if s and d.startswith("cpu"))
    cpu = cpu_threads or max(1, (os.cpu_count() or 1) // max(n_cpu, 1))
    return [cpu if d.startswith("cpu") else torch.get_num_threads() for d in devices]


class MultiDeviceExecutor(Executor):
    """One worker process per device (``cuda:0``, ``cuda:1``, ... or several ``cpu``).

    CPU workers split the cores between them (``os.cpu_count() // workers`` torch threads
    each) unless ``cpu_threads`` says how many each gets: a scaling measurement gives every
    worker count the same threads per worker.
    """

    def __init__(self, devices: Sequence[str | torch.device], poll_seconds: float = 1.0, cpu_threads: int | None = None) -> None:
        self.devices = [str(d) for d in devices]
        self.poll_seconds = poll_seconds
        self.cpu_threads = cpu_threads

    def map(self, cells, registry, device, cache_dir, on_event):
        by_key = {c.key: c for c in cells}
        shares = assign(list(cells), len(self.devices))
        ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
        out = ctx.Queue()
        procs = []
        threads_of = worker_threads(self.devices, shares, self.cpu_threads)
        for i, (dev, share) in enumerate(zip(self.devices, shares)):
            if share:
                threads = threads_of[i]
                p = ctx.Process(target=_worker, args=(i, dev, share, cache_dir, out, threads), daemon=True)
                p.start()
                procs.append((i, dev, p))
        running = {i for i, _, _ in procs}
        try:
            while running:
                try:
                    msg = out.get(timeout=self.poll_seconds)
                except queue.Empty:
                    for i, dev, p in procs:
                        if i in running and not p.is_alive():
                            raise AdvxError(
                                f"worker on {dev} died (exit code {p.exitcode}); finished cells are kept, rerun to resume"
                            )
                    continue
                kind = msg[0]
                if kind == "exit":
                    running.discard(msg[1])
                elif kind == "start":
                    if on_event is not None:
                        on_event("cell_start", by_key[msg[1]], {})
                elif kind == "event":
                    if on_event is not None:
                        on_event(msg[1], by_key.get(msg[2]) if msg[2] else None, msg[3])
                elif kind == "result":
                    samples = None if msg[3] is None else {k: torch.from_numpy(v) for k, v in msg[3].items()}
                    yield by_key[msg[1]], CellOutcome(msg[2], samples, msg[4])
        finally:
            for _, _, p in procs:
                if p.is_alive():
                    p.terminate()
                p.join(timeout=5)
