"""``advx plugins [KIND]``: the installed plugins with their config fields."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from advx.cli.console import _console


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

    from advx.contract.registry import Registry, iter_kinds

    kinds = list(iter_kinds(args.kind))
    reg = Registry.discover()
    if args.format == "json":
        out = [
            {
                "kind": e.kind,
                "name": e.name,
                "package": e.package,
                "version": _dist_version(e.package),
                "summary": e.cls.summary(),
                **({"traits": e.cls.traits()} if e.kind in ("attack", "threat") else {}),  # type: ignore[attr-defined]
                "config_schema": e.cls.Config.model_json_schema(),
            }
            for kind in kinds
            for e in reg.entries(kind)
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
