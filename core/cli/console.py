"""What the CLI prints: one-line errors, result tables, progress, trainings and sanity flags."""

from __future__ import annotations

import os
from typing import Any


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        # piped or captured without COLUMNS: tables at their natural width instead of 80 columns
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def _error_line(kind: str, message: str) -> None:
    """One line on stderr, whatever the width: ``[Kind]: message``."""
    from rich.markup import escape

    first = " ".join(message.split())  # never more than one line
    _console(stderr=True).print(f"[red][{kind}][/red]: {escape(first)}", soft_wrap=True)


def _result_table(rows: list[dict[str, Any]], title: str):
    """The result rows as a table; failed and not-applicable cells are listed below it (``_problems``)."""
    from rich.markup import escape
    from rich.table import Table

    from advx.store.schema import PLACE_COLUMNS, TABLE_COLUMNS, format_value

    cols = [(c.name, c.header or c.name) for c in TABLE_COLUMNS]
    done = [r for r in rows if r.get("status") == "done"]
    # metric columns no finished row has a value for (detection without a detector, targeted
    # success without a targeted attack) are left out
    cols = [(c, h) for c, h in cols if c in PLACE_COLUMNS or any(r.get(c) is not None for r in done)]
    # place columns with one value across all rows go into the title, so the table stays narrow
    shared = []
    for c in PLACE_COLUMNS:
        values = {str(r.get(c)) for r in rows}
        if len(values) == 1 and len(rows) > 1:
            shared.append(f"{c} {values.pop()}")
            cols = [(k, h) for k, h in cols if k != c]
    if shared:
        title += "\n" + ", ".join(shared)
    table = Table(title=escape(title), title_justify="left")
    table.add_column("#", justify="right")
    for c, head in cols:
        table.add_column(head, justify="left" if c in PLACE_COLUMNS else "right", overflow="fold")
    for i, r in enumerate(rows, 1):
        status = r.get("status")
        if status != "done":
            mark = "[red]failed[/red]" if status == "failed" else "[yellow]n/a[/yellow]"
            cells = [escape(str(r.get(c) or "")) if c in PLACE_COLUMNS else "" for c, _ in cols]
            first_metric = next((j for j, (c, _) in enumerate(cols) if c not in PLACE_COLUMNS), None)
            if first_metric is not None:
                cells[first_metric] = mark
            table.add_row(str(i), *cells)
            continue
        table.add_row(str(i), *[escape(format_value(c, r.get(c))) for c, _ in cols])
    return table


def _print_problems(console, rows: list[dict[str, Any]]) -> None:
    """Each failed or not-applicable cell on its own line, with its error or reason."""
    from rich.markup import escape

    for i, r in enumerate(rows, 1):
        where = " / ".join(str(r.get(c)) for c in ("dataset", "model", "defense", "threat", "attack"))
        if r.get("status") == "failed":
            console.print(f"[red]failed[/red] #{i} {escape(where)}: {escape(str(r.get('error')))}", soft_wrap=True)
        elif r.get("status") == "not-applicable":
            console.print(f"[yellow]not applicable[/yellow] #{i} {escape(where)}: {escape(str(r.get('reason')))}", soft_wrap=True)


class _Progress:
    """Renders run_matrix events: a progress bar per cell, a line per training run."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, int] = {}
        self.train_task: int | None = None

        self.started = False

    def __enter__(self):
        # the live display starts with the first cell, so an error while the spec is read
        # leaves nothing but its one line
        return self

    def __exit__(self, *exc):
        if self.started:
            self.progress.__exit__(*exc)

    def __call__(self, event: str, cell: Any, payload: dict[str, Any]) -> None:
        from rich.markup import escape

        p = self.progress
        if event == "notice":
            self.console.print(payload["message"], soft_wrap=True, markup=False)
            return
        if event != "plan" and not self.started:
            self.progress.__enter__()
            self.started = True
        if event == "plan":
            skipped = payload["skipped"]
            msg = f"{payload['cells']} cells, {payload['todo']} to run"
            if skipped:
                msg += f", {skipped} already in the results (skipped)"
            self.console.print(msg)
        elif event == "cell_start":
            self.tasks[cell.key] = p.add_task(escape(cell.title()), total=cell.options.samples)
        elif event == "train_start":
            self.train_task = p.add_task(f"  training {escape(payload['model'])}", total=payload["epochs"] or 1)
        elif event == "train_epoch" and self.train_task is not None:
            p.update(self.train_task, completed=payload["epoch"])
        elif event == "train_done" and self.train_task is not None:
            note = "loaded from cache" if payload["cached"] else f"trained in {payload['seconds']:.1f}s"
            p.update(self.train_task, completed=p.tasks[self.train_task].total, description=f"  {escape(payload['model'])}: {note}")
            self.train_task = None
        elif event == "batch" and cell is not None and cell.key in self.tasks:
            p.update(self.tasks[cell.key], completed=payload["done"], total=payload["total"])
        elif event in ("cell_done", "cell_failed") and cell is not None and cell.key in self.tasks:
            task = self.tasks[cell.key]
            total = p.tasks[task].total
            if event == "cell_failed":
                p.update(task, description=f"[red]failed[/red] {escape(cell.title())}: {escape(str(payload['row'].get('error')))}")
            else:
                p.update(task, completed=total)


def _print_trainings(console, trainings: list[dict[str, Any]]) -> None:
    """One line: what was trained or fitted in this run, and how long it took (not in cell times)."""
    if not trainings:
        return
    trained = [t for t in trainings if not t["cached"]]
    loaded = len(trainings) - len(trained)
    secs = sum(t["seconds"] for t in trained)
    console.print(
        f"training: {len(trained)} trained or fitted in {secs:.1f}s, {loaded} loaded from the cache or a model file "
        "(not counted in the cells' seconds)"
    )


def _trainings_table(trainings: list[dict[str, Any]], title: str):
    """The trainings of a results file, one row each: what, how long, trained or loaded."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (("kind", "left"), ("what", "left"), ("seconds", "right"), ("", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in trainings:
        table.add_row(t["kind"], escape(t["description"] or ""), f"{t['seconds']:.2f}", "loaded" if t["cached"] else "trained")
    return table


def _print_flags(console, rows: list[dict[str, Any]], samples: Any = None) -> None:
    from rich.markup import escape

    from advx.analysis.checks import CHECK_NAMES, run_checks
    from advx.contract.registry import Registry

    extra = list(Registry.discover().checks.values())
    flags = run_checks(rows, samples, extra)
    done = sum(1 for r in rows if r.status == "done")
    if flags:
        console.print(f"[yellow]{len(flags)} sanity flag(s)[/yellow] (places to look, see advx.analysis.checks):")
        for f in flags:
            console.print(f"  [yellow]{escape(f.check)}[/yellow]: {escape(f.message)}", soft_wrap=True)
    else:
        names = [*CHECK_NAMES, *(c.name for c in extra if c.name not in CHECK_NAMES)]
        console.print(f"sanity checks ({', '.join(names)}) ran on {done} finished cells: none fired", soft_wrap=True)
