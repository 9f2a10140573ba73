"""The ``advx`` command: thin argparse + rich layer over the library.

Each command calls one library function (``Registry.discover``, ``run_matrix``,
``ResultStore``); the library stays silent and reports progress through a callback that
this module renders. Errors advx raises for bad input are printed as one line
(``[ConfigError]: ...``) with exit code 1 (2 for usage errors); ``-v`` shows the traceback.

One module per command (``plugins``, ``run``, ``results``, ``report``), and ``console`` for
what they print; this module holds the parser and ``main``.
"""

from __future__ import annotations

import argparse
import os
import sys

from advx._version import __version__
from advx.contract.errors import AdvxError
from advx.cli.console import _console, _error_line
from advx.cli.plugins import cmd_plugins
from advx.cli.report import cmd_report
from advx.cli.results import cmd_results
from advx.cli.run import cmd_run, interrupt_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advx", description="Adversarial robustness matrices: attacks x defenses x models x datasets.")
    parser.add_argument("--version", action="version", version=f"advx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins by kind; a kind or a plugin's name: with their config fields")
    p.add_argument("kind", nargs="?", metavar="KIND|NAME", help="attacks, defenses, models, datasets or threats: every plugin of the kind with its config fields; a plugin's name: that plugin (default: all kinds, one line each)")
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
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads of the run (overrides [matrix] threads; default: one per core)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress (bar on a terminal, lines elsewhere): the results and the summary only")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("results", help="show or export a results file")
    p.add_argument("db", help="SQLite results file")
    p.add_argument("--format", choices=["csv", "json", "markdown"], help="export instead of showing a table")
    p.add_argument("--spec", help="only the cells of this spec (matrix name), wherever they were computed")
    p.add_argument("--output", "-o", help="write the export to this file (format from --format or the extension: .csv, .json, .md)")
    p.add_argument("--breakdown", choices=["class", "confidence"], help="also show each cell per class or per confidence bucket")
    p.add_argument("--worst-case", action="store_true", help="also show the per-example worst case over attacks")
    p.add_argument("--optimality", action="store_true", help="also show each attack's optimality (AttackBench: area between its robust-accuracy-vs-eps curve and the per-example best) for cells that sweep eps or run minimum-norm attacks")
    p.add_argument("--history", action="store_true", help="with --spec: also list the cells of earlier versions of the spec (kept in the file, no longer in the spec)")
    p.add_argument("--examples", metavar="DIR", help="write the kept examples as PNG files (clean, adversarial, perturbation) under DIR, with DIR/examples.csv")
    p.add_argument("--ci", action="store_true", help="95%% bootstrap interval of every accuracy, rate and AUC from the per-example records: beside the numbers in tables, <metric>_ci_low/_ci_high in CSV and JSON")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="write a self-contained HTML (or Markdown) report of a results file")
    p.add_argument("db", help="SQLite results file")
    p.add_argument("--spec", help="only the cells of this spec (matrix name)")
    p.add_argument("--output", "-o", help="the report file (default: the results file's name with .html or .md)")
    p.add_argument("--format", choices=["html", "md"], help="html: one self-contained file (default); md: Markdown with PNG images in <name>-images/ beside it")
    p.add_argument("--attach", action="append", metavar="FILE", help="a file a plugin's report section reads, e.g. a rotation study's JSON ((experiments/seed003-rotation/rotation.py --out; its *rotation*.json beside the results file are read anyway)); repeatable")
    p.add_argument("--rotation", action="append", dest="attach", help=argparse.SUPPRESS)  # the older name of --attach
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
    except KeyboardInterrupt as exc:
        _console(stderr=True).print("[yellow]interrupted[/yellow]")
        return interrupt_code(exc)
    except BrokenPipeError:
        # the reader of our output went away (advx plugins | head): stop quietly, and keep the
        # interpreter from reporting the unflushed rest at exit; a run stopped before its end
        # says so in its exit status (128 + SIGPIPE), as a killed process would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141 if args.command == "run" else 0
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is still one line
        if args.verbose:
            raise
        first = (str(exc).splitlines() or [""])[0]
        _error_line(type(exc).__name__, f"{first} (add -v for the traceback)")
        return 1
