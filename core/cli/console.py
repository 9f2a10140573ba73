"""What the CLI prints: one-line errors, result tables, progress, trainings and sanity flags."""

from __future__ import annotations

import os
from typing import Any


def _console(stderr: bool = False):
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits with status 1 when the reader of a pipe goes away; advx's main
            # decides instead (advx plugins | head is no error)
            self.quiet = True
            raise BrokenPipeError

    console = _Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        # piped or captured without COLUMNS: tables at their natural width instead of 80 columns
        console = _Console(stderr=stderr, highlight=False, width=200)
    return console


def _error_line(kind: str, message: str) -> None:
    """One line on stderr, whatever the width: ``[Kind]: message``."""
    from rich.markup import escape

    first = " ".join(message.split())  # never more than one line
    _console(stderr=True).print(f"[red][{kind}][/red]: {escape(first)}", soft_wrap=True)


#: metric columns a narrow table keeps however narrow (the place labels are always kept)
KEEP_METRICS = ("n", "clean_accuracy", "robust_accuracy", "success_rate")
#: a label's words longer than this may be folded in a narrow table
LONGEST_WORD = 20


def _result_table(rows: list[dict[str, Any]], title: str, width: int | None = None, cis: dict[str, dict[str, Any]] | None = None):
    """The result rows as a table that fits ``width`` columns (the terminal's, or ``COLUMNS``).

    A number is never split across lines (``fitted_table``). Where the table would not fit,
    metric columns are left out from the last (cost, then detection, then norms; never
    those of ``KEEP_METRICS``) and a caption names them; where even that does not fit, each
    row becomes a block of ``name value`` pairs with every column (``fitted_table``'s
    records). Failed and not-applicable cells are listed below it (``_print_problems``).
    ``cis`` (cell key -> metric -> (low, high), ``ResultStore.intervals``) puts each
    interval beside its number.
    """
    from advx.store.schema import PLACE_COLUMNS, TABLE_COLUMNS

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
    cells = _result_cells(rows, cols, cis)
    cols_before = list(cols)

    def columns(which: list[tuple[str, str]]) -> list[tuple[str, bool, list[str]]]:
        return [("#", True, cells["#"]), *((h, c not in PLACE_COLUMNS, cells[c]) for c, h in which)]

    left_out: list[str] = []
    droppable = [(c, h) for c, h in cols if c not in PLACE_COLUMNS and c not in KEEP_METRICS]
    while width is not None and table_width(columns(cols)) > width and droppable:
        c, h = droppable.pop()
        cols.remove((c, h))
        left_out.insert(0, h)
    if width is not None and table_width(columns(cols)) > width:  # no table fits: every column, as records
        return fitted_table(title, columns([(c, h) for c, h in cols_before if c in cells]), width)
    table = fitted_table(title, columns(cols), width)
    if left_out:
        table.caption = f"left out at {width} columns: {', '.join(left_out)} (wider: COLUMNS=N, or --format csv)"
        table.caption_justify = "left"
    return table


def _result_cells(rows: list[dict[str, Any]], cols: list[tuple[str, str]], cis: dict[str, dict[str, Any]] | None = None) -> dict[str, list[str]]:
    """Each column's cells as rich markup: the row number, labels, formatted numbers; a failed or
    not-applicable row is marked in its first metric column."""
    from rich.markup import escape

    from advx.analysis.intervals import with_interval
    from advx.store.schema import PLACE_COLUMNS, format_value

    out: dict[str, list[str]] = {"#": [str(i) for i in range(1, len(rows) + 1)], **{c: [] for c, _ in cols}}
    first_metric = next((c for c, _ in cols if c not in PLACE_COLUMNS), None)
    for r in rows:
        status = r.get("status")
        for c, _ in cols:
            if c in PLACE_COLUMNS:
                out[c].append(escape(str(r.get(c) or "")))
            elif status == "done":
                ci = (cis or {}).get(r.cell_key, {}).get(c)
                out[c].append(escape(with_interval(format_value(c, r.get(c)), ci)))
            elif c == first_metric:
                out[c].append("[red]failed[/red]" if status == "failed" else "[yellow]n/a[/yellow]")
            else:
                out[c].append("")
    return out


def _sizes(head: str, number: bool, cells: list[str]) -> tuple[int, int]:
    """(narrowest, natural) width of a column: a number's full width (never split); a label's
    longest word (up to ``LONGEST_WORD``); a heading wraps at spaces."""
    from rich.text import Text

    plain = [Text.from_markup(c).plain for c in cells]
    head_min = max((len(w) for w in head.split()), default=1)
    natural = max([len(head), *map(len, plain)])
    if number:
        return max([head_min, *map(len, plain)]), natural
    word = max((len(w) for v in plain for w in v.split()), default=1)
    return max(head_min, min(word, LONGEST_WORD)), natural


