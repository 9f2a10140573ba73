"""Executors under faults: runs started as `advx run` subprocesses and killed, stopped, interrupted
or raced, for the in-process and one-worker-per-device executors (and Ray where it is installed).
Each test asserts the results file's rows, the processes left behind (read from /proc) and the
exit code and message. Linux only (/proc)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import advx
from advx import Attack, AttackConfig
from advx.analysis.records import SAMPLE_COLUMN_NAMES

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

CELLS = 4


def spec_text(tmp_path: Path, steps: int = 150, **matrix) -> str:
    """Four PGD cells of one digits MLP (one model group), each a few seconds on a loaded CPU."""
    options = {
        "name": "faults", "samples": 100, "batch_size": 100, "cache_dir": str(tmp_path / "cache"),
        "keep_examples": 0, "diagnostics": False, **matrix,
    }
    lines = ["[matrix]"] + [f"{k} = {json.dumps(v)}" for k, v in options.items()]  # JSON scalars are TOML's
    lines += ['[[datasets]]', 'name = "digits"', '[[models]]', 'name = "mlp"', "train = { epochs = 1 }"]
    # every step for every example (no early exit): a cell's length must not depend on how fast
    # its examples break, or a run can end before the signal a test sends it
    lines += ['[[attacks]]', 'name = "pgd"', "eps = [0.05, 0.1, 0.15, 0.2]", "alpha = 0.01", f"steps = {steps}", "early_exit = false"]
    return "\n".join(lines) + "\n"


def start(tmp_path: Path, *args: str, spec: str | None = None, db: str = "r.db", log: str = "out.txt", session: bool = False) -> subprocess.Popen:
    """`advx run` of the spec in a subprocess, its output in ``tmp_path / log``."""
    path = tmp_path / "spec.toml"
    if spec is not None or not path.exists():
        path.write_text(spec or spec_text(tmp_path))
    with open(tmp_path / log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "advx", "run", str(path), "--db", str(tmp_path / db), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=session,
        )
    proc.log = tmp_path / log  # type: ignore[attr-defined]
    return proc


def busy(tmp_path: Path, *args: str, cells: int = 1, **kw) -> tuple[subprocess.Popen, list[int]]:
    """``start``, then wait until the run computes ``cells`` cells, with its two workers up when it
    has ``--device cpu,cpu``; the run and the processes below it then."""
    run = start(tmp_path, *args, **kw)
    n = 2 if "cpu,cpu" in args else 0
    wait_for(lambda: in_flight(tmp_path / "r.db", run, cells) and len(workers(run.pid)) >= n, run)
    return run, [p for p, _ in descendants(run.pid)]


def text(path: Path) -> str:
    """The output of a run, as one line (the console wraps at 80 columns)."""
    return " ".join(path.read_text().split())


def finish(proc: subprocess.Popen, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [p for p, _ in descendants(proc.pid)] + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise


def wait_for(what, run: subprocess.Popen, timeout: float = 180, every: float = 0.1):
    """Poll ``what()`` until true while ``run`` is running (its output in the error otherwise)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        if run.poll() is not None:
            raise AssertionError(f"the run ended (exit {run.returncode}) first: {run.log.read_text()[-2000:]}")  # type: ignore[attr-defined]
        time.sleep(every)
    raise AssertionError("timed out waiting for the run")


