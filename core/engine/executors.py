"""Executors: where cells run.

``Executor.map(cells, registry, device, cache_dir, on_event, claim)`` yields ``(cell,
outcome)`` as each cell finishes, in any order; ``run_matrix`` commits each to the results
store at once. Cells are self-describing, so an executor may run them anywhere. What an
executor is handed is units of work: whole cells, and the shards of sharded cells
(``advx.engine.plan.Shard``, ``[matrix] shard_size``), which it runs alike
(``execute_cell`` takes either) and yields with their outcome; ``run_matrix`` stores each
shard and merges a cell when its last shard is in (``advx.engine.shards``). So every
executor spreads one large cell over its workers, and a worker lost mid-cell loses only
its shard.
``claim(cell)`` (given when there is a results file, which other runs may share) is asked
just before a cell is computed: ``"run"`` (compute it), ``"wait"`` (another live run is
computing it: ask again later) or ``"done"`` (skip it); an executor yields only the cells
it computed.

* ``InProcessExecutor`` (the default): every cell in this process, in order, sharing one
  ``Workspace``;
* ``MultiDeviceExecutor``: one worker process per device (``cuda:0,cuda:1``, ``cuda:all``,
  or several ``cpu``). A worker discovers the installed plugins itself, keeps its own
  workspace and sends each finished cell back. The driver hands each worker one cell at a
  time (``Dispatch``): a cell of the model group it is on, else of a group no worker is on,
  else of the largest group another worker is on, whose models it then loads from the
  cache (each cache entry is trained once, by whichever process needs it first, while the
  others wait for it: ``advx.runtime.training.cache_lock``). Plugins registered in-process
  with ``Registry.add`` are not visible to workers: install them as packages (entry
  points) to use them here.

Faults, for ``MultiDeviceExecutor``: a worker never outlives its driver (a parent-death
signal on Linux, and everywhere a heartbeat thread that ends the worker when the driver's
pipe breaks or the worker finds itself re-parented: ``advx._lifeline``, which starts
before torch loads), ignores the terminal's Ctrl-C (its driver stops it) and sends a
heartbeat. A worker that dies, stays silent for ``[matrix] heartbeat_timeout`` seconds
(stopped, hung) or runs one cell past ``[matrix] cell_timeout`` (a cell stops itself at the
timeout; this is the backstop for a cell stuck where Python cannot interrupt it) has its
cell recorded as failed with the cause; a fresh worker takes its place on the device, and
the other workers go on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import torch

from advx._lifeline import worker
from advx.runtime.allocator import tune_cpu_allocator
from advx.contract.registry import Registry
from advx.engine.execute import CellOutcome, execute_cell, failed_outcome
from advx.engine.plan import Cell
from advx.engine.workspace import Event, Workspace

#: ``claim(cell)``: ``"run"``, ``"wait"`` or ``"done"`` (see the module docstring)
Claim = Callable[[Cell], str]

#: seconds between two asks of a cell that another run is computing
WAIT_POLL = 2.0


class Executor(ABC):
    """Runs cells and yields ``(cell, outcome)`` as each finishes, in any order."""

    @abstractmethod
    def map(
        self,
        cells: Sequence[Cell],
        registry: Registry,
        device: torch.device,
        cache_dir: str | None,
        on_event: Event | None,
        claim: Claim | None = None,
    ) -> Iterator[tuple[Cell, CellOutcome]]: ...


class Dispatch:
    """The cells not yet handed out, by model group, each claimed the moment it is handed out.

    ``next(group, others)`` is the next cell for a worker on model group ``group`` (None: a
    fresh worker) while other workers are on ``others``: a cell of ``group`` first (its
    model is loaded there), then of a group no worker is on, then of the largest group
    another worker is on; groups in the order of the plan. Cells that another run is
    computing are asked again every ``poll`` seconds; ``None`` means nothing to hand out now.
    """

    def __init__(self, cells: Sequence[Cell], claim: Claim | None = None, poll: float = WAIT_POLL) -> None:
        self.groups: dict[str, list[Cell]] = {}
        for c in cells:
            self.groups.setdefault(c.model_group(), []).append(c)
        self.claim = claim
        self.poll = poll
        self.waiting: list[Cell] = []
        self._asked = 0.0

    def empty(self) -> bool:
        return not self.waiting and not any(self.groups.values())

    def _ask(self, cell: Cell) -> str:
        return "run" if self.claim is None else self.claim(cell)

    def next(self, group: str | None = None, others: Collection[str] = ()) -> Cell | None:
        order = sorted(
            (g for g in self.groups if self.groups[g]),
            key=lambda g: (g != group, g in others, -len(self.groups[g]) if g in others else 0),
        )
        for g in order:
            cells = self.groups[g]
            while cells:
                cell = cells.pop(0)
                verdict = self._ask(cell)
                if verdict == "run":
                    return cell
                if verdict == "wait":
                    self.waiting.append(cell)
        if self.waiting and time.monotonic() - self._asked >= self.poll:
            self._asked = time.monotonic()
            for cell in list(self.waiting):
                verdict = self._ask(cell)
                if verdict != "wait":
                    self.waiting.remove(cell)
                if verdict == "run":
                    return cell
        return None


class InProcessExecutor(Executor):
    """The default: every cell in this process, in order, sharing one ``Workspace``."""

    def map(self, cells, registry, device, cache_dir, on_event, claim=None):
        cells = list(cells)
        threads = torch.get_num_threads()
        if cells and cells[0].options.threads:
            torch.set_num_threads(cells[0].options.threads)
        try:
            ws = Workspace(registry, device, cache_dir, on_event)
            todo, group = Dispatch(cells, claim), None
            while not todo.empty():
                cell = todo.next(group)
                if cell is None:  # only cells another run is computing are left
                    time.sleep(todo.poll / 4)
                    continue
                group = cell.model_group()
                ws.emit("cell_start", cell)
                yield cell, execute_cell(cell, ws)
        finally:
            torch.set_num_threads(threads)


# -- worker processes (started in ``advx._lifeline``, which beats before torch loads) ----------


def worker_loop(link: Any, device: str, cache_dir: str | None, threads: int) -> None:
    """The cells of one worker, one at a time as the driver sends them, until it sends None."""
    tune_cpu_allocator()  # a spawned process starts with glibc's defaults
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    def on_event(event: str, cell: Cell | None, payload: dict[str, Any]) -> None:
        if event in ("batch", "train_start", "train_epoch", "train_done"):
            link.send(("event", event, cell.key if cell is not None else None, payload))

    ws = Workspace(Registry.discover(), dev, cache_dir, on_event)
    while (cell := link.recv()) is not None:
        link.send(("start", cell.key))
        outcome = execute_cell(cell, ws)
        # numpy, not tensors: torch shares tensors through file descriptors that die with the worker
        arrays = None if outcome.samples is None else {k: v.numpy() for k, v in outcome.samples.items()}
        link.send(("result", cell.key, outcome.row, arrays, outcome.trainings, outcome.shard))


def worker_threads(devices: Sequence[str], shares: Sequence[Sequence[Any]], cpu_threads: int | None = None) -> list[int]:
    """Torch threads of each worker: CPU workers with cells split the cores between them
    (instead of each claiming all of them, which oversubscribes the machine) unless
    ``cpu_threads`` is given; a GPU worker keeps torch's default."""
    n_cpu = sum(1 for d, s in zip(devices, shares) if s and d.startswith("cpu"))
    cpu = cpu_threads or max(1, (os.cpu_count() or 1) // max(n_cpu, 1))
    return [cpu if d.startswith("cpu") else torch.get_num_threads() for d in devices]


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C ignored while a worker starts: the worker inherits it from its first instant (Python
    installs no KeyboardInterrupt handler in a process started with SIGINT ignored), so the
    terminal's Ctrl-C, which reaches the whole process group, is left to the driver."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Worker:
    """The driver's view of one worker process."""

    slot: int
    device: str
    proc: Any
    conn: Any
    seen: float  # monotonic time of its last message (or of its start)
    cell: Cell | None = None  # the cell it computes
    since: float = 0.0  # when that cell was handed to it
    group: str | None = None  # the model group of its last cell
    stopping: bool = False  # told to stop: it has no more cells


class MultiDeviceExecutor(Executor):
    """One worker process per device (``cuda:0``, ``cuda:1``, ... or several ``cpu``).

    CPU workers split the cores between them (``os.cpu_count() // workers`` torch threads
    each) unless ``cpu_threads`` (or ``[matrix] threads``) says how many each gets: a scaling
    measurement gives every worker count the same threads per worker.
    """

    def __init__(self, devices: Sequence[str | torch.device], poll_seconds: float = 1.0, cpu_threads: int | None = None) -> None:
        self.devices = [str(d) for d in devices]
        self.poll_seconds = poll_seconds
        self.cpu_threads = cpu_threads

    def map(self, cells, registry, device, cache_dir, on_event, claim=None):
        cells = list(cells)
        if not cells:
            return
        opts = cells[0].options
        by_key = {c.key: c for c in cells}
        todo = Dispatch(cells, claim)
        ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
        n = min(len(self.devices), len(cells))
        threads_of = worker_threads(self.devices, [[0] if i < n else [] for i in range(len(self.devices))], self.cpu_threads or opts.threads)
        beat = min(1.0, opts.heartbeat_timeout / 4)

        def spawn(slot: int) -> _Worker:
            here, there = ctx.Pipe()
            dev = self.devices[slot]
            p = ctx.Process(target=worker, args=(there, os.getpid(), beat, dev, cache_dir, threads_of[slot]), daemon=True)
            with _sigint_ignored():
                p.start()
            there.close()
            return _Worker(slot, dev, p, here, time.monotonic())

        def stop(w: _Worker, why: str | None) -> Iterator[tuple[Cell, CellOutcome]]:
            """End ``w`` (killed if alive); its cell, if any, failed with ``why`` or how it died."""
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join(timeout=10)
            w.conn.close()
            live.remove(w)
            if w.cell is not None:
                cause = why or f"died ({_exit_cause(w.proc.exitcode)})"
                yield w.cell, failed_outcome(w.cell, w.device, f"the worker process on {w.device} (pid {w.proc.pid}) {cause} while computing this cell")
            if not todo.empty():
                live.append(spawn(w.slot))  # a fresh worker on its device for the rest

        live = [spawn(i) for i in range(n)]
        try:
            while live:
                for w in list(live):
                    if w.cell is not None or w.stopping:
                        continue
                    cell = todo.next(w.group, {x.group for x in live if x is not w and x.cell is not None})
                    if cell is not None:
                        w.cell, w.since, w.group = cell, time.monotonic(), cell.model_group()
                    elif todo.empty():
                        w.stopping = True  # None below: no more cells, exit
                    else:
                        continue  # only cells another run is computing: idle until they are decided
                    try:
                        w.conn.send(cell)
                    except OSError:
                        pass  # it died: its sentinel says so below
                wait([w.conn for w in live] + [w.proc.sentinel for w in live], timeout=self.poll_seconds)
                for w in list(live):
                    broken = False
                    try:
                        while w.conn.poll():
                            msg = w.conn.recv()
                            w.seen = time.monotonic()
                            kind = msg[0]
                            if kind == "start" and on_event is not None:
                                on_event("cell_start", by_key[msg[1]], {})
                            elif kind == "event" and on_event is not None:
                                on_event(msg[1], by_key.get(msg[2]) if msg[2] else None, msg[3])
                            elif kind == "result":
                                samples = None if msg[3] is None else {k: torch.from_numpy(v) for k, v in msg[3].items()}
                                w.cell = None
                                yield by_key[msg[1]], CellOutcome(msg[2], samples, msg[4], msg[5])
                    except (EOFError, OSError):
                        broken = True
                    now = time.monotonic()
                    if broken or not w.proc.is_alive():
                        if w.stopping and w.cell is None:
                            w.proc.join(timeout=10)
                            w.conn.close()
                            live.remove(w)
                        else:
                            yield from stop(w, None)
                    elif now - w.seen > opts.heartbeat_timeout:
                        yield from stop(w, f"stopped responding (no heartbeat for {now - w.seen:.0f} s, [matrix] heartbeat_timeout = {opts.heartbeat_timeout:g} s) and was killed")
                    elif w.cell is not None and now - w.since > opts.cell_timeout + opts.heartbeat_timeout:
                        yield from stop(w, f"ran past [matrix] cell_timeout = {opts.cell_timeout:g} s without stopping and was killed")
        finally:
            for w in live:
                if w.proc.is_alive():
                    w.proc.terminate()
            for w in live:
                w.proc.join(timeout=5)
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join(timeout=5)
