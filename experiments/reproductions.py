"""Write the numbers of ``docs/reproductions.md`` from the stored results, so the published
tables and the runs behind them cannot drift apart.

The tables are declared in ``experiments/reproductions.toml``: each has an ``id``, a header
row and rows whose entries are either text (a label, a paper's number) or a *selector*, an
inline table naming one stored cell and one of its columns::

    { results = "seed002-mnist-table2-reduced", defense = "ensemble(members=2, kind=bagging)",
      threat = "member(index=0)", attack = "fgsm(eps=0.3)", metric = "adversarial_accuracy" }

``results`` names a file in ``experiments/results/`` (``NAME.json``): an export of a results
file (``advx results DB --spec NAME --format json -o experiments/results/NAME.json``) or a
``{"cells": [...]}`` file of the same rows. The other keys match the cells' label columns
exactly (``dataset``, ``model``, ``defense``, ``threat``, ``attack``); a selector must match
exactly one finished cell, or the script stops with a one-line error naming the table and
the selector. ``metric`` is a cell column (``adversarial_accuracy``, the default: the accuracy on the
adversarial examples the papers report; ``robust_accuracy``, correct both clean and under
attack, in exports of advx 0.2 on; ``clean_accuracy``,
``detection_auc``, ``mean_l2``, ``seconds`` ...); ``fmt`` a Python format (``.4f`` by
default), ``scale`` a factor (100 for percentages). A selector with ``path`` (keys and list
indices) reads one value of a study's own JSON instead, e.g. ``experiments/seed003-rotation/rotation.py``'s.
Keys a table gives under ``[table.where]`` apply to each of its selectors. A
list of entries renders as its values joined by `` / `` (several numbers in one column), and
``{ spread = [selector, ...] }`` as their mean, sample standard deviation and range,
``0.0682 ± 0.0120 (0.0551-0.0800)`` (one study run with several training seeds).

In the document each table sits between ``<!-- table: ID -->`` and ``<!-- /table -->``:

    python experiments/reproductions.py            # rewrite the tables in docs/reproductions.md
    python experiments/reproductions.py --check    # exit 1 if the document differs (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "reproductions.md"
TABLES = HERE / "reproductions.toml"
RESULTS = HERE / "results"
LABELS = ("dataset", "model", "defense", "threat", "attack", "spec")
BLOCK = re.compile(r"(<!-- table: (?P<id>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


class ReproductionError(Exception):
    """A table that cannot be rendered: the message names the table and what is wrong."""


class Results:
    """The stored results files of one rendering, each read and parsed once."""

    def __init__(self, results_dir: Path = RESULTS) -> None:
        self.dir = results_dir
        self._json: dict[str, Any] = {}
        self._cells: dict[str, list[dict[str, Any]]] = {}

    def json(self, name: str) -> Any:
        """``results_dir/NAME.json`` as parsed."""
        if name not in self._json:
            path = self.dir / f"{name}.json"
            if not path.is_file():
                raise ReproductionError(
                    f"no stored results {path}: export them with advx results DB --spec {name} --format json -o {path}"
                )
            self._json[name] = json.loads(path.read_text())
        return self._json[name]

    def cells(self, name: str) -> list[dict[str, Any]]:
        """The finished cells of ``NAME.json`` (either export format)."""
        if name not in self._cells:
            data = self.json(name)
            cells = data["cells"] if isinstance(data, dict) else data
            for c in cells:
                c.setdefault("spec", c.get("spec_name"))
                if "robust_accuracy" in c and "adversarial_accuracy" not in c:
                    # an export of advx before results schema 3, whose "robust_accuracy" was the
                    # accuracy on the adversarial examples (the papers' quantity): its own name now
                    c["adversarial_accuracy"] = c.pop("robust_accuracy")
            self._cells[name] = [c for c in cells if c.get("status", "done") == "done"]
        return self._cells[name]


def select(cells: list[dict[str, Any]], where: dict[str, Any], table: str) -> dict[str, Any]:
    """The one cell whose label columns equal ``where``'s."""
    unknown = set(where) - set(LABELS)
    if unknown:
        raise ReproductionError(f"table {table}: unknown selector key(s) {sorted(unknown)}; use {', '.join(LABELS)}")
    hits = [c for c in cells if all(c.get(k) == v for k, v in where.items())]
    if len(hits) != 1:
        what = "no cell" if not hits else f"{len(hits)} cells"
        raise ReproductionError(f"table {table}: {what} match {where}")
    return hits[0]


