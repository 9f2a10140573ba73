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

Every number that is a proportion of test examples (accuracies, success and error rates, the
detector's rates) or a detector AUC is shown with its 95% interval, ``0.6100 [0.5540, 0.6640]``,
and a line under the table names how each kind of interval was made:

* *bootstrap*: the export carries ``<metric>_ci_low`` / ``<metric>_ci_high``
  (``advx results DB --ci``: a percentile bootstrap over the per-example records); preferred;
* *Wilson*: a Wilson score interval from the cell's ``n`` and the proportion (exports made
  without ``--ci``, whose results files were not kept); ``success_rate`` counts the
  ``n * clean_accuracy`` examples it is a share of;
* *Hanley-McNeil*: an AUC's interval from the AUC and the numbers of positives (adversarial
  examples: ``n``, or ``n * top1_error`` for ``detection_auc_fooled``) and negatives (``n``);
* *over seeds*: a ``spread`` adds the t interval of its mean, ``[mean - t sd / sqrt(k), ...]``
  with k - 1 degrees of freedom, to its mean, sd and range.

A selector with ``detail`` reads one group of the cell's breakdowns instead of the whole
cell: ``detail = ["per_class", "0"]`` (class 0; ``advx results --breakdown class``) or
``["per_confidence", "high"]`` (a clean-confidence bucket); ``metric`` is then that group's,
with the bootstrap over the group's own examples where the export has it (``--ci``), else
the Wilson interval from the group's ``n``.

