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


def _describe_field(name: str, field: Any) -> tuple[str, str]:
    """``("eps: float = 0.3 (> 0)", description)`` of a config field."""
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
    return " ".join(parts), field.description or ""


def _label_modes(cls: Any) -> str:
    return "label modes: true, predicted" + (", least-likely, target=K, random-target" if cls.supports_targeted else " (cannot target)")


def _select(what: str | None, reg: Any) -> tuple[list[str], list[Any], str]:
    """(kinds, entries, mode) that ``advx plugins [WHAT]`` shows: every kind as an overview
    (``overview``), one kind with every plugin's fields (``kind``), or the plugins named WHAT,
    of any kind, in full (``name``)."""
    from advx.contract.errors import PluginNotFoundError, suggest
    from advx.contract.interfaces import KINDS
    from advx.contract.registry import iter_kinds

    if what is None:
        return list(KINDS), reg.entries(), "overview"
    try:
        kinds = list(iter_kinds(what))
    except PluginNotFoundError:
        named = [e for e in reg.entries() if e.name == what]
        if not named:
            names = sorted({e.name for e in reg.entries()} | {f"{k}s" for k in KINDS})
            raise PluginNotFoundError(
                f"no plugin kind or plugin named {what!r}{suggest(what, names)}; kinds: {', '.join(f'{k}s' for k in KINDS)}"
            ) from None
        return sorted({e.kind for e in named}, key=list(KINDS).index), named, "name"
    return kinds, [e for e in reg.entries() if e.kind in kinds], "kind"


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from advx.contract.registry import Registry

    reg = Registry.discover()
    kinds, entries, mode = _select(args.kind, reg)
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
            for e in entries
        ]
        payload = {"plugins": out, "failures": [vars(f) for f in reg.failures], "conflicts": sorted(reg.conflicts.values())}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return 0
    console = _console()
    for kind in kinds:
        of_kind = [e for e in entries if e.kind == kind]
        if mode == "overview":
            _print_overview(console, kind, of_kind)
        else:
            _print_detailed(console, kind, of_kind, heading=mode == "kind")
    if mode == "overview":
        console.print("advx plugins KIND lists the config fields of every plugin of a kind; advx plugins NAME shows one plugin.", soft_wrap=True)
    for (kind, name), msg in sorted(reg.conflicts.items()):
        if kind in kinds:
            console.print(f"[red]conflict[/red]: {escape(msg)}", soft_wrap=True)
    for f in reg.failures:
        console.print(f"[red]failed[/red]: {escape(str(f))}", soft_wrap=True)
    return 0


def _print_overview(console, kind: str, entries: list[Any]) -> None:
    """One kind as a heading and one line per plugin: name, package, the first line of its description
    (cut to the width: `advx plugins NAME` shows all of it)."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{kind} plugins ({len(entries)})[/bold]")
    table = Table(box=None, show_header=False, pad_edge=False)
    name_w = max((len(e.name) for e in entries), default=0) + 2
    package_w = max((len(e.package) for e in entries), default=0)
    table.add_column("name", style="bold", no_wrap=True, width=name_w)
    table.add_column("package", no_wrap=True, width=package_w)
    # one line each, cut to what the names leave (advx plugins NAME shows all of it)
    table.add_column("description", no_wrap=True, overflow="ellipsis", width=max(console.width - name_w - package_w - 4, 10))
    for e in entries:
        table.add_row(f"  {escape(e.name)}", escape(e.package), escape(e.cls.summary()))
    console.print(table)
    console.print()


def _print_detailed(console, kind: str, entries: list[Any], heading: bool = True) -> None:
    """Each plugin as a block: its name and package, its description, then one line per config
    field (type, default, bounds) with the field's description indented below it."""
    from rich.markup import escape
    from rich.padding import Padding
    from rich.text import Text

    if heading:
        console.print(f"[bold]{kind} plugins ({len(entries)})[/bold]")
        console.print()
    for e in entries:
        console.print(f"[bold]{escape(e.name)}[/bold] ({escape(e.package)}): {escape(e.cls.summary())}", soft_wrap=False)
        if kind == "attack":
            console.print(Padding(Text(f"norm {e.cls.norm}; {_label_modes(e.cls)}"), (0, 0, 0, 2), expand=False))  # type: ignore[attr-defined]
        fields = [(n, f) for n, f in e.cls.Config.model_fields.items() if not (n == "label_mode" and kind == "attack")]
        for n, f in fields:
            signature, description = _describe_field(n, f)
            console.print(Padding(Text(signature, style="cyan"), (0, 0, 0, 2), expand=False))
            if description:
                console.print(Padding(Text(description, style="dim"), (0, 0, 0, 6), expand=False))
        if not fields:
            console.print(Padding(Text("no config fields"), (0, 0, 0, 2), expand=False))
        console.print()


def _dist_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