def query(db: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the results file as another reader sees it (empty while it does not exist)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet, or locked by a writer
        return []


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the living processes below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[0] != "Z":
            children.setdefault(int(st[1]), []).append(int(entry.name))
    out, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append((p, cmd))
        stack.extend(children.get(p, []))
    return out


def workers(driver: int) -> list[int]:
    return [p for p, cmd in descendants(driver) if "spawn_main" in cmd]


def left_behind(pids, timeout: float = 20) -> list[int]:
    """Those of ``pids`` still alive after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def cells(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT cell_key, status FROM cells"))


def in_flight(db: Path, run: subprocess.Popen, n: int = 1) -> bool:
    """At least ``n`` cells claimed by ``run`` (handed to a worker, being computed)."""
    return sum(f":{run.pid}:" in owner for (owner,) in query(db, "SELECT owner FROM claims")) >= n


# -- 1. no orphans; a rerun resumes -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "cpu,cpu"])
def test_kill_9_of_the_driver_leaves_no_process_and_a_rerun_resumes(tmp_path, device):
    db = tmp_path / "r.db"
    run, below = busy(tmp_path, "--device", device)  # below: workers and multiprocessing's resource tracker
    run.send_signal(signal.SIGKILL)
    assert finish(run) == -signal.SIGKILL
    assert left_behind(below) == []  # none re-parented to go on computing cells nobody stores
    kept = {k for k, s in cells(db).items() if s == "done"}
    # the dead run's claims are stale at once (its process is gone): the rerun does not wait for them
    rerun = start(tmp_path, "--device", device, log="rerun.txt")
    assert finish(rerun) == 0
    out = text(tmp_path / "rerun.txt")
    assert f"{CELLS - len(kept)} cells run, {len(kept)} skipped (already done), 0 failed" in out
    assert list(cells(db).values()) == ["done"] * CELLS
    assert query(db, "SELECT COUNT(*) FROM claims") == [(0,)]


def sharded_text(tmp_path: Path, shard_size: int | None = 50) -> str:
    """One PGD cell of 400 examples in shards of 50 (each a few seconds on a loaded CPU)."""
    text_ = spec_text(tmp_path, threads=1, samples=400, batch_size=50, **({"shard_size": shard_size} if shard_size else {}))
    return text_.replace("eps = [0.05, 0.1, 0.15, 0.2]", "eps = 0.1").replace('name = "faults"', 'name = "shards"')


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_cell_loses_its_shard_only_and_a_rerun_computes_just_that(tmp_path):
    db = tmp_path / "r.db"
    run = start(tmp_path, "--device", "cpu,cpu", spec=sharded_text(tmp_path))
    # a shard stored, and both workers on one
    wait_for(lambda: query(db, "SELECT COUNT(*) FROM shards") >= [(1,)] and in_flight(db, run, 2) and len(workers(run.pid)) >= 2, run)
    victim = workers(run.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert finish(run) == 1  # the cell failed ...
    ((status, error),) = query(db, "SELECT status, error FROM cells")
    assert status == "failed" and f"(pid {victim}) died (killed by SIGKILL) while computing this cell" in error
    assert error.startswith("shard ")
    # ... and every other shard finished and is stored (a fresh worker took the victim's place)
    assert query(db, "SELECT COUNT(*) FROM shards") == [(7,)]
    rerun = start(tmp_path, "--device", "cpu,cpu", log="rerun.txt")
    assert finish(rerun) == 0
    out = text(tmp_path / "rerun.txt")
    assert "1 shards to run (7 stored by an earlier run)" in out and "1 shards run" in out
    assert query(db, "SELECT status FROM cells") == [("done",)] and query(db, "SELECT COUNT(*) FROM shards") == [(8,)]
    # the same per-example records as one uninterrupted run of the cell, whole
    whole = start(tmp_path, spec=sharded_text(tmp_path, None), db="whole.db", log="whole.txt")
    assert finish(whole) == 0
    columns = ", ".join(SAMPLE_COLUMN_NAMES)
    records = query(db, f"SELECT {columns} FROM samples ORDER BY idx")
    assert len(records) == 400 and records == query(tmp_path / "whole.db", f"SELECT {columns} FROM samples ORDER BY idx")


# -- 2. one dead or hung worker does not take the run with it ---------------------------------


@pytest.mark.slow
def test_a_killed_worker_fails_its_cell_and_the_others_finish(tmp_path):
    db = tmp_path / "r.db"
    run, _ = busy(tmp_path, "--device", "cpu,cpu", cells=2)  # both workers on a cell
    victim = workers(run.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert finish(run) == 1  # a failed cell
    rows = query(db, "SELECT status, error FROM cells")
    assert sorted(s for s, _ in rows) == ["done"] * (CELLS - 1) + ["failed"]
    (error,) = [e for s, e in rows if s == "failed"]
    assert f"worker process on cpu (pid {victim}) died (killed by SIGKILL) while computing this cell" in error
    out = text(tmp_path / "out.txt")
    assert f"{CELLS - 1} cells run, 0 skipped (already done), 1 failed" in out and "Traceback" not in out
    assert descendants(run.pid) == []


@pytest.mark.slow
def test_a_stopped_worker_is_detected_by_its_heartbeat(tmp_path):
    db = tmp_path / "r.db"
    run, _ = busy(tmp_path, "--device", "cpu,cpu", cells=2, spec=spec_text(tmp_path, heartbeat_timeout=10.0))
    victim = workers(run.pid)[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        assert finish(run) == 1
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)
    rows = query(db, "SELECT status, error FROM cells")
    assert sorted(s for s, _ in rows) == ["done"] * (CELLS - 1) + ["failed"]
    (error,) = [e for s, e in rows if s == "failed"]
    assert f"(pid {victim}) stopped responding" in error and "heartbeat_timeout = 10 s" in error and "was killed" in error
    assert not alive(victim)


class Sleeper(Attack):
    """FGSM after sleeping ``seconds``: a cell that takes as long as asked."""

    name: ClassVar[str] = "sleeper"

    class Config(AttackConfig):
        seconds: float = 0.0

    def perturb(self, model, x, y, bounds, targeted=False):
        time.sleep(self.config.seconds)
        return x.clone()


class ThreadProbe(Attack):
    """Records the torch threads the cell runs with."""

    name: ClassVar[str] = "thread-probe"
    seen: ClassVar[list[int]] = []

    def perturb(self, model, x, y, bounds, targeted=False):
        ThreadProbe.seen.append(torch.get_num_threads())
        return x.clone()


def _tiny(tmp_path, attacks, **matrix):
    return {
        "matrix": {"name": "t", "samples": 20, "batch_size": 20, "cache_dir": str(tmp_path / "cache"), "diagnostics": False, **matrix},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 1}}],
        "attacks": attacks,
    }


def test_a_cell_past_cell_timeout_is_stopped_and_recorded(tmp_path):
    reg = advx.Registry.discover()
    reg.add("attack", Sleeper, package="tests")
    advx.run_matrix(_tiny(tmp_path, [{"name": "fgsm"}]))  # the model trained (trainings count in a cell's time)
    attacks = [{"name": "sleeper", "seconds": 30.0}, {"name": "sleeper", "seconds": 0.0}]
    res = advx.run_matrix(_tiny(tmp_path, attacks, cell_timeout=5.0), registry=reg, store=tmp_path / "r.db")
    by = {r.attack_config["seconds"]: r for r in res.rows}
    assert by[0.0].status == "done", by[0.0].error
    assert by[30.0].status == "failed"
    assert 'ran past [matrix] cell_timeout = 5 s and was stopped (in attack "sleeper")' in by[30.0].error
    assert by[30.0].seconds < 30  # stopped, not waited for
    assert advx.MatrixOptions().cell_timeout == 21600  # the default: six hours


def test_threads_set_the_torch_threads_of_every_cell(tmp_path):
    reg = advx.Registry.discover()
    reg.add("attack", ThreadProbe, package="tests")
    before = torch.get_num_threads()
    ThreadProbe.seen.clear()
    advx.run_matrix(_tiny(tmp_path, [{"name": "thread-probe"}], threads=1), registry=reg)
    advx.run_matrix(_tiny(tmp_path, [{"name": "thread-probe"}], threads=3), registry=reg)
    assert ThreadProbe.seen == [1, 3]
    assert torch.get_num_threads() == before  # given back after the run


def test_the_same_numbers_whatever_the_executor_with_models_trained_in_the_run(tmp_path):
    """Each run trains its own model (its own cache): with [matrix] threads, a worker trains the
    same weights as the driver, so the rows are equal, not approximately equal."""
    def spec(cache, device):
        s = _tiny(tmp_path, [{"name": "fgsm", "eps": 0.1}, {"name": "pgd", "eps": 0.1, "alpha": 0.02, "steps": 5}], threads=1, device=device)
        s["matrix"]["cache_dir"] = str(tmp_path / cache)
        return s

    local = advx.run_matrix(spec("a", "cpu"))
    workers_ = advx.run_matrix(spec("b", "cpu,cpu"))
    keys = ("robust_accuracy", "clean_accuracy", "mean_l2", "success_rate")
    assert local.done == workers_.done == 2
    assert {r.cell_key: tuple(r[k] for k in keys) for r in local.rows} == {r.cell_key: tuple(r[k] for k in keys) for r in workers_.rows}
    assert sum(not t["cached"] for t in workers_.trainings) == 1  # one model group over two workers: trained once


# -- 3. two runs on one file share the work ---------------------------------------------------


@pytest.mark.slow
def test_two_runs_on_one_file_compute_every_cell_once(tmp_path):
    db = tmp_path / "r.db"
    first = start(tmp_path, log="first.txt")
    second = start(tmp_path, log="second.txt")
    assert finish(first) == 0 and finish(second) == 0
    outs = [text(tmp_path / f) for f in ("first.txt", "second.txt")]
    ran = [int(o.split(" cells run, ")[0].rsplit(" ", 1)[-1]) for o in outs]
    assert sum(ran) == CELLS  # every cell computed once, by one run or the other
    assert list(cells(db).values()) == ["done"] * CELLS
    if min(ran) > 0:  # the runs overlapped: the one that waited says so
        assert any("computed meanwhile by another run" in o for o in outs)
    assert query(db, "SELECT COUNT(*) FROM trainings WHERE cached = 0") == [(1,)]  # one training for both
    assert query(db, "SELECT COUNT(*) FROM claims") == [(0,)]


# -- 7. signals, quietly ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "cpu,cpu"])
def test_sigterm_is_handled_like_ctrl_c(tmp_path, device):
    db = tmp_path / "r.db"
    run, below = busy(tmp_path, "--device", device)
    run.send_signal(signal.SIGTERM)
    assert finish(run) == 143
    out = text(tmp_path / "out.txt")
    assert "interrupted: " in out and "run the same command again to resume" in out and "Traceback" not in out
    assert left_behind(below) == []
    assert query(db, "SELECT COUNT(*) FROM claims") == [(0,)]  # given back: a rerun starts at once


@pytest.mark.slow
def test_ctrl_c_on_the_terminal_prints_no_worker_traceback(tmp_path):
    run, below = busy(tmp_path, "--device", "cpu,cpu", cells=2, session=True)  # its own process group, as a terminal's job
    one = workers(run.pid)[0]
    os.kill(one, signal.SIGINT)  # a worker leaves Ctrl-C to its driver: it goes on computing
    time.sleep(1.0)
    assert alive(one) and one in workers(run.pid)
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: to the driver and its workers alike
    assert finish(run) == 130
    out = text(tmp_path / "out.txt")
    assert "interrupted: " in out and "Traceback" not in out and "KeyboardInterrupt" not in out
    assert left_behind(below) == []


# -- Ray, where installed -----------------------------------------------------------------------


@pytest.mark.slow
def test_ray_driver_killed_leaves_no_ray_process_and_sigterm_exits_143(tmp_path):
    pytest.importorskip("ray")
    db = tmp_path / "r.db"
    run, below = busy(tmp_path, "--executor", "ray")
    run.send_signal(signal.SIGKILL)
    finish(run)
    assert left_behind(below, timeout=15) == []  # Ray's agents do not linger for a minute
    run, _ = busy(tmp_path, "--executor", "ray", log="term.txt")
    run.send_signal(signal.SIGTERM)
    assert finish(run) == 143
    out = text(tmp_path / "term.txt")
    assert "interrupted: " in out and "Traceback" not in out
    assert query(db, f"SELECT COUNT(*) FROM claims WHERE owner LIKE '%:{run.pid}:%'") == [(0,)]  # given back