A ``metric`` may also be a list of keys into the cell (``["metrics", "diagnostics", "gradients",
"zero_share"]``: what the sanity checks measured); with ``n`` (the 32 probe inputs) it gets a
Wilson interval. A ``path`` selector gets a Wilson interval when it names its count, ``n = 10000`` or ``n = [path
of the count]`` (the study's share of ``n`` examples); without one it is a single example's
probability, an angle or a mean and gets none. A proportion with no count says ``(no interval)``.

In the document each table sits between ``<!-- table: ID -->`` and ``<!-- /table -->``:

    python experiments/reproductions.py            # rewrite the tables in docs/reproductions.md
    python experiments/reproductions.py --check    # exit 1 if the document differs (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import math
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


#: the metrics that are a proportion of test examples, and the AUCs: these get intervals
PROPORTIONS = frozenset({
    "clean_accuracy", "robust_accuracy", "adversarial_accuracy", "success_rate", "targeted_success_rate",
    "top1_error", "top5_error", "detection_tpr", "accuracy_with_rejection", "detection_fpr",
})
AUCS = frozenset({"detection_auc", "detection_auc_fooled"})
#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054
#: Student's t quantiles (0.975) by degrees of freedom, for intervals over a few seeds
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
#: how each kind of interval was made, as the line under a table says it
METHODS = {
    "bootstrap": "percentile bootstrap over the test examples (advx results --ci, 1,000 resamples)",
    "wilson": "Wilson score interval from the number of test examples and the proportion (the export keeps no per-example records)",
    "wilson-n": "Wilson score interval from the count the selector names (a study's examples, or the 32 probe inputs of the sanity checks) and the proportion",
    "hanley-mcneil": "AUC: Hanley-McNeil from the numbers of adversarial (positive) and clean (negative) examples",
    "seeds": "after mean ± sd (range): the t interval of the mean over the training seeds",
    "none": "(no interval): the stored value has no count of examples",
}


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` of ``n`` trials (never outside [0, 1],
    sensible at 0 and 1, where the normal approximation collapses to a point)."""
    if n <= 0:
        raise ValueError(f"a proportion of {n} examples has no interval")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def hanley_mcneil(auc: float, n_pos: float, n_neg: float, z: float = Z95) -> tuple[float, float]:
    """The normal interval of an AUC with Hanley and McNeil's (1982) standard error, clipped to [0, 1]."""
    if n_pos <= 0 or n_neg <= 0:
        raise ValueError(f"an AUC of {n_pos} positives and {n_neg} negatives has no interval")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def seeds_interval(values: list[float]) -> tuple[float, float]:
    """The 95% t interval of the mean of ``values`` (one per training seed)."""
    k = len(values)
    t = T975.get(k - 1, Z95)
    half = t * statistics.stdev(values) / math.sqrt(k)
    mean = statistics.mean(values)
    return mean - half, mean + half


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


def render_entry(entry: Any, table: dict[str, Any], results: Results, used: set[str] | None = None) -> str:
    """One table entry as text; the kinds of interval it shows are added to ``used``."""
    used = set() if used is None else used
    if isinstance(entry, list):  # several values in one column: "a / b / c"
        return " / ".join(render_entry(e, table, results, used) for e in entry)
    if not isinstance(entry, dict):
        return str(entry)
    display = {**table.get("where", {}), **entry}
    fmt, scale = display.get("fmt", ".4f"), display.get("scale", 1)
    if "spread" in entry:  # runs of one study with other seeds: "mean ± sd (min-max) [interval of the mean]"
        values = [value_of(e, table, results) for e in entry["spread"]]
        if len(values) < 2 or any(v is None for v in values):
            raise ReproductionError(f"table {table['id']}: a spread needs two or more values, got {values}")
        mean = statistics.mean(values)
        lo, hi = seeds_interval(values)
        metrics = {str(({**table.get("where", {}), **e}).get("metric", "adversarial_accuracy")) for e in entry["spread"]}
        if metrics <= PROPORTIONS | AUCS:  # a share or an AUC: within [0, 1]
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        used.add("seeds")
        return f"{mean:{fmt}} ± {statistics.stdev(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}}) [{lo:{fmt}}, {hi:{fmt}}]"
    value, ci, method = measure(entry, table, results)
    if value is None:
        return "-"
    text = format(value * scale, fmt)
    if method:
        used.add(method)
    if method == "none":
        return f"{text} (no interval)"
    return text if ci is None else f"{text} [{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]"


def value_of(entry: dict[str, Any], table: dict[str, Any], results: Results) -> Any:
    """The stored value a selector names (unformatted, unscaled)."""
    return measure(entry, table, results)[0]


def measure(entry: dict[str, Any], table: dict[str, Any], results: Results) -> tuple[Any, tuple[float, float] | None, str | None]:
    """The stored value a selector names, its 95% interval and the kind of interval
    (``METHODS``' keys; ``None`` for a value that is no proportion or AUC)."""
    sel = {**table.get("where", {}), **entry}
    name = sel.pop("results", None)
    metric = sel.pop("metric", "adversarial_accuracy")
    count = sel.pop("n", None)
    detail = sel.pop("detail", None)
    for display in ("fmt", "scale"):
        sel.pop(display, None)
    if name is None:
        raise ReproductionError(f"table {table['id']}: a selector without results = ...: {entry}")
    if "path" in entry:  # a value of a study's own JSON (not a matrix export): keys and list indices
        value = _walk(results.json(name), entry["path"], name, table)
        if count is None or value is None:
            return value, None, None
        n = _walk(results.json(name), count, name, table) if isinstance(count, list) else count
        return value, wilson(value, n), "wilson-n"
    cell = select(results.cells(name), sel, table["id"])
    if detail is not None:  # one class or confidence bucket of the cell: its own metrics and intervals
        cell = _walk(cell, ["details", *detail], name, table)
        if not isinstance(cell, dict):
            raise ReproductionError(f"table {table['id']}: details {detail} of a cell of {name}.json is not a group of metrics")
        if "robust_accuracy" in cell and "adversarial_accuracy" not in cell:  # an old export's name, as for whole cells
            cell = {**cell, "adversarial_accuracy": cell["robust_accuracy"]}
    if isinstance(metric, list):  # a value inside the cell, e.g. ["metrics", "diagnostics", "gradients", "zero_share"]
        value = _walk(cell, metric, name, table)
        return (value, wilson(value, count), "wilson-n") if count and value is not None else (value, None, None)
    if metric not in cell:
        raise ReproductionError(f"table {table['id']}: the cells of {name} have no column {metric!r}")
    value = cell[metric]
    return (value, *cell_interval(cell, metric, value))


def _walk(data: Any, path: list[Any], name: str, table: dict[str, Any]) -> Any:
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            raise ReproductionError(f"table {table['id']}: {name}.json has no {path}") from None
    return data


def cell_interval(cell: dict[str, Any], metric: str, value: Any) -> tuple[tuple[float, float] | None, str | None]:
    """The 95% interval of one stored cell's ``metric``: the export's bootstrap interval where it
    has one, else Wilson (proportions) or Hanley-McNeil (AUCs) from the cell's counts."""
    if value is None or (metric not in PROPORTIONS and metric not in AUCS):
        return None, None
    low, high = cell.get(f"{metric}_ci_low"), cell.get(f"{metric}_ci_high")
    if low is not None and high is not None:
        return (low, high), "bootstrap"
    n = cell.get("n")
    if not n:
        return None, "none"
    if metric in AUCS:
        positives = n
        if metric == "detection_auc_fooled":
            fooled = cell.get("top1_error")
            if fooled is None and cell.get("adversarial_accuracy") is not None:
                fooled = 1 - cell["adversarial_accuracy"]
            if fooled is None:
                return None, "none"
            positives = round(n * fooled)
        return hanley_mcneil(value, positives, n), "hanley-mcneil"
    if metric == "success_rate":
        if cell.get("clean_accuracy") is None:
            return None, "none"
        n = round(n * cell["clean_accuracy"])
    return wilson(value, n), "wilson"


def methods_line(used: set[str]) -> str:
    """The line under a table that says how its intervals were made ("" when it shows none)."""
    if not used:
        return ""
    return "95% intervals in brackets: " + "; ".join(METHODS[m] for m in METHODS if m in used) + "."


def render_table(table: dict[str, Any], results: Results | Path = RESULTS) -> str:
    """One Markdown table: the header row, an alignment row, then the rows."""
    if not isinstance(results, Results):
        results = Results(results)
    header = table["columns"]
    align = table.get("align") or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    used: set[str] = set()
    for row in table["rows"]:
        if len(row) != len(header):
            raise ReproductionError(f"table {table['id']}: a row has {len(row)} entries, the header {len(header)}: {row[0]}")
        lines.append("| " + " | ".join(render_entry(e, table, results, used) for e in row) + " |")
    note = methods_line(used)
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


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