def render_entry(entry: Any, table: dict[str, Any], results: Results) -> str:
    if isinstance(entry, list):  # several values in one column: "a / b / c"
        return " / ".join(render_entry(e, table, results) for e in entry)
    if not isinstance(entry, dict):
        return str(entry)
    display = {**table.get("where", {}), **entry}
    fmt = display.get("fmt", ".4f")
    if "spread" in entry:  # runs of one study with other seeds: "mean ± sd (min-max)"
        values = [value_of(e, table, results) for e in entry["spread"]]
        if len(values) < 2 or any(v is None for v in values):
            raise ReproductionError(f"table {table['id']}: a spread needs two or more values, got {values}")
        mean = statistics.mean(values)
        return f"{mean:{fmt}} ± {statistics.stdev(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
    value = value_of(entry, table, results)
    return "-" if value is None else format(value * display.get("scale", 1), fmt)


def value_of(entry: dict[str, Any], table: dict[str, Any], results: Results) -> Any:
    """The stored value a selector names (unformatted, unscaled)."""
    sel = {**table.get("where", {}), **entry}
    name = sel.pop("results", None)
    metric = sel.pop("metric", "adversarial_accuracy")
    for display in ("fmt", "scale"):
        sel.pop(display, None)
    if name is None:
        raise ReproductionError(f"table {table['id']}: a selector without results = ...: {entry}")
    if "path" in entry:  # a value of a study's own JSON (not a matrix export): keys and list indices
        value: Any = results.json(name)
        for step in entry["path"]:
            try:
                value = value[step]
            except (KeyError, IndexError, TypeError):
                raise ReproductionError(f"table {table['id']}: {name}.json has no {entry['path']}") from None
        return value
    cell = select(results.cells(name), sel, table["id"])
    if metric not in cell:
        raise ReproductionError(f"table {table['id']}: the cells of {name} have no column {metric!r}")
    return cell[metric]


def render_table(table: dict[str, Any], results: Results | Path = RESULTS) -> str:
    """One Markdown table: the header row, an alignment row, then the rows."""
    if not isinstance(results, Results):
        results = Results(results)
    header = table["columns"]
    align = table.get("align") or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in table["rows"]:
        if len(row) != len(header):
            raise ReproductionError(f"table {table['id']}: a row has {len(row)} entries, the header {len(header)}: {row[0]}")
        lines.append("| " + " | ".join(render_entry(e, table, results) for e in row) + " |")
    return "\n".join(lines) + "\n"


def load_tables(path: Path = TABLES) -> dict[str, dict[str, Any]]:
    tables = tomllib.loads(path.read_text())["table"]
    ids = [t["id"] for t in tables]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ReproductionError(f"{path}: duplicate table id(s) {sorted(dup)}")
    return {t["id"]: t for t in tables}


def rewrite(doc: str, tables: dict[str, dict[str, Any]], results_dir: Path = RESULTS) -> str:
    """``doc`` with every marked table rendered again; every declared table must be in it."""
    seen: list[str] = []
    results = Results(results_dir)  # every results file read once for the whole document

    def sub(m: re.Match) -> str:
        tid = m.group("id")
        if tid not in tables:
            raise ReproductionError(f"{DOC.name} marks table {tid!r}, which {TABLES.name} does not declare")
        seen.append(tid)
        return m.group(1) + render_table(tables[tid], results) + m.group(4)

    out = BLOCK.sub(sub, doc)
    missing = sorted(set(tables) - set(seen))
    if missing:
        raise ReproductionError(f"{TABLES.name} declares table(s) {missing} that {DOC.name} does not mark")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the document differs from the stored results")
    args = ap.parse_args(argv)
    try:
        doc = DOC.read_text()
        new = rewrite(doc, load_tables())
    except ReproductionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != doc:
            print(f"{DOC} differs from the stored results: run python experiments/reproductions.py", file=sys.stderr)
            return 1
        print(f"{DOC}: every table matches the stored results")
        return 0
    DOC.write_text(new)
    print(f"wrote {len(BLOCK.findall(new))} tables into {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