def table_width(columns: list[tuple[str, bool, list[str]]], natural: bool = False) -> int:
    """The width a ``fitted_table`` of these columns needs at least (or at its natural width)."""
    return sum(_sizes(*col)[natural] for col in columns) + 3 * len(columns) + 1


def fitted_table(title: str, columns: list[tuple[str, bool, list[str]]], width: int | None = None):
    """A rich table of ``columns`` (heading, is a number, cells as markup) that fits ``width``.

    Numbers are never split across lines: their columns keep their widest value and do not
    wrap (a heading wraps at spaces); labels wrap between words, and the width the numbers
    leave is shared among them, each at least its longest word. Rich alone would shrink
    every column, folding ``11634`` into ``1163`` over ``4``. Where no table fits, each row
    is a block of lines instead (``_records``).
    """
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    if width is not None and table_width(columns) > width:
        return _records(title, columns, width)
    widths: list[int | None] = [None] * len(columns)
    if width is not None and table_width(columns, natural=True) > width:
        sizes = [_sizes(*col) for col in columns]
        widths = [lo for lo, _ in sizes]
        spare = width - table_width(columns)
        for i in sorted((i for i, col in enumerate(columns) if not col[1]), key=lambda i: sizes[i][1] - sizes[i][0]):
            grow = max(min(sizes[i][1] - widths[i], spare), 0)  # type: ignore[operator]
            widths[i] += grow  # type: ignore[operator]
            spare -= grow
    table = Table(title=escape(title), title_justify="left")
    for (head, number, _), w in zip(columns, widths):
        header = Text(head, no_wrap=False, overflow="fold")
        if number:
            table.add_column(header, justify="right", no_wrap=True, width=w)
        else:
            table.add_column(header, justify="left", overflow="fold", width=w)
    for i in range(max((len(c) for _, _, c in columns), default=0)):
        table.add_row(*(cells[i] for _, _, cells in columns))
    return table


def _records(title: str, columns: list[tuple[str, bool, list[str]]], width: int):
    """A table's rows for a terminal too narrow for it: a row's labels on one line (after its
    number), then its ``heading value`` pairs filled to ``width``, a pair never split."""
    from rich.console import Group
    from rich.text import Text

    out = [Text(Text.from_markup(title).plain, style="italic")]
    plain = [(head, number, [Text.from_markup(c).plain for c in cells]) for head, number, cells in columns]
    for i in range(max((len(c) for _, _, c in plain), default=0)):
        number_col = plain[0][0] == "#"
        labels = " / ".join(cells[i] for _, number, cells in plain if not number)
        out.append(Text((f"#{plain[0][2][i]} " if number_col else "") + labels, style="bold"))
        line = "  "
        for head, number, cells in plain[1 if number_col else 0 :]:
            if not number or not cells[i]:
                continue
            pair = f" {head} {cells[i]}"
            if len(line) + len(pair) > width and line.strip():
                out.append(Text(line, no_wrap=True))
                line = "  "
            line += pair
        if line.strip():
            out.append(Text(line, no_wrap=True))
    return Group(*out)


def _print_problems(console, rows: list[dict[str, Any]]) -> None:
    """Each failed, not-applicable or partial cell on its own line, with its error, reason or
    the shards it holds (a partial cell has no numbers yet: never shown as finished)."""
    from rich.markup import escape

    for i, r in enumerate(rows, 1):
        where = " / ".join(str(r.get(c)) for c in ("dataset", "model", "defense", "threat", "attack"))
        if r.get("status") == "failed":
            console.print(f"[red]failed[/red] #{i} {escape(where)}: {escape(str(r.get('error')))}", soft_wrap=True)
        elif r.get("status") == "not-applicable":
            console.print(f"[yellow]not applicable[/yellow] #{i} {escape(where)}: {escape(str(r.get('reason')))}", soft_wrap=True)
        elif r.get("status") == "partial":
            got = (r.get("details") or {}).get("shards") or {}
            console.print(
                f"[yellow]partial[/yellow] #{i} {escape(where)}: {got.get('stored', '?')} of {got.get('count', '?')} shards stored, "
                "no numbers until all are in; run the spec again to compute the others", soft_wrap=True,
            )


def plan_line(payload: dict[str, Any]) -> str:
    """The first line of a run: its cells, those to run and skipped, and the shards of its sharded cells."""
    skipped = payload["skipped"]
    msg = f"{payload['cells']} cells, {payload['todo']} to run"
    if skipped:
        msg += f", {skipped} already in the results (skipped)"
    if payload.get("shards"):
        stored = payload.get("shards_stored", 0)
        msg += f"; {payload['shards']} shards to run" + (f" ({stored} stored by an earlier run)" if stored else "")
    return msg


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
            self.console.print(plan_line(payload))
        elif event == "cell_start":
            self.tasks[cell.key] = p.add_task(escape(cell.title()), total=getattr(cell, "stop", cell.options.samples) - getattr(cell, "start", 0))
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
        elif event in ("cell_done", "cell_failed", "shard_done", "shard_failed") and cell is not None and cell.key in self.tasks:
            task = self.tasks[cell.key]
            total = p.tasks[task].total
            if event in ("cell_failed", "shard_failed"):
                p.update(task, description=f"[red]failed[/red] {escape(cell.title())}: {escape(str(payload['row'].get('error')))}")
            else:
                p.update(task, completed=total)


