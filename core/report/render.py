"""Assembling a report from its sections and rendering it as one HTML file or Markdown with images."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from advx.report.blocks import SectionContext, Gallery, INSTALL_HINT, Para, Plot, Report, Section, Table
from advx.report.detection import _roc_section
from advx.report.plots import _Plotter, _slug, have_matplotlib
from advx.report.sections import _breakdown_section, _cost_section, _eps_section, _gallery_section, _matrix_section, _provenance_section


def build_report(
    store: Any,
    spec_name: str | None = None,
    fmt: str = "html",
    attachments: Iterable[str | Path] = (),
    tables_only: bool = False,
    plots: bool | None = None,
) -> Report:
    """The report of ``store`` (a ``ResultStore``), for ``fmt`` ``html`` or ``md``.

    ``plots`` forces plots on or off (default: on where matplotlib is installed);
    ``tables_only`` keeps the tables and text (no plots, no gallery).
    """
    from advx.analysis.checks import run_checks
    from advx.contract.registry import Registry

    registry = Registry.discover()
    rows = store.cells(spec_name)
    use_plots = (have_matplotlib() if plots is None else plots) and not tables_only
    plotter = _Plotter(fmt, rows) if use_plots else None
    flags = run_checks(rows, store.samples, list(registry.checks.values()))
    ctx = SectionContext(rows, store, plotter, flags, fmt, tables_only, [Path(p) for p in attachments])
    sections: list[Section] = []
    if not rows:
        sections.append(Section("matrix", "No cells", [Para("The results file holds no cells" + (f" of spec {spec_name!r}." if spec_name else "."))]))
    else:
        # one bootstrap per cell, read by every section that shows its accuracies
        cis = store.intervals(rows, metrics=("clean_accuracy", "robust_accuracy"))
        sections.append(_matrix_section(rows, store, fmt, plotter, cis))
        builders: list[Callable[[], Section | None]] = [
            lambda: _eps_section(rows, flags, plotter, tables_only, cis),
            lambda: _roc_section(rows, plotter, registry),
            # the sections plugins contribute (a study's curves, a defense's own view)
            *[(lambda b=b: b(ctx)) for b in registry.report_sections],
            lambda: _breakdown_section(rows, "class", plotter),
            lambda: _breakdown_section(rows, "confidence", plotter),
        ]
        if not tables_only:
            builders.append(lambda: _gallery_section(rows, store))
        builders.append(lambda: _cost_section(rows, store.trainings(), plotter))
        for b in builders:
            s = b()
            if s is not None:
                sections.append(s)
    sections.append(_provenance_section(rows, store, spec_name))
    if not use_plots and not tables_only:
        sections[0].blocks.insert(0, Para(f"This report has tables only: plots need matplotlib ({INSTALL_HINT}).", "warn"))
    title = f"advx report: {spec_name or ', '.join(store.spec_names()) or Path(store.path).name}"
    return Report(title, sections, fmt)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3,.h3{font-size:14px;font-weight:600;margin:16px 0 6px}
nav{font-size:13px;margin-bottom:8px}nav a{margin-right:12px;color:#0a58ca;text-decoration:none}
.tw{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:6px 0 12px;background:#fff}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f3;font-weight:600;position:sticky;top:0}
td.r{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:13px}.warn{background:#fff3cd;border:1px solid #e8d48b;padding:6px 10px}
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top;background:#fff;border:1px solid #eee}
figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;padding:2px 6px}
.gallery td{text-align:center;font-size:11px;max-width:130px}.gallery th{position:static}
.gallery img{image-rendering:pixelated;width:96px;height:auto;display:block;margin:0 auto 2px}
"""


