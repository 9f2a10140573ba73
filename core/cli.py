"""The ``advx`` command: thin argparse + rich layer over the library.

Each command calls one library function (``Registry.discover``, ``run_matrix``,
``ResultStore``); the library stays silent and reports progress through a callback that
this module renders. Errors advx raises for bad input are printed as one line
(``[ConfigError]: ...``) with exit code 1 (2 for usage errors); ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import AdvxError

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


def _type_name(annotation: Any) -> str:
    s = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    s = s or str(annotation)
    return s.replace("typing.", "").replace("NoneType", "None")


def _describe_field(name: str, field: Any) -> str:
    parts = [f"{name}: {_type_name(field.annotation)}"]
    if not field.is_required():
        parts.append(f"= {field.default!r}")
    bounds = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                bounds.append(f"{sym} {v}")
    if bounds:
        parts.append(f"({', '.join(bounds)})")
    text = " ".join(parts)
    if field.description:
        text += f"  [dim]{field.description}[/dim]"
    return text


def _label_modes(cls: Any) -> str:
    return "label modes: true, predicted" + (", least-likely, target=K, random-target" if cls.supports_targeted else " (cannot target)")


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from .registry import Registry, iter_kinds
    from .threats import THREATS

    want_threats = args.kind in (None, "threat", "threats")
    kinds = [] if args.kind in ("threat", "threats") else list(iter_kinds(args.kind))
    reg = Registry.discover()
    if args.format == "json":
        out = [
            {
                "kind": e.kind,
                "name": e.name,
                "package": e.package,
                "version": _dist_version(e.package),
                "summary": e.cls.summary(),
                **({"traits": e.cls.traits()} if e.kind == "attack" else {}),  # type: ignore[attr-defined]
                "config_schema": e.cls.Config.model_json_schema(),
            }
            for kind in kinds
            for e in reg.entries(kind)
        ]
        if want_threats:
            out += [
                {"kind": "threat", "name": n, "package": "advx", "version": __version__, "summary": c.summary(), "config_schema": c.Config.model_json_schema()}
                for n, c in THREATS.items()
            ]
        payload = {"plugins": out, "failures": [vars(f) for f in reg.failures], "conflicts": sorted(reg.conflicts.values())}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return 0
    console = _console()
    for kind in kinds:
        table = Table(title=f"{kind} plugins", show_lines=True, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("package")
        table.add_column("description")
        table.add_column("config fields")
        for e in reg.entries(kind):
            extra = ""
            if kind == "attack":
                extra = f"norm {e.cls.norm}; {_label_modes(e.cls)}\n"  # type: ignore[attr-defined]
            fields = "\n".join(
                _describe_field(n, f) for n, f in e.cls.Config.model_fields.items() if not (n == "label_mode" and kind == "attack")
            )
            table.add_row(e.name, e.package, escape(extra + e.cls.summary()), fields or "-")
        console.print(table)
    if want_threats:
        table = Table(title="threat models ([[threats]] tables; built into the kernel)", show_lines=True, title_justify="left")
        for c in ("name", "description", "config fields"):
            table.add_column(c)
        for n, c in THREATS.items():
            table.add_row(n, escape(c.summary()), "\n".join(_describe_field(k, f) for k, f in c.Config.model_fields.items()))
        console.print(table)
    for (kind, name), msg in sorted(reg.conflicts.items()):
        if kind in kinds:
            console.print(f"[red]conflict[/red]: {escape(msg)}", soft_wrap=True)
    for f in reg.failures:
        console.print(f"[red]failed[/red]: {escape(str(f))}", soft_wrap=True)
    return 0


def _dist_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _result_table(rows: list[dict[str, Any]], title: str):
    """The result rows as a table; failed and not-applicable cells are listed below it (``_problems``)."""
    from rich.markup import escape
    from rich.table import Table

    from .schema import PLACE_COLUMNS, TABLE_COLUMNS, format_value

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


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import run_matrix
    from .results import ResultStore
    from .spec import MatrixSpec

    console = _console()
    spec = MatrixSpec.from_toml(args.spec) if args.spec else MatrixSpec.from_toml_string(DEFAULT_SPEC, "default spec")
    if args.cache_dir:
        spec = spec.model_copy(update={"matrix": spec.matrix.model_copy(update={"cache_dir": args.cache_dir})})
    if args.executor or args.address:
        from .engine.run import load_spec

        spec = load_spec(spec, executor=args.executor, ray_address=args.address)
    if args.dry_run:
        return _print_dry_run(console, spec, args)
    if args.report and args.report is not True and Path(args.report).suffix.lower() not in (".html", ".htm"):
        from .errors import ConfigError

        raise ConfigError(f"--report {args.report}: the report of a run is HTML; name it .html (or use advx report --format md)")
    with _Progress(console) as progress:
        try:
            result = run_matrix(spec, store=args.db, on_event=progress, device=args.device, rerun=args.rerun)
        except KeyboardInterrupt:
            if progress.started:
                progress.progress.stop()
            kept = 0
            if Path(args.db).exists():
                with ResultStore(args.db, readonly=True) as store:
                    kept = len(store.cells(spec.matrix.name, status="done"))
            console.print(f"[yellow]interrupted[/yellow]: {kept} finished cells are kept in {args.db}; run the same command again to resume")
            return 130
    if result.db is not None:
        _record_spec_file(args.db, spec.matrix.name, args.spec)
    with ResultStore(args.db, readonly=True) as store:
        rows = store.cells(spec.matrix.name)
        console.print(_result_table(rows, f"{spec.matrix.name}: results in {args.db}"))
        _print_problems(console, rows)
        if _worst_case_groups(rows):
            console.print(_worst_case_table(store, rows, only_groups=True))
        _print_trainings(console, result.trainings)
        _print_flags(console, rows, store.samples)
    console.print(
        f"{result.done} cells run, {result.skipped} skipped (already done), {result.failed} failed"
        + (f", {result.not_applicable} not applicable" if result.not_applicable else "")
    )
    if args.report:
        from .report import write_report

        out = _report_path(args.db, None if args.report is True else args.report, "html")
        write_report(args.db, out, spec_name=spec.matrix.name)
        console.print(f"report: {out}", soft_wrap=True)
    return 1 if result.failed else 0


def _record_spec_file(db: str, spec_name: str, spec_path: str | None) -> None:
    """Remember in the results file where the spec came from (its path and git commit), for reports."""
    from .report import spec_provenance
    from .results import ResultStore

    info = spec_provenance(spec_path) if spec_path else {"path": "built-in default spec of advx run", "git_commit": None}
    with ResultStore(db) as store:
        store.set_meta(f"spec:{spec_name}", json.dumps(info))


def _report_path(db: str, output: str | None, fmt: str) -> Path:
    """``-o`` or, by default, the results file's name with ``.html`` / ``.md``."""
    if output:
        return Path(output)
    return Path(db).with_suffix(".html" if fmt == "html" else ".md")


