"""Plots through matplotlib (optional): figures rendered to inline SVG or PNG files."""

from __future__ import annotations

import io
import re
from typing import Any
from advx.report.blocks import Plot


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


#: the text size of legends and tick labels, in points: readable where a page scales a figure down
LEGEND_FONT = 9
#: colours given to defenses and to attacks, in the order they first appear in the results
#: (matplotlib's tab10, then tab20's lighter shades; more than 20 labels cycle)
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip


class _Plotter:
    """Makes matplotlib figures and turns them into inline SVG (HTML) or PNG (Markdown).

    ``color(kind, label)`` gives every defense (and every attack) one colour across all the
    report's plots, assigned from the results' rows in the order they appear, so a defense
    is the same colour in the eps plots as in the ROC curves, and an attack in the
    per-class as in the per-confidence bars.
    """

    def __init__(self, fmt: str, rows: Any = ()) -> None:
        self.fmt = fmt
        self.count = 0
        self.colors: dict[str, dict[str, str]] = {"defense": {}, "attack": {}}
        for r in rows:
            for kind, labels in self.colors.items():
                label = str(r[kind])
                if label not in labels:
                    labels[label] = PALETTE[len(labels) % len(PALETTE)]

    def color(self, kind: str, label: str) -> str:
        """The colour of defense or attack ``label`` in every plot of this report."""
        labels = self.colors.setdefault(kind, {})
        if label not in labels:
            labels[label] = PALETTE[len(labels) % len(PALETTE)]
        return labels[label]

    def figure(self, w: float = 6.4, h: float = 3.6, **margins: float):
        """A figure with fixed margins (a layout engine would cost a second draw per figure)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(w, h))
        fig.subplots_adjust(**{"left": 0.8 / w, "right": 1 - 0.2 / w, "bottom": 0.55 / h, "top": 1 - 0.35 / h, **margins})
        return fig

    def done(self, fig: Any, name: str, title: str) -> Plot:
        import matplotlib

        self.count += 1
        buf = io.BytesIO()
        if self.fmt == "html":
            with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "advx"}):
                fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
            svg = buf.getvalue().decode()
            svg = svg[svg.index("<svg") :]
            svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
            return Plot(name, title, svg=svg)
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        return Plot(name, title, png=buf.getvalue())


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:60] or "x"
