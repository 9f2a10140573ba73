"""``advx report DB``: write the HTML or Markdown report of a results file."""

from __future__ import annotations

import argparse
from pathlib import Path
from advx.cli.console import _console


def _report_path(db: str, output: str | None, fmt: str) -> Path:
    """``-o`` or, by default, the results file's name with ``.html`` / ``.md``."""
    if output:
        return Path(output)
    return Path(db).with_suffix(".html" if fmt == "html" else ".md")


def cmd_report(args: argparse.Namespace) -> int:
    from advx.contract.errors import ConfigError
    from advx.report import INSTALL_HINT, have_matplotlib, write_report

    fmt = args.format
    if fmt is None and args.output:
        fmt = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}.get(Path(args.output).suffix.lower())
        if fmt is None:
            raise ConfigError(f"-o {args.output}: cannot tell the format from its extension; add --format html|md or use .html or .md")
    fmt = fmt or "html"
    if not Path(args.db).exists():
        raise ConfigError(f"results file {args.db!r} does not exist")
    out = _report_path(args.db, args.output, fmt)
    write_report(args.db, out, spec_name=args.spec, fmt=fmt, attachments=args.attach or (), tables_only=args.tables_only)
    console = _console()
    note = "" if (have_matplotlib() or args.tables_only) else f" (tables only: {INSTALL_HINT} for the plots)"
    extra = f", images in {out.stem}-images/" if fmt == "md" and not args.tables_only and (out.parent / f"{out.stem}-images").exists() else ""
    console.print(f"report: {out}{extra}{note}", soft_wrap=True)
    return 0
