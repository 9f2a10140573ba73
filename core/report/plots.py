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


class _Plotter:
    """Makes matplotlib figures and turns them into inline SVG (HTML) or PNG (Markdown)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.count = 0

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
