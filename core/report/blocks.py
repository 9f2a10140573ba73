"""The report's building blocks (paragraphs, tables, plots, galleries, sections) and its limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


INSTALL_HINT = "pip install 'advx[report]'"


#: at most this many plots per section (the rest are named in a line)
MAX_FIGURES = 8


#: at most this many attacks in the gallery, and examples per attack
MAX_GALLERY = 12


GALLERY_EXAMPLES = 6


PLACE = ("dataset", "model", "defense", "threat", "attack")


@dataclass
class Para:
    text: str
    kind: str = "p"  # p, note, warn


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    #: per cell, a background colour (heat maps) or None
    colors: list[list[str | None]] | None = None
    right: set[int] = field(default_factory=set)  # right-aligned columns


@dataclass
class Plot:
    name: str  # file stem in Markdown output
    title: str
    svg: str | None = None
    png: bytes | None = None


@dataclass
class Gallery:
    title: str
    #: rows of (PNG bytes, caption) triples: clean, adversarial, perturbation
    rows: list[list[tuple[bytes, str]]]
    note: str = ""


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section]
    fmt: str


@dataclass
class SectionContext:
    """What a report section is built from (a plugin's ``advx_report_sections`` builders get it).

    ``plot(width, height)`` gives a matplotlib figure and ``figure(fig, name, caption)`` the
    block that shows it, or ``plotter`` is None (no matplotlib, or tables only): build
    tables then. ``attachments`` are the files given with ``advx report --attach`` and
    those a plugin finds beside the results file (``store.path``).
    """

    rows: list[Any]
    store: Any
    plotter: Any
    flags: list[Any]
    fmt: str = "html"
    tables_only: bool = False
    attachments: list[Any] = field(default_factory=list)


#: the names plugins use (``from advx import ReportSection, ...``)
ReportSection, ReportPara, ReportTable = Section, Para, Table