def cmd_report(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .report import INSTALL_HINT, have_matplotlib, write_report

    fmt = args.format
    if fmt is None and args.output:
        fmt = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}.get(Path(args.output).suffix.lower())
        if fmt is None:
            raise ConfigError(f"-o {args.output}: cannot tell the format from its extension; add --format html|md or use .html or .md")
    fmt = fmt or "html"
    if not Path(args.db).exists():
        raise ConfigError(f"results file {args.db!r} does not exist")
    out = _report_path(args.db, args.output, fmt)
    write_report(args.db, out, spec_name=args.spec, fmt=fmt, rotation=args.rotation or (), tables_only=args.tables_only)
    console = _console()
    note = "" if (have_matplotlib() or args.tables_only) else f" (tables only: {INSTALL_HINT} for the plots)"
    extra = f", images in {out.stem}-images/" if fmt == "md" and not args.tables_only and (out.parent / f"{out.stem}-images").exists() else ""
    console.print(f"report: {out}{extra}{note}", soft_wrap=True)
    return 0


def _print_dry_run(console, spec: Any, args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .engine import dry_run

    plan = dry_run(spec, store=args.db, device=args.device, rerun=args.rerun)
    console.print(f"dry run of {escape(plan.spec_name)}: {len(plan.todo) + len(plan.done)} cells, {len(plan.todo)} to run, {len(plan.done)} already done in {escape(args.db)}; nothing is run")
    for c in plan.todo:
        console.print(f"  run   {escape(c.title())}", soft_wrap=True)
    for c in plan.done:
        console.print(f"  done  {escape(c.title())}", soft_wrap=True)
    for what, cached in plan.trainings:
        console.print(f"  {'cached' if cached else 'train'} {escape(what)}", soft_wrap=True)
    return 0


def _print_trainings(console, trainings: list[dict[str, Any]]) -> None:
    """One line: what was trained or fitted in this run, and how long it took (not in cell times)."""
    if not trainings:
        return
    trained = [t for t in trainings if not t["cached"]]
    loaded = len(trainings) - len(trained)
    secs = sum(t["seconds"] for t in trained)
    console.print(
        f"training: {len(trained)} trained or fitted in {secs:.1f}s, {loaded} loaded from the cache "
        "(not counted in the cells' seconds)"
    )


def _print_flags(console, rows: list[dict[str, Any]], samples: Any = None) -> None:
    from rich.markup import escape

    from .flags import CHECKS, sanity_flags

    flags = sanity_flags(rows, samples)
    done = sum(1 for r in rows if r.get("status") == "done")
    if flags:
        console.print(f"[yellow]{len(flags)} sanity flag(s)[/yellow] (places to look, see advx.flags):")
        for f in flags:
            console.print(f"  [yellow]{escape(f.check)}[/yellow]: {escape(f.message)}", soft_wrap=True)
    else:
        console.print(f"sanity checks ({', '.join(CHECKS)}) ran on {done} finished cells: none fired", soft_wrap=True)


def cmd_results(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .results import ResultStore

    fmt = args.format
    if args.output and not fmt:
        ext = Path(args.output).suffix.lower()
        fmt = {".csv": "csv", ".json": "json", ".md": "markdown", ".markdown": "markdown"}.get(ext)
        if fmt is None:
            raise ConfigError(f"-o {args.output}: cannot tell the format from {ext or 'no extension'!r}; add --format csv|json|markdown or use .csv, .json or .md")
    if args.examples:
        from .report import export_examples

        cells, examples = export_examples(args.db, args.examples, args.spec)
        _console().print(f"{examples} examples of {cells} cells written to {args.examples} (index: {Path(args.examples) / 'examples.csv'})", soft_wrap=True)
        if not fmt:
            return 0
    with ResultStore(args.db, readonly=True) as store:
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
        _print_flags(console, rows, store.samples)
    return 0


def _breakdown_tables(rows: list[dict[str, Any]], kind: str):
    import json

    from rich.table import Table

    from .schema import format_value

    key = "per_class" if kind == "class" else "per_confidence"
    cols = ["n", "clean_accuracy", "robust_accuracy", "success_rate", "top1_error", "top5_error"]
    for r in rows:
        if r.get("status") != "done" or not r.get("metrics"):
            continue
        data = json.loads(r["metrics"]).get(key, {})
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


def _constraint(r: dict[str, Any]) -> str:
    """The threat constraint of a row: its norm and eps, or unbounded (minimum-norm attacks)."""
    cfg = json.loads(r["attack_config"]) if isinstance(r.get("attack_config"), str) else (r.get("attack_config") or {})
    traits = json.loads(r["attack_traits"]) if isinstance(r.get("attack_traits"), str) else (r.get("attack_traits") or {})
    norm = traits.get("norm", "?")
    return f"{norm} eps={cfg['eps']:g}" if cfg.get("eps") is not None else f"{norm} unbounded"


def _worst_case_groups(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Groups of two or more finished cells sharing a place, a threat model and a threat constraint."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "done":
            groups.setdefault((r["dataset"], r["model"], r["defense"], r["threat"], _constraint(r)), []).append(r)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _worst_case_table(store, rows: list[dict[str, Any]], only_groups: bool = False):
    """Per-example worst case over the attacks of one (dataset, model, defense, threat) and one threat constraint.

    Attacks are grouped by norm and eps, so a worst case never mixes budgets; unbounded
    (minimum-norm) attacks form their own group, labelled as such.
    """
    from rich.markup import escape
    from rich.table import Table

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "done":
            groups.setdefault((r["dataset"], r["model"], r["defense"], r["threat"], _constraint(r)), []).append(r)
    if only_groups:  # after a run: only where several attacks share a constraint
        groups = _worst_case_groups(rows)
    table = Table(title="worst case per example over attacks of one threat constraint (mean of min)", title_justify="left")
    for c in ("dataset", "model", "defense", "threat", "constraint", "attacks", "best single attack", "worst case"):
        table.add_column(c, justify="right" if c in ("attacks", "best single attack", "worst case") else "left")
    for (d, m, df, t, constraint), cells in groups.items():
        worst = store.worst_case(cells)
        best_single = min(c["robust_accuracy"] for c in cells)
        table.add_row(*map(escape, (d, m, df, t, constraint)), str(len(cells)), f"{best_single:.4f}", f"{worst:.4f}" if worst is not None else "-")
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advx", description="Adversarial robustness matrices: attacks x defenses x models x datasets.")
    parser.add_argument("--version", action="version", version=f"advx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins with their config fields")
    p.add_argument("kind", nargs="?", help="attacks, defenses, models, datasets or threats (default: all)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="json: every plugin with kind, package, version and config JSON schema")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("run", help="run a matrix spec (default: a small matrix on the embedded digits)")
    p.add_argument("spec", nargs="?", help="a TOML matrix spec")
    p.add_argument("--db", default="advx-results.db", help="SQLite results file (default: advx-results.db)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, a comma-separated list (cuda:0,cuda:1) or cuda:all: one worker per device (overrides the spec)")
    p.add_argument("--cache-dir", help="where trained models are cached")
    p.add_argument("--rerun", action="store_true", help="recompute cells already in the results")
    p.add_argument("--executor", choices=["local", "ray"], help="where cells run: local (default) or ray (pip install 'advx[distributed]'); overrides the spec")
    p.add_argument("--address", help="with --executor ray: address of an existing Ray cluster (default: a local one)")
    p.add_argument("--dry-run", action="store_true", help="list the cells that would run, those already done and what would be trained; run nothing")
    p.add_argument("--report", nargs="?", const=True, metavar="FILE.html", help="write the HTML report at the end (default: the results file's name with .html)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("results", help="show or export a results file")
    p.add_argument("db", help="SQLite results file")
    p.add_argument("--format", choices=["csv", "json", "markdown"], help="export instead of showing a table")
    p.add_argument("--spec", help="only the cells of this spec (matrix name), wherever they were computed")
    p.add_argument("--output", "-o", help="write the export to this file (format from --format or the extension: .csv, .json, .md)")
    p.add_argument("--breakdown", choices=["class", "confidence"], help="also show each cell per class or per confidence bucket")
    p.add_argument("--worst-case", action="store_true", help="also show the per-example worst case over attacks")
    p.add_argument("--examples", metavar="DIR", help="write the kept examples as PNG files (clean, adversarial, perturbation) under DIR, with DIR/examples.csv")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="write a self-contained HTML (or Markdown) report of a results file")
    p.add_argument("db", help="SQLite results file")
    p.add_argument("--spec", help="only the cells of this spec (matrix name)")
    p.add_argument("--output", "-o", help="the report file (default: the results file's name with .html or .md)")
    p.add_argument("--format", choices=["html", "md"], help="html: one self-contained file (default); md: Markdown with PNG images in <name>-images/ beside it")
    p.add_argument("--rotation", action="append", metavar="JSON", help="a rotation study's JSON (experiments/seed003-rotation/rotation.py --out) to plot; *rotation*.json beside the results file are read anyway")
    p.add_argument("--tables-only", action="store_true", help="tables and text only: no plots, no images (for documents that quote the numbers)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except AdvxError as exc:
        if args.verbose:
            raise
        _error_line(type(exc).__name__, str(exc))
        return 1
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/yellow]")
        return 130
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is still one line
        if args.verbose:
            raise
        first = (str(exc).splitlines() or [""])[0]
        _error_line(type(exc).__name__, f"{first} (add -v for the traceback)")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