def _html_table(t: Table, cls: str = "") -> str:
    out = [f'<div class="tw"><table{f" class={cls!r}" if cls else ""}><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in t.headers]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        out.append("<tr>")
        for j, v in enumerate(row):
            color = t.colors[i][j] if t.colors else None
            attrs = (' class="r"' if j in t.right else "") + (f' style="background:{color}"' if color else "")
            out.append(f"<td{attrs}>{html.escape(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(_md_escape(h) or " " for h in t.headers) + " |"]
    lines.append("|" + "|".join("---:" if j in t.right else "---" for j in range(len(t.headers))) + "|")
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (no script, no external resource)."""
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{html.escape(report.title)}</h1>",
        "<nav>" + "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in report.sections) + "</nav>",
    ]
    for s in report.sections:
        out.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if isinstance(b, Para):
                out.append(f'<p class="{b.kind}">{html.escape(b.text)}</p>')
            elif isinstance(b, Table):
                out.append(_html_table(b))
            elif isinstance(b, Plot):
                out.append(f"<figure>{b.svg}<figcaption>{html.escape(b.title)}</figcaption></figure>")
            elif isinstance(b, Gallery):
                # one column per example: clean, adversarial and perturbation under each other
                out.append(f'<h3>{html.escape(b.title)}</h3><div class="tw"><table class="gallery"><tbody>')
                for k, what in enumerate(("clean", "adversarial", "perturbation")):
                    out.append(f"<tr><th>{what}</th>")
                    for row in b.rows:
                        png, cap = row[k]
                        data = base64.b64encode(png).decode()
                        out.append(f'<td><img alt="{html.escape(cap)}" src="data:image/png;base64,{data}">{html.escape(cap)}</td>')
                    out.append("</tr>")
                out.append("</tbody></table></div>")
        out.append("</section>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


def render_markdown(report: Report, images: Path | None, link: str) -> str:
    """The report as Markdown; plots and gallery images are written as PNG files under ``images`` (linked as ``link/NAME.png``)."""
    out = [f"# {report.title}", ""]
    written: set[str] = set()

    def save(stem: str, data: bytes) -> str:
        assert images is not None
        name, i = stem, 1
        while name in written:
            i += 1
            name = f"{stem}-{i}"
        written.add(name)
        images.mkdir(parents=True, exist_ok=True)
        (images / f"{name}.png").write_bytes(data)
        return f"{link}/{name}.png"

    for s in report.sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Para):
                out += [f"**{b.text}**" if b.kind in ("h3", "warn") else (f"_{b.text}_" if b.kind == "note" else b.text), ""]
            elif isinstance(b, Table):
                out += [_md_table(b), ""]
            elif isinstance(b, Plot) and b.png is not None and images is not None:
                out += [f"![{b.title}]({save(b.name, b.png)})", ""]
            elif isinstance(b, Gallery) and images is not None:
                stem = _slug(b.title)
                out += [f"**{b.title}**", "", "| | " + " | ".join(f"example {i + 1}" for i in range(len(b.rows))) + " |"]
                out.append("|---|" + "---|" * len(b.rows))
                for k, what in enumerate(("clean", "adversarial", "perturbation")):
                    cells = [f"![{_md_escape(row[k][1])}]({save(f'{stem}-{i}-{what}', row[k][0])})<br>{_md_escape(row[k][1])}" for i, row in enumerate(b.rows)]
                    out.append(f"| {what} | " + " | ".join(cells) + " |")
                out.append("")
    return "\n".join(out)


def write_report(
    db: str | Path,
    out: str | Path,
    *,
    spec_name: str | None = None,
    fmt: str | None = None,
    attachments: Iterable[str | Path] = (),
    tables_only: bool = False,
    plots: bool | None = None,
) -> Path:
    """Write the report of results file ``db`` to ``out`` and return its path.

    ``fmt`` is ``html`` (one self-contained file) or ``md`` (Markdown, PNG images in the
    folder ``<out stem>-images`` beside it); by default from ``out``'s extension.
    ``spec_name`` limits it to one spec's cells; ``attachments`` are files plugins'
    sections read (e.g. a rotation study's JSON; those beside ``db`` are found anyway); ``tables_only``
    leaves out plots and images; ``plots=False`` renders as if matplotlib were missing.
    """
    from advx.contract.errors import ConfigError
    from advx.store.results import ResultStore

    out = Path(out)
    if fmt is None:
        fmt = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}.get(out.suffix.lower(), "html")
    if fmt not in ("html", "md"):
        raise ConfigError(f"unknown report format {fmt!r}; use html or md")
    if out.parent and not out.parent.exists():
        raise ConfigError(f"report path {str(out)!r}: folder {str(out.parent)!r} does not exist")
    with ResultStore(db, readonly=True) as store:
        report = build_report(store, spec_name, fmt, attachments, tables_only, plots)
    if fmt == "html":
        text = render_html(report)
    else:
        images = None if tables_only else out.parent / f"{out.stem}-images"
        text = render_markdown(report, images, f"{out.stem}-images")
    try:
        out.write_text(text)
    except OSError as exc:
        raise ConfigError(f"report path {str(out)!r}: cannot write there ({exc.strerror})") from None
    return out
