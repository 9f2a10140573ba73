"""``advx results DB``: show or export a results file (tables, breakdowns, worst case, examples)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from advx.cli.console import _console, _print_flags, _print_problems, _result_table, _trainings_table


def cmd_results(args: argparse.Namespace) -> int:
    from advx.contract.errors import ConfigError
    from advx.store.results import ResultStore

    fmt = args.format
    if args.output and not fmt:
        ext = Path(args.output).suffix.lower()
        fmt = {".csv": "csv", ".json": "json", ".md": "markdown", ".markdown": "markdown"}.get(ext)
        if fmt is None:
            raise ConfigError(f"-o {args.output}: cannot tell the format from {ext or 'no extension'!r}; add --format csv|json|markdown or use .csv, .json or .md")
    if args.examples:
        from advx.report import export_examples

        cells, examples = export_examples(args.db, args.examples, args.spec)
        _console().print(f"{examples} examples of {cells} cells written to {args.examples} (index: {Path(args.examples) / 'examples.csv'})", soft_wrap=True)
        if not fmt:
            return 0
    with ResultStore(args.db, readonly=True) as store:
        if store.notice:
            _console(stderr=True).print(store.notice, soft_wrap=True, markup=False)
        if fmt:
            text = store.export(fmt, args.spec)
            if args.output:
                try:
                    Path(args.output).write_text(text)
                except OSError as exc:
                    raise ConfigError(f"-o {args.output}: cannot write there ({exc.strerror})") from None
            else:
                sys.stdout.write(text)
            return 0
        rows = store.cells(args.spec)
        console = _console()
        console.print(_result_table(rows, f"{args.db}: {len(rows)} cells"))
        _print_problems(console, rows)
        if args.breakdown:
            for table in _breakdown_tables(rows, args.breakdown):
                console.print(table)
        if args.worst_case:
            console.print(_worst_case_table(store, rows))
        if args.history and args.spec:
            earlier = store.earlier_cells(args.spec)
            console.print(_result_table(earlier, f"{args.spec}: {len(earlier)} cells of earlier versions of the spec (not in it now)"))
        elif args.spec and store.earlier_cells(args.spec):
            console.print(f"{len(store.earlier_cells(args.spec))} cells of earlier versions of {args.spec!r} are kept in the file (--history lists them)", markup=False)
        trainings = store.trainings()
        if trainings:
            trained = sum(1 for t in trainings if not t["cached"])
            console.print(_trainings_table(trainings, f"trainings in {args.db}: {trained} trained, {len(trainings) - trained} loaded"))
        _print_flags(console, rows, store.samples)
    return 0


def _breakdown_tables(rows: list[dict[str, Any]], kind: str):
    from rich.table import Table

    from advx.store.schema import format_value

    key = "per_class" if kind == "class" else "per_confidence"
    cols = ["n", "clean_accuracy", "robust_accuracy", "success_rate", "top1_error", "top5_error"]
    for r in rows:
        if r.status != "done" or not r.details:
            continue
        data = r.details.get(key, {})
        title = f"{r['dataset']} / {r['model']} / {r['defense']} / {r['threat']} / {r['attack']}: per {kind}"
        table = Table(title=title, title_justify="left")
        table.add_column(kind)
        for c in cols:
            table.add_column(c.replace("_", " "), justify="right")
        order = ["high", "medium", "low"] if kind == "confidence" else sorted(data, key=lambda k: int(k) if k.isdigit() else k)
        for name in order:
            if name not in data:
                continue
            m = {**data[name], "n": data[name].get("n", data[name].get("count"))}
            table.add_row(name, *[format_value(c, m.get(c)) for c in cols])
        yield table


def _worst_case_table(store, rows: list[Any], only_groups: bool = False):
    """Per-example worst case over the attacks of one place (dataset, model, defense, threat,
    examples: by identity) and one threat constraint (norm and eps; unbounded attacks apart).

    After a run (``only_groups``) only where several attacks share a constraint.
    """
    from rich.markup import escape
    from rich.table import Table

    from advx.analysis.groups import worst_case_groups

    groups = worst_case_groups(rows, min_size=2 if only_groups else 1)
    table = Table(title="worst case per example over attacks of one threat constraint (mean of min)", title_justify="left")
    for c in ("place", "constraint", "attacks", "best single attack", "worst case"):
        table.add_column(c, justify="right" if c in ("attacks", "best single attack", "worst case") else "left")
    for place, constraint, cells in groups:
        worst = store.worst_case(cells)
        best_single = min(c.robust_accuracy for c in cells)
        table.add_row(escape(place), escape(constraint), str(len(cells)), f"{best_single:.4f}", f"{worst:.4f}" if worst is not None else "-")
    return table
