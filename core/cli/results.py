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
            text = store.export(fmt, args.spec, ci=args.ci)
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
        cis = store.intervals(rows) if args.ci else None
        title = f"{args.db}: {len(rows)} cells" + (" (95% bootstrap intervals over the examples, 1,000 resamples)" if cis else "")
        console.print(_result_table(rows, title, console.width, cis))
        _print_problems(console, rows)
        if args.breakdown:
            for table in _breakdown_tables(rows, args.breakdown, console.width):
                console.print(table)
        if args.worst_case:
            console.print(_worst_case_table(store, rows, width=console.width, ci=args.ci))
        if args.optimality:
            _print_optimality(console, store, rows)
        earlier = store.earlier_cells(args.spec) if args.spec else []
        if args.history and args.spec:
            console.print(_result_table(earlier, f"{args.spec}: {len(earlier)} cells of earlier versions of the spec (not in it now)", console.width))
        elif earlier:
            console.print(f"{len(earlier)} cells of earlier versions of {args.spec!r} are kept in the file (--history lists them)", markup=False)
        _print_flags(console, rows, store.samples)
        trainings = store.trainings()
        if trainings:  # after the numbers and their flags: what was trained to get them
            trained = sum(1 for t in trainings if not t["cached"])
            console.print(_trainings_table(trainings, f"trainings in {args.db}: {trained} trained, {len(trainings) - trained} loaded"))
    return 0


def _breakdown_tables(rows: list[dict[str, Any]], kind: str, width: int | None = None):
    from rich.markup import escape

    from advx.cli.console import fitted_table
    from advx.store.schema import format_value

    key = "per_class" if kind == "class" else "per_confidence"
    cols = ["n", "clean_accuracy", "robust_accuracy", "success_rate", "top1_error", "top5_error"]
    for r in rows:
        if r.status != "done" or not r.details:
            continue
        data = r.details.get(key, {})
        title = f"{r['dataset']} / {r['model']} / {r['defense']} / {r['threat']} / {r['attack']}: per {kind}"
        order = ["high", "medium", "low"] if kind == "confidence" else sorted(data, key=lambda k: int(k) if k.isdigit() else k)
        order = [name for name in order if name in data]
        values = {name: {**data[name], "n": data[name].get("n", data[name].get("count"))} for name in order}
        columns = [(kind, False, [escape(name) for name in order])]
        columns += [(c.replace("_", " "), True, [format_value(c, values[name].get(c)) for name in order]) for c in cols]
        yield fitted_table(title, columns, width)


def _print_optimality(console, store, rows: list[Any]) -> None:
    """AttackBench's optimality per attack, for the groups of cells that sweep eps or run
    minimum-norm attacks (``advx.analysis.optimality``)."""
    from rich.markup import escape

    from advx.analysis.optimality import OPTIMALITY_HEADERS, optimality_groups, optimality_table
    from advx.cli.console import fitted_table

    body, notes = optimality_table(optimality_groups(rows, store.samples))
    if not body:
        console.print("optimality: no group of cells sweeps eps (one attack at two budgets or more) or runs minimum-norm attacks beside another attack", markup=False)
        return
    columns = [(h, i >= 4, [escape(line[i]) for line in body]) for i, h in enumerate(OPTIMALITY_HEADERS)]
    title = "optimality (AttackBench): mean robust accuracy over [0, eps max] of each attack and of the per-example best; gap = their difference, optimality = best / attack"
    console.print(fitted_table(title, columns, console.width))
    for note in notes:
        console.print(f"left out: {note}", markup=False, soft_wrap=True)


def _worst_case_table(store, rows: list[Any], only_groups: bool = False, width: int | None = None, ci: bool = False):
    """Per-example worst case over the attacks of one place (dataset, model, defense, threat,
    examples: by identity) and one threat constraint (norm and eps; unbounded attacks apart).

    After a run (``only_groups``) only where several attacks share a constraint. With ``ci``
    the worst case carries its 95% bootstrap interval over the examples.
    """
    from rich.markup import escape

    from advx.analysis.groups import robust_share, worst_case_groups
    from advx.analysis.intervals import proportion_interval, with_interval
    from advx.cli.console import fitted_table

    groups = worst_case_groups(rows, min_size=2 if only_groups else 1)
    table: dict[str, list[str]] = {c: [] for c in ("place", "constraint", "attacks", "best single attack", "worst case")}
    for place, constraint, cells in groups:
        robust = store.worst_case_examples(cells)
        worst = robust_share(robust)
        table["place"].append(escape(place))
        table["constraint"].append(escape(constraint))
        table["attacks"].append(str(len(cells)))
        table["best single attack"].append(f"{min(c.robust_accuracy for c in cells):.4f}")
        shown = f"{worst:.4f}" if worst is not None else "-"
        table["worst case"].append(with_interval(shown, proportion_interval(list(robust.values()))) if ci and worst is not None else shown)
    columns = [(c, c not in ("place", "constraint"), cells) for c, cells in table.items()]
    return fitted_table("worst case per example over attacks of one threat constraint (mean of min)", columns, width)
