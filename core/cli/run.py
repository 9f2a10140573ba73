"""``advx run [SPEC]``: run a matrix spec (default: a small matrix on the embedded digits), or dry-run it."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any
from advx.cli.console import _console, progress_for, _print_flags, _print_problems, _print_trainings, _result_table
from advx.cli.report import _report_path
from advx.analysis.groups import worst_case_groups
from advx.cli.results import _worst_case_table


DEFAULT_SPEC = """\
# The default matrix of `advx run` with no spec: the embedded digits dataset, no download;
# fast (FGSM) against iterative (BIM, PGD) L-inf attacks, and the minimal L2 perturbation (DeepFool).
[matrix]
name = "digits-default"
samples = 500
batch_size = 250
device = "cpu"
seed = 0

[[datasets]]
name = "digits"

[[models]]
name = "mnist-cnn"
train = { epochs = 30, batch_size = 64 }

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = [0.05, 0.1, 0.2, 0.3]

[[attacks]]
name = "bim"
eps = [0.1, 0.2]
alpha = 0.025
steps = 8

[[attacks]]
name = "pgd"
eps = 0.2
alpha = 0.02
steps = 20

[[attacks]]
name = "deepfool"
"""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: finished cells kept, the workers stopped, exit 143."""


#: set by SIGTERM: what some libraries (Ray's waits) re-raise is a plain KeyboardInterrupt
_SIGTERM = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    _SIGTERM.set()
    raise Terminated()


def interrupt_code(exc: KeyboardInterrupt) -> int:
    """The exit code of an interrupt: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(exc, Terminated) or _SIGTERM.is_set() else 130


def cmd_run(args: argparse.Namespace) -> int:
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        return _run(args)
    _SIGTERM.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from advx.engine import run_matrix
    from advx.store.results import ResultStore
    from advx.engine.spec import MatrixSpec

    console = _console()
    spec = MatrixSpec.from_toml(args.spec) if args.spec else MatrixSpec.from_toml_string(DEFAULT_SPEC, "default spec")
    if args.cache_dir:
        spec = spec.model_copy(update={"matrix": spec.matrix.model_copy(update={"cache_dir": args.cache_dir})})
    if args.executor or args.address or args.threads is not None:
        from advx.engine.run import load_spec

        spec = load_spec(spec, executor=args.executor, ray_address=args.address, threads=args.threads)
    if args.dry_run:
        return _print_dry_run(console, spec, args)
    if args.report and args.report is not True and Path(args.report).suffix.lower() not in (".html", ".htm"):
        from advx.contract.errors import ConfigError

        raise ConfigError(f"--report {args.report}: the report of a run is HTML; name it .html (or use advx report --format md)")
    with progress_for(console, args.quiet) as progress:
        try:
            result = run_matrix(spec, store=args.db, on_event=progress, device=args.device, rerun=args.rerun)
        except KeyboardInterrupt as exc:
            if progress.started:
                progress.progress.stop()
            kept = shards = 0
            if Path(args.db).exists():
                with ResultStore(args.db, readonly=True) as store:
                    kept = len(store.cells(spec.matrix.name, status="done"))
                    shards = sum(len(store.shard_records(r.cell_key)) for r in store.cells(spec.matrix.name) if r.status in ("partial", "failed"))
            also = f" (and {shards} shards of unfinished cells)" if shards else ""
            console.print(f"[yellow]interrupted[/yellow]: {kept} finished cells{also} are kept in {args.db}; run the same command again to resume")
            return interrupt_code(exc)
    if result.db is not None:
        _record_spec_file(args.db, spec.matrix.name, args.spec)
    with ResultStore(args.db, readonly=True) as store:
        rows = store.cells(spec.matrix.name)
        console.print(_result_table(rows, f"{spec.matrix.name}: results in {args.db}", console.width))
        _print_problems(console, rows)
        if worst_case_groups(rows):
            console.print(_worst_case_table(store, rows, only_groups=True, width=console.width))
        _print_trainings(console, result.trainings)
        _print_flags(console, rows, store.samples)
    console.print(
        f"{result.done} cells run, {result.skipped} skipped (already done), {result.failed} failed"
        + (f", {result.not_applicable} not applicable" if result.not_applicable else "")
        + (f"; {result.elsewhere} computed meanwhile by another run on {args.db}" if result.elsewhere else "")
        + (f"; {result.shards} shards run" if result.shards else "")
    )
    if args.report:
        from advx.report import write_report

        out = _report_path(args.db, None if args.report is True else args.report, "html")
        write_report(args.db, out, spec_name=spec.matrix.name)
        console.print(f"report: {out}", soft_wrap=True)
    return 1 if result.failed else 0


def _record_spec_file(db: str, spec_name: str, spec_path: str | None) -> None:
    """Remember in the results file where the spec came from (its path and git commit), for reports."""
    from advx.report import spec_provenance
    from advx.store.results import ResultStore

    info = spec_provenance(spec_path) if spec_path else {"path": "built-in default spec of advx run", "git_commit": None}
    with ResultStore(db) as store:
        store.set_meta(f"spec:{spec_name}", json.dumps(info))


def _print_dry_run(console, spec: Any, args: argparse.Namespace) -> int:
    from rich.markup import escape

    from advx.engine import dry_run

    plan = dry_run(spec, store=args.db, device=args.device, rerun=args.rerun)
    console.print(f"dry run of {escape(plan.spec_name)}: {len(plan.todo) + len(plan.done)} cells, {len(plan.todo)} to run, {len(plan.done)} already done in {escape(args.db)}; nothing is run")
    for c in plan.todo:
        _print_wrapped(console, "  run    ", c.title())
        if c.key in plan.shards:
            todo, count = plan.shards[c.key]
            _print_wrapped(console, "         ", f"{len(todo)} of {count} shards to run: " + ", ".join(f"{s.index + 1} (examples {s.start}-{s.stop - 1})" for s in todo))
    for c in plan.done:
        _print_wrapped(console, "  done   ", c.title())
    for what, cached in plan.trainings:
        _print_wrapped(console, f"  {'cached' if cached else 'train'} ", what)
    return 0


def _print_wrapped(console, prefix: str, text: str) -> None:
    """``prefix`` and ``text`` within the console's width, continued under the text: lines
    break at spaces only (a label's number or a name with a hyphen is never split)."""
    import textwrap

    width = max(console.width - len(prefix), 20)
    lines = textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]
    for i, line in enumerate(lines):
        console.print((prefix if i == 0 else " " * len(prefix)) + line, markup=False, highlight=False, soft_wrap=True)
