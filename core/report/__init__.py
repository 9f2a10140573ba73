"""The report: a results file as one self-contained page of pictures and tables.

This module owns turning what a results file stores (cells, per-sample records, kept
examples, trainings, provenance) into a report, and nothing else: ``write_report(db, out)``
writes one HTML file that opens offline (inline CSS, inline SVG plots, images as data
URIs, no script, no external file), or a Markdown file with its PNG images in a folder
beside it (``fmt="md"``; ``tables_only`` leaves the images out, for documents such as
``docs/reproductions.md`` that quote the numbers). ``export_examples`` writes the kept
examples as PNG files (``advx results DB --examples DIR``).

Sections, each only where the results have the data: the matrix as a heat map (rows
dataset / model / defense, columns threat / attack; robust accuracy, clean accuracy
beside it) and the per-example worst case; robust accuracy against eps (one line per
defense) with the sanity flags marked and listed; ROC curves of detector cells with their
operating points (the defense's threshold, named ID-95 / ID-99 for ``keep``); sections
plugins contribute (``advx_report_sections``: the rotation study's curves); per-class and per-confidence-bucket bars; a gallery
per attack (clean, adversarial, amplified perturbation); cost; provenance, failed and
not-applicable cells.

Plots need matplotlib (``pip install 'advx[report]'``); without it the report has the
tables and says how to get the plots. Gallery images are written by a small PNG encoder
here, so they need no extra. Large matrices stay bounded: at most ``MAX_FIGURES`` plots
per section and ``MAX_GALLERY`` attacks in the gallery, with a line saying what was left
out.

One module per concept: ``blocks`` (what a report is made of), ``sections`` (the matrix,
eps sweeps, breakdowns, gallery, cost, provenance), ``detection`` (the section of
detectors), ``plots`` (matplotlib, optional),
``images`` (PNG without dependencies) and ``render`` (HTML and Markdown).
"""

from __future__ import annotations

from advx.report.blocks import INSTALL_HINT, Para, Plot, Report, Section, Table
from advx.report.common import spec_provenance
from advx.report.images import example_images, export_examples, png_bytes
from advx.report.plots import have_matplotlib
from advx.report.render import build_report, render_html, render_markdown, write_report

__all__ = [
    "INSTALL_HINT", "Para", "Plot", "Report", "Section", "Table", "build_report", "example_images", "export_examples",
    "have_matplotlib", "png_bytes", "render_html", "render_markdown", "spec_provenance", "write_report",
]