class _PlainProgress:
    """Renders run_matrix events as plain lines, for output that is not a terminal (a log, CI).

    A live progress bar draws nothing there until the run ends, so a matrix that trains for
    minutes looked hung. One line per training epoch, per cell started and finished (with
    its robust accuracy or its error), and per batch of a cell at most every
    ``BATCH_EVERY`` seconds (the first and last always); each line is flushed as it is
    printed, so ``tail -f`` shows it at once.
    """

    BATCH_EVERY = 10.0

    def __init__(self, console) -> None:
        self.console = console
        self.started = False  # no live display to stop on an interrupt
        self.todo = 0
        self.count = 0
        self.number: dict[str, int] = {}
        self.last_batch: dict[str, float] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def line(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, markup=False, highlight=False)
        self.console.file.flush()

    def where(self, cell: Any) -> str:
        n = self.number.get(cell.key)
        return f"[{n}/{self.todo}] " if n is not None else ""

    def __call__(self, event: str, cell: Any, payload: dict[str, Any]) -> None:
        import time

        if event == "notice":
            self.line(payload["message"])
        elif event == "plan":
            self.todo = payload.get("units", payload["todo"])
            self.line(plan_line(payload))
        elif event == "cell_start" and cell is not None:
            self.count += 1
            self.number[cell.key] = self.count
            self.last_batch[cell.key] = time.monotonic()
            self.line(f"{self.where(cell)}cell started: {cell.title()}")
        elif event == "train_start":
            self.line(f"  training {payload['model']}: {payload['epochs']} epochs")
        elif event == "train_epoch":
            loss = payload.get("loss")
            self.line(f"  training {payload['model']}: epoch {payload['epoch']}/{payload['epochs']}" + (f", loss {loss:.4f}" if isinstance(loss, float) else ""))
        elif event == "train_done":
            self.line(f"  {payload['model']}: " + ("loaded from cache" if payload["cached"] else f"trained in {payload['seconds']:.1f}s"))
        elif event == "batch" and cell is not None:
            now = time.monotonic()
            done, total = payload["done"], payload["total"]
            if done >= total or now - self.last_batch.get(cell.key, 0.0) >= self.BATCH_EVERY:
                self.last_batch[cell.key] = now
                self.line(f"  {self.where(cell)}{cell.attack.describe()}: {done}/{total} examples crafted")
        elif event in ("cell_done", "cell_failed", "cell_not_applicable") and cell is not None:
            row = payload["row"]
            if event == "cell_done":
                acc = row.metrics.get("robust_accuracy")
                what = f"done in {row.seconds:.1f}s" + (f", robust acc {acc:.4f}" if isinstance(acc, float) else "")
            elif event == "cell_failed":
                what = f"failed: {row.error}"
            else:
                what = f"not applicable: {row.reason}"
            self.line(f"{self.where(cell)}cell {what}: {cell.title()}")
        elif event in ("shard_done", "shard_failed") and cell is not None:
            row = payload["row"]
            what = f"done in {row.seconds:.1f}s" if event == "shard_done" else f"failed: {row.error}"
            self.line(f"{self.where(cell)}shard {what}: {cell.title()}")


class _Quiet(_PlainProgress):
    """No progress (``advx run --quiet``): the results and the summary only, and the one line
    saying that the results file was migrated (a ``notice``), which is not progress."""

    def __call__(self, event: str, cell: Any, payload: dict[str, Any]) -> None:
        if event == "notice":
            self.line(payload["message"])


def progress_for(console, quiet: bool = False):
    """How a run shows its progress: a live display on a terminal, plain lines elsewhere, nothing with ``quiet``."""
    if quiet:
        return _Quiet(console)
    return _Progress(console) if console.is_terminal else _PlainProgress(console)


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
    """The trainings of a results file, one row each: what, how long, trained or loaded; fitted
    to the terminal like the result tables (records where it is too narrow)."""
    columns = [
        ("kind", False, [t["kind"] for t in trainings]),
        ("what", False, [t["description"] or "" for t in trainings]),
        ("seconds", True, [f"{t['seconds']:.2f}" for t in trainings]),
        ("", False, ["loaded" if t["cached"] else "trained" for t in trainings]),
    ]
    return fitted_table(title, columns)


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
