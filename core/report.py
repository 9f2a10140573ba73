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
operating points (the defense's threshold, named ID-95 / ID-99 for ``keep``); rotation
curves from a rotation study's JSON; per-class and per-confidence-bucket bars; a gallery
per attack (clean, adversarial, amplified perturbation); cost; provenance, failed and
not-applicable cells.

Plots need matplotlib (``pip install 'advx[report]'``); without it the report has the
tables and says how to get the plots. Gallery images are written by a small PNG encoder
here, so they need no extra. Large matrices stay bounded: at most ``MAX_FIGURES`` plots
per section and ``MAX_GALLERY`` attacks in the gallery, with a line saying what was left
out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import struct
import subprocess
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'advx[report]'"
#: at most this many plots per section (the rest are named in a line)
MAX_FIGURES = 8
#: at most this many attacks in the gallery, and examples per attack
MAX_GALLERY = 12
GALLERY_EXAMPLES = 6
PLACE = ("dataset", "model", "defense", "threat", "attack")


# -- building blocks ------------------------------------------------------------------------------


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


# -- PNG without dependencies -----------------------------------------------------------------------


def png_bytes(pixels: Any) -> bytes:
    """A PNG of a uint8 array of shape (H, W) (grey) or (H, W, 3) (RGB)."""
    import numpy as np

    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        color = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"png_bytes: shape {a.shape} is neither (H, W) nor (H, W, 3)")
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def to_pixels(t: Any, lo: float = 0.0, hi: float = 1.0, min_side: int = 64) -> Any:
    """A (C, H, W) tensor in [lo, hi] as a uint8 (H, W) or (H, W, 3) array, upscaled (nearest) so its short side is >= ``min_side``."""
    import numpy as np

    a = t.detach().float().cpu().numpy()
    if a.ndim == 2:
        a = a[None]
    a = a[:3] if a.shape[0] >= 3 else a[:1]
    a = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    a = (a * 255.0 + 0.5).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    scale = max(1, math.ceil(min_side / max(1, min(a.shape[0], a.shape[1]))))
    if scale > 1:
        a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    return a


def example_images(x: Any, x_adv: Any) -> tuple[bytes, bytes, bytes, float]:
    """PNGs of a clean input, its adversarial version and the perturbation amplified to the full range, and that amplification."""
    lo, hi = min(0.0, float(x.min()), float(x_adv.min())), max(1.0, float(x.max()), float(x_adv.max()))
    delta = (x_adv - x).float()
    peak = float(delta.abs().max())
    amp = (hi - lo) / (2 * peak) if peak > 0 else 1.0
    shown = (lo + hi) / 2 + delta * amp  # grey: unchanged
    return png_bytes(to_pixels(x, lo, hi)), png_bytes(to_pixels(x_adv, lo, hi)), png_bytes(to_pixels(shown, lo, hi)), amp


# -- helpers ------------------------------------------------------------------------------------------


def _cfg(row: dict[str, Any], key: str) -> dict[str, Any]:
    v = row.get(key)
    if isinstance(v, str):
        return json.loads(v)
    return dict(v or {})


def _fmt(v: Any, fmt: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return format(v, fmt)
    return str(v)


def _heat(v: float | None) -> str | None:
    """Background colour of an accuracy in [0, 1]: red (0) through yellow to green (1)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    v = min(max(float(v), 0.0), 1.0)
    hue = 120 * v  # 0 red, 60 yellow, 120 green
    return f"hsl({hue:.0f}, 70%, 78%)"


def constraint(row: dict[str, Any]) -> str:
    """The threat constraint of a row: its norm and eps, or unbounded (minimum-norm attacks)."""
    cfg, traits = _cfg(row, "attack_config"), _cfg(row, "attack_traits")
    norm = traits.get("norm", "?")
    return f"{norm} eps={cfg['eps']:g}" if cfg.get("eps") is not None else f"{norm} unbounded"


def _place(row: dict[str, Any], cols: Sequence[str] = PLACE) -> str:
    return " / ".join(str(row.get(c)) for c in cols)


def _flags_of(row: dict[str, Any], flags: Sequence[Any]) -> list[Any]:
    """The sanity flags that name this row's cell (``Flag.cells``)."""
    return [f for f in flags if row.get("cell_key") in getattr(f, "cells", ())]


def _git_commit(path: Path) -> str | None:
    """The last commit of ``path`` in its git work tree (with ``+modified`` when it differs), or None."""
    try:
        folder = str(path.resolve().parent)
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", path.name], cwd=folder, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path.name], cwd=folder, capture_output=True, timeout=10)
        return commit + ("+modified" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def spec_provenance(spec_path: str | Path | None) -> dict[str, Any]:
    """What ``advx run`` records about a spec file: its path and git commit (when in a git work tree)."""
    if spec_path is None:
        return {"path": None, "git_commit": None}
    p = Path(spec_path)
    return {"path": str(p), "git_commit": _git_commit(p)}


# -- plots (matplotlib, optional) ------------------------------------------------------------------


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


# -- the sections -----------------------------------------------------------------------------------


def _matrix_section(rows: list[dict[str, Any]], store: Any, fmt: str, plotter: _Plotter | None) -> Section:
    sec = Section("matrix", "Robust accuracy: the matrix")
    rkeys: list[str] = []
    ckeys: list[str] = []
    grid: dict[tuple[str, str], dict[str, Any]] = {}
    clean: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        rk, ck = _place(r, ("dataset", "model", "defense")), _place(r, ("threat", "attack"))
        if rk not in rkeys:
            rkeys.append(rk)
        if ck not in ckeys:
            ckeys.append(ck)
        grid[(rk, ck)] = r
        if r.get("status") == "done" and r.get("clean_accuracy") is not None:
            clean[rk].append(r["clean_accuracy"])
    sec.blocks.append(
        Para(
            "Rows: dataset / model / defense; columns: threat model / attack. Each cell is the robust accuracy "
            "(accuracy on the adversarial examples); the clean column is the accuracy on the clean examples "
            "(a range where the cells of a row evaluated different examples)."
        )
    )
    headers = ["dataset / model / defense", "clean"] + ckeys
    body, colors = [], []
    for rk in rkeys:
        cs = clean.get(rk, [])
        lo, hi = (min(cs), max(cs)) if cs else (None, None)
        line = [rk, "-" if lo is None else (_fmt(lo) if hi - lo < 1e-9 else f"{lo:.4f}-{hi:.4f}")]
        col: list[str | None] = [None, _heat(hi)]
        for ck in ckeys:
            r = grid.get((rk, ck))
            if r is None:
                line.append("")
                col.append(None)
            elif r.get("status") == "failed":
                line.append("failed")
                col.append("#e0e0e0")
            elif r.get("status") == "not-applicable":
                line.append("n/a")
                col.append("#f4f4f4")
            else:
                line.append(_fmt(r.get("robust_accuracy")))
                col.append(_heat(r.get("robust_accuracy")))
        body.append(line)
        colors.append(col)
    sec.blocks.append(Table(headers, body, colors, right=set(range(1, len(headers)))))
    if fmt == "md" and plotter is not None and 1 < len(rkeys) * len(ckeys) <= 2500:
        import numpy as np

        data = np.full((len(rkeys), len(ckeys)), np.nan)
        for i, rk in enumerate(rkeys):
            for j, ck in enumerate(ckeys):
                r = grid.get((rk, ck))
                if r is not None and r.get("robust_accuracy") is not None:
                    data[i, j] = r["robust_accuracy"]
        w, h = max(5.0, 3.0 + 0.5 * len(ckeys)), max(3.0, 2.2 + 0.25 * len(rkeys))
        fig = plotter.figure(w, h, left=2.6 / w, bottom=2.0 / h, right=1 - 0.9 / w)
        ax = fig.subplots()
        im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(ckeys)), ckeys, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rkeys)), rkeys, fontsize=7)
        if len(rkeys) * len(ckeys) <= 200:
            for i in range(len(rkeys)):
                for j in range(len(ckeys)):
                    if not np.isnan(data[i, j]):
                        ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="robust accuracy")
        sec.blocks.append(plotter.done(fig, "matrix-heatmap", "robust accuracy"))

    # the per-example worst case over the attacks of one threat constraint
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "done" and r.get("robust_accuracy") is not None:
            groups[(r["dataset"], r["model"], r["defense"], r["threat"], constraint(r))].append(r)
    multi = {k: v for k, v in groups.items() if len(v) > 1}
    if multi:
        sec.blocks.append(Para("Per-example worst case: an example counts as robust only if no attack of the same threat constraint (norm and eps) fooled it.", "h3"))
        wrows = []
        for (d, m, df, t, c), cells in multi.items():
            worst = store.worst_case(cells)
            best = min(cells, key=lambda r: r["robust_accuracy"])
            wrows.append([f"{d} / {m} / {df}", t, c, str(len(cells)), f"{best['robust_accuracy']:.4f} ({best['attack']})", _fmt(worst)])
        sec.blocks.append(Table(["dataset / model / defense", "threat", "constraint", "attacks", "best single attack", "worst case"], wrows, right={3, 4, 5}))
    return sec


def _eps_tables(sweeps: dict[tuple, list[dict[str, Any]]], width: int = 8) -> list[Any]:
    """The eps sweeps as tables: per attack, rows eps (clean first), columns the places it ran on.

    Place parts shared by every column go into the table's title, so columns name only what
    differs (the shape of the tables in docs/reproductions.md).
    """
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (_, _, _, rest), cells in sweeps.items():
        families[rest].extend(cells)
    out: list[Any] = []
    parts = ("dataset", "model", "defense", "threat")
    shown = skipped = 0
    for rest, cells in families.items():
        name = json.loads(rest).get("name", "attack")
        varying = [p for p in parts if len({r[p] for r in cells}) > 1] or ["dataset"]
        shared = [f"{p} {cells[0][p]}" for p in parts if p not in varying]
        places: list[str] = []
        at: dict[tuple[str, float], dict[str, Any]] = {}
        clean: dict[str, float] = {}
        for r in cells:
            col = " / ".join(str(r[p]) for p in varying)
            if col not in places:
                places.append(col)
            at[(col, _cfg(r, "attack_config")["eps"])] = r
            if r.get("clean_accuracy") is not None:
                clean.setdefault(col, r["clean_accuracy"])
        epss = sorted({e for _, e in at})
        extra = {k: v for k, v in json.loads(rest).items() if k not in ("name", "label_mode") or (k == "label_mode" and v != "true")}
        title = f"{name}{' ' + json.dumps(extra) if extra else ''}: robust accuracy" + (f" ({', '.join(shared)})" if shared else "")
        for start in range(0, len(places), width):
            if shown >= MAX_FIGURES:
                skipped += 1
                continue
            cols = places[start : start + width]
            body = [["clean"] + [_fmt(clean.get(c)) for c in cols]]
            body += [[f"{e:g}"] + [_fmt(at[(c, e)]["robust_accuracy"]) if (c, e) in at else "" for c in cols] for e in epss]
            out.append(Para(title + (f" [{start // width + 1}]" if len(places) > width else ""), "h3"))
            out.append(Table(["eps"] + cols, body, right=set(range(len(cols) + 1))))
            shown += 1
    if skipped:
        out.append(Para(f"{skipped} more eps tables are not shown (at most {MAX_FIGURES}); the matrix has every number.", "note"))
    return out


def _eps_section(rows: list[dict[str, Any]], flags: list[Any], plotter: _Plotter | None, tables_only: bool = False) -> Section | None:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cfg = _cfg(r, "attack_config")
        if r.get("status") == "done" and cfg.get("eps") is not None and r.get("robust_accuracy") is not None:
            rest = json.dumps({k: v for k, v in cfg.items() if k not in ("eps", "alpha")}, sort_keys=True)
            groups[(r["dataset"], r["model"], r["threat"], rest)].append(r)
    sweeps = {k: v for k, v in groups.items() if len({_cfg(r, "attack_config")["eps"] for r in v}) > 1}
    if not sweeps and not flags:
        return None
    sec = Section("eps", "Robust accuracy against eps")
    if sweeps:
        sec.blocks.append(
            Para(
                "One plot per attack (all its settings but eps and step size equal), one line per defense; a red ring marks a point a sanity flag names."
                if plotter is not None
                else "One table per attack (all its settings but eps and step size equal): robust accuracy per eps."
            )
        )
    if sweeps and plotter is None:
        sec.blocks += _eps_tables(sweeps)
        if not tables_only:
            sec.blocks.append(Para(f"Plots need matplotlib: {INSTALL_HINT}.", "note"))
    elif sweeps:
        items = list(sweeps.items())
        for (d, m, t, rest), cells in items[:MAX_FIGURES]:
            name = json.loads(rest).get("name", "attack")
            fig = plotter.figure(6.4, 3.4, right=1 - 1.9 / 6.4)
            ax = fig.subplots()
            by_defense: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in cells:
                by_defense[r["defense"]].append(r)
            for defense, rs in by_defense.items():
                rs = sorted(rs, key=lambda r: _cfg(r, "attack_config")["eps"])
                xs = [_cfg(r, "attack_config")["eps"] for r in rs]
                ys = [r["robust_accuracy"] for r in rs]
                ax.plot(xs, ys, marker="o", ms=4, label=defense[:40])
                for x_, y_, r in zip(xs, ys, rs):
                    if _flags_of(r, flags):
                        ax.plot([x_], [y_], marker="o", ms=12, mfc="none", mec="red", mew=2)
            ax.set_xlabel(f"eps ({_cfg(cells[0], 'attack_traits').get('norm', '')})")
            ax.set_ylabel("robust accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{name} on {d} / {m}, {t}", fontsize=9)
            ax.legend(fontsize=7, title="defense", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            sec.blocks.append(plotter.done(fig, f"eps-{_slug(name + '-' + d + '-' + m + '-' + t)}", f"{name}: {d} / {m}, {t}"))
        if len(items) > MAX_FIGURES:
            sec.blocks.append(Para(f"{len(items) - MAX_FIGURES} more eps sweeps are not drawn (at most {MAX_FIGURES} plots per section); their numbers are in the matrix.", "note"))
    if flags:
        sec.blocks.append(Para(f"Sanity flags ({len(flags)}): places to look, not verdicts (see advx.flags).", "h3"))
        sec.blocks.append(Table(["check", "message"], [[f.check, f.message] for f in flags]))
    else:
        sec.blocks.append(Para("Sanity checks ran on the finished cells: none fired."))
    return sec


def _operating_label(row: dict[str, Any]) -> str:
    keep = _cfg(row, "defense_config").get("keep")
    return f"ID-{keep:g}" if isinstance(keep, (int, float)) else "threshold"


def _interp_tpr(points: list[list[float]], fpr: float) -> float:
    for (f0, t0), (f1, t1) in zip(points, points[1:]):
        if f0 <= fpr <= f1:
            return t0 if f1 == f0 else t0 + (t1 - t0) * (fpr - f0) / (f1 - f0)
    return points[-1][1]


def _roc_section(rows: list[dict[str, Any]], plotter: _Plotter | None) -> Section | None:
    det = [r for r in rows if r.get("status") == "done" and r.get("detection_auc") is not None]
    if not det:
        return None
    sec = Section("roc", "Detection: ROC curves")
    sec.blocks.append(
        Para(
            "Positives: adversarial examples; negatives: their clean originals. The marker on each curve is the "
            "defense's own operating point (its threshold: ID-95 / ID-99 keep 95% / 99% of each class's natural "
            "training examples); TPR at 1% and 5% FPR are read off the curve."
        )
    )
    table = []
    for r in det:
        roc = (_cfg(r, "metrics") or {}).get("roc")
        table.append(
            [
                _place(r),
                _operating_label(r),
                _fmt(r.get("detection_auc")),
                _fmt(r.get("detection_auc_fooled")),
                _fmt(r.get("detection_tpr")),
                _fmt(r.get("detection_fpr")),
                _fmt(_interp_tpr(roc, 0.01)) if roc else "-",
                _fmt(_interp_tpr(roc, 0.05)) if roc else "-",
                _fmt(r.get("accuracy_with_rejection")),
            ]
        )
    sec.blocks.append(Table(["cell", "operating point", "AUC", "AUC (fooled only)", "TPR", "FPR", "TPR @ FPR 1%", "TPR @ FPR 5%", "acc w/ reject"], table, right=set(range(2, 9))))
    if plotter is None:
        sec.blocks.append(Para(f"ROC plots need matplotlib: {INSTALL_HINT}.", "note"))
        return sec
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in det:
        if (_cfg(r, "metrics") or {}).get("roc"):
            groups[(r["dataset"], r["model"], r["threat"], r["attack"])].append(r)
    items = list(groups.items())
    for (d, m, t, a), cells in items[:MAX_FIGURES]:
        fig = plotter.figure(4.6, 4.2, left=0.75 / 4.6)
        ax = fig.subplots()
        for r in cells:
            pts = _cfg(r, "metrics")["roc"]
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{r['defense'][:36]} (AUC {r['detection_auc']:.3f})")[0]
            if r.get("detection_fpr") is not None and r.get("detection_tpr") is not None:
                ax.plot([r["detection_fpr"]], [r["detection_tpr"]], marker="D", ms=7, color=line.get_color(), mec="black")
                ax.annotate(_operating_label(r), (r["detection_fpr"], r["detection_tpr"]), textcoords="offset points", xytext=(6, -10), fontsize=7)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlabel("false positive rate (clean rejected)", fontsize=8)
        ax.set_ylabel("true positive rate (adversarial rejected)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(f"{a} on {d} / {m}, {t}", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        sec.blocks.append(plotter.done(fig, f"roc-{_slug(a + '-' + d + '-' + m + '-' + t)}", f"ROC: {a} on {d} / {m}, {t}"))
    if len(items) > MAX_FIGURES:
        sec.blocks.append(Para(f"{len(items) - MAX_FIGURES} more ROC plots are not drawn; the table has every cell.", "note"))
    return sec


def load_rotation(path: str | Path) -> list[dict[str, Any]]:
    """Rotation curves from a rotation study's JSON (``experiments/seed003-rotation/rotation.py --out``).

    Each entry: ``name``, ``angles``, ``curves`` (series name -> values per angle),
    ``oracle_angle`` (the median best angle chosen with the true label, or None) and
    ``accuracy`` (series name -> accuracy per angle). An unknown layout gives no entries.
    """
    data = json.loads(Path(path).read_text())
    out = []
    setup = data.get("setup", {}) if isinstance(data, dict) else {}
    for name, pair in (data.get("pairs", {}) if isinstance(data, dict) else {}).items():
        curves = {k[len("mean_curve_") :]: v for k, v in pair.items() if k.startswith("mean_curve_") and isinstance(v, list)}
        if not curves:
            continue
        n = len(next(iter(curves.values())))
        a = setup.get("angles") or [0, n - 1]
        lo, hi = (a[0], a[-1]) if len(a) >= 2 else (0, n - 1)
        angles = [lo + (hi - lo) * i / max(n - 1, 1) for i in range(n)]
        acc = {k[len("accuracy_by_angle_") :]: v for k, v in pair.items() if k.startswith("accuracy_by_angle_") and isinstance(v, list)}
        out.append({"name": name, "angles": angles, "curves": curves, "accuracy": acc, "oracle_angle": pair.get("ORACLE_best_angle_median"), "n": pair.get("n")})
    return out


def _rotation_section(sources: Sequence[Path], plotter: _Plotter | None) -> Section | None:
    studies = [(p, s) for p in sources for s in load_rotation(p)]
    if not studies:
        return None
    sec = Section("rotation", "Rotation: class probabilities against angle")
    sec.blocks.append(
        Para(
            "Mean probability of the true and the target class as each image is rotated (from "
            + ", ".join(sorted({p.name for p, _ in studies}))
            + "). The ORACLE angle is chosen with the true label: an upper bound, not a deployable defense."
        )
    )
    if plotter is None:
        rows = [[s["name"], str(s.get("n") or "-"), _fmt(s["oracle_angle"], "g")] for _, s in studies]
        sec.blocks.append(Table(["pair", "examples", "ORACLE median best angle"], rows))
        sec.blocks.append(Para(f"Rotation plots need matplotlib: {INSTALL_HINT}.", "note"))
        return sec
    labels = {"adv_p_true": "adversarial: p(true)", "adv_p_target": "adversarial: p(target)", "clean_p_true": "clean: p(true)"}
    for path, s in studies[:MAX_FIGURES]:
        fig = plotter.figure(9.0, 3.4, wspace=0.25, top=1 - 0.45 / 3.4)
        ax1, ax2 = fig.subplots(1, 2)
        for k, v in s["curves"].items():
            ax1.plot(s["angles"], v, label=labels.get(k, k))
        for k, v in s["accuracy"].items():
            ax2.plot(s["angles"], v, label=f"accuracy ({k})")
        for ax in (ax1, ax2):
            if s["oracle_angle"] is not None:
                ax.axvline(s["oracle_angle"], ls="--", color="grey", lw=1)
            ax.set_xlabel("rotation angle (degrees)")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="center right")
        if s["oracle_angle"] is not None:
            ax1.annotate(f"ORACLE median best angle {s['oracle_angle']:g}", (s["oracle_angle"], 0.03), xytext=(4, 0), textcoords="offset points", fontsize=7, color="grey")
        ax1.set_ylabel("mean probability")
        ax2.set_ylabel("accuracy")
        fig.suptitle(f"{s['name']} ({s.get('n') or '?'} examples)", fontsize=9)
        sec.blocks.append(plotter.done(fig, f"rotation-{_slug(s['name'])}", f"rotation: {s['name']} (dashed: the ORACLE best angle, chosen with the true label)"))
    return sec


def _breakdown_section(rows: list[dict[str, Any]], kind: str, plotter: _Plotter | None) -> Section | None:
    key = "per_class" if kind == "class" else "per_confidence"
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "done" and (_cfg(r, "metrics") or {}).get(key):
            groups[(r["dataset"], r["model"], r["defense"], r["threat"])].append(r)
    if not groups:
        return None
    items = list(groups.items())
    if kind == "class":
        # imbalanced datasets (seed 000) first: that is where per-class numbers matter most
        items.sort(key=lambda kv: not _cfg(kv[1][0], "dataset_config").get("class_ratios"))
        sec = Section("per-class", "Per class")
        sec.blocks.append(Para("Clean and robust accuracy per true class (class imbalance: `class_ratios` in the dataset table), one bar per attack."))
        metric, order = "robust_accuracy", None
    else:
        sec = Section("per-confidence", "Per clean-confidence bucket")
        sec.blocks.append(Para("Top-1 error after the attack per bucket of the clean top-1 probability (High >= 30%, Medium 15-30%, Low < 15%), one bar per attack; the bucket's count is under its name."))
        metric, order = "top1_error", ["high", "medium", "low"]
    for (d, m, df, t), cells in items[:MAX_FIGURES]:
        cells = cells[:6]
        first = _cfg(cells[0], "metrics")[key]
        cats = order or sorted(first, key=lambda k: int(k) if k.isdigit() else 0)
        cats = [c for c in cats if c in first]
        if plotter is None:
            head = [kind] + (["clean acc"] if kind == "class" else ["count"]) + [r["attack"] for r in cells]
            body = []
            for c in cats:
                lead = _fmt(first[c].get("clean_accuracy")) if kind == "class" else str(first[c].get("count", "-"))
                body.append([c, lead] + [_fmt(_cfg(r, "metrics")[key].get(c, {}).get(metric)) for r in cells])
            sec.blocks.append(Para(f"{d} / {m} / {df} / {t}: {metric.replace('_', ' ')}", "h3"))
            sec.blocks.append(Table(head, body, right=set(range(1, len(head)))))
            continue
        import numpy as np

        series = ([("clean", [first[c].get("clean_accuracy") for c in cats])] if kind == "class" else []) + [
            (r["attack"], [_cfg(r, "metrics")[key].get(c, {}).get(metric) for c in cats]) for r in cells
        ]
        w = min(11.0, max(5.5, 0.12 * len(cats) * len(series) + 4))
        fig = plotter.figure(w, 3.4, right=1 - 2.3 / w, bottom=(0.55 if kind == "class" else 0.75) / 3.4)
        ax = fig.subplots()
        width = 0.8 / len(series)
        xs = np.arange(len(cats))
        for i, (label, vals) in enumerate(series):
            ax.bar(xs + i * width - 0.4 + width / 2, [np.nan if v is None else v for v in vals], width, label=label[:48])
        ticks = cats if kind == "class" else [f"{c}\n(n={first[c].get('count', '?')})" for c in cats]
        ax.set_xticks(xs, ticks, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy" if kind == "class" else "top-1 error after the attack")
        ax.set_title(f"{d} / {m} / {df}, {t}", fontsize=9)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(axis="y", alpha=0.3)
        sec.blocks.append(plotter.done(fig, f"{kind}-{_slug(d + '-' + m + '-' + df + '-' + t)}", f"per {kind}: {d} / {m} / {df}, {t}"))
    if plotter is None:
        sec.blocks.append(Para(f"Bar plots need matplotlib: {INSTALL_HINT}.", "note"))
    if len(items) > MAX_FIGURES:
        sec.blocks.append(Para(f"{len(items) - MAX_FIGURES} more groups are not shown; `advx results DB --breakdown {kind}` lists every cell.", "note"))
    return sec


def _gallery_section(rows: list[dict[str, Any]], store: Any) -> Section | None:
    have = store.cells_with_examples()
    chosen: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("status") != "done" or r["cell_key"] not in have:
            continue
        # one cell per attack: the white-box one where there is one
        prev = chosen.get(r["attack"])
        if prev is None or (prev["threat"] != "white-box" and r["threat"] == "white-box"):
            chosen[r["attack"]] = r
    if not chosen:
        return None
    sec = Section("gallery", "Gallery: clean and adversarial examples")
    sec.blocks.append(
        Para(
            "Per attack, the first kept examples of one cell: the clean input, its adversarial version and the "
            "perturbation amplified to the full range (grey: unchanged). Labels: true class, the prediction on the "
            "clean and on the adversarial input, with its confidence. `[matrix] keep_examples` sets how many are kept."
        )
    )
    for a, r in list(chosen.items())[:MAX_GALLERY]:
        ex = store.examples(r["cell_key"])
        if ex is None:
            continue
        grid = []
        amp_seen = []
        for i in range(min(GALLERY_EXAMPLES, len(ex["idx"]))):
            c, adv, pert, amp = example_images(ex["x"][i], ex["x_adv"][i])
            amp_seen.append(amp)
            true = int(ex["label"][i]) if "label" in ex else "?"
            cap_c = f"true {true}; clean: {int(ex['clean_pred'][i])} ({float(ex['clean_conf'][i]):.2f})" if "clean_pred" in ex else f"example {int(ex['idx'][i])}"
            cap_a = f"adversarial: {int(ex['adv_pred'][i])} ({float(ex['adv_conf'][i]):.2f})" if "adv_pred" in ex else "adversarial"
            linf = f"; Linf {float(ex['linf'][i]):.3f}" if "linf" in ex else ""
            grid.append([(c, cap_c), (adv, cap_a), (pert, f"perturbation x{amp:.1f}{linf}")])
        sec.blocks.append(Gallery(f"{a} ({r['dataset']} / {r['model']} / {r['defense']}, {r['threat']})", grid))
    if len(chosen) > MAX_GALLERY:
        sec.blocks.append(Para(f"{len(chosen) - MAX_GALLERY} more attacks have kept examples; `advx results DB --examples DIR` exports them all.", "note"))
    return sec


def _cost_section(rows: list[dict[str, Any]], trainings: list[dict[str, Any]], plotter: _Plotter | None) -> Section | None:
    done = [r for r in rows if r.get("status") == "done"]
    if not done:
        return None
    sec = Section("cost", "Cost")
    sec.blocks.append(
        Para(
            "Per attack, the mean over the cells that crafted their examples (cells that reused another cell's "
            "examples are counted there): crafting seconds and forward/backward passes per example, counted by the "
            "kernel. Training and fitting are apart, below."
        )
    )
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        if r.get("attack_seconds") is not None:
            by[r["attack"]].append(r)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    body = []
    for a, rs in by.items():
        per_ex = [r["attack_seconds"] / max(r.get("n") or 1, 1) for r in rs]
        body.append(
            [
                a,
                str(len(rs)),
                _fmt(mean(per_ex) * 1000, ".3f") if per_ex else "-",
                _fmt(mean([r["forwards_per_sample"] for r in rs if r.get("forwards_per_sample") is not None]), ".1f"),
                _fmt(mean([r["backwards_per_sample"] for r in rs if r.get("backwards_per_sample") is not None]), ".1f"),
                _fmt(mean([r["images_per_second"] for r in rs if r.get("images_per_second") is not None]), ".0f"),
                _fmt(sum(r.get("seconds") or 0.0 for r in rs), ".2f"),
            ]
        )
    if body:
        sec.blocks.append(Table(["attack", "cells", "ms / example", "forwards / example", "backwards / example", "examples / s", "cell seconds (total)"], body, right=set(range(1, 7))))
    trained = [t for t in trainings if not t.get("cached")]
    if trainings:
        total = sum(t.get("seconds") or 0.0 for t in trained)
        sec.blocks.append(Para(f"Training and fitting: {len(trained)} trained or fitted in {total:.1f} s, {len(trainings) - len(trained)} loaded from the cache (not in the cells' seconds).", "h3"))
        shown = sorted(trainings, key=lambda t: -(t.get("seconds") or 0.0))[:30]
        sec.blocks.append(Table(["kind", "what", "seconds", "cached"], [[str(t.get("kind")), str(t.get("description")), _fmt(t.get("seconds"), ".2f"), "yes" if t.get("cached") else "no"] for t in shown], right={2}))
        if len(trainings) > 30:
            sec.blocks.append(Para(f"{len(trainings) - 30} shorter trainings not listed.", "note"))
    return sec


def _provenance_section(rows: list[dict[str, Any]], store: Any, spec_name: str | None) -> Section:
    sec = Section("provenance", "Provenance")

    def distinct(col: str) -> str:
        vals = sorted({str(r.get(col)) for r in rows if r.get(col) is not None})
        return ", ".join(vals) if vals else "-"

    meta = store.meta()
    specs = [spec_name] if spec_name else store.spec_names()
    spec_lines = []
    for s in specs:
        info = json.loads(meta.get(f"spec:{s}", "null") or "null") or {}
        hashes = sorted({r.get("spec_hash") for r in rows if r.get("spec_name") == s and r.get("spec_hash")})
        where = info.get("path") or "spec file not recorded"
        commit = info.get("git_commit") or "not known"
        spec_lines.append(f"{s} (hash {', '.join(hashes) or '-'}; file {where}; git commit {commit})")
    started = [r["started"] for r in rows if r.get("started")]
    finished = [r["finished"] for r in rows if r.get("finished")]
    body = [
        ["results file", str(store.path)],
        ["specs", "; ".join(spec_lines) or "-"],
        ["cells", f"{len(rows)}: {sum(r.get('status') == 'done' for r in rows)} done, {sum(r.get('status') == 'failed' for r in rows)} failed, {sum(r.get('status') == 'not-applicable' for r in rows)} not applicable"],
        ["advx", distinct("advx_version")],
        ["torch", distinct("torch_version")],
        ["device", distinct("device")],
        ["seeds", distinct("seed")],
        ["run", f"{min(started) if started else '-'} to {max(finished) if finished else '-'} (UTC)"],
        ["report written", datetime.now(timezone.utc).isoformat(timespec="seconds")],
    ]
    sec.blocks.append(Table(["", ""], body))
    bad = [r for r in rows if r.get("status") in ("failed", "not-applicable")]
    if bad:
        sec.blocks.append(Para(f"Failed and not-applicable cells ({len(bad)}):", "h3"))
        sec.blocks.append(
            Table(
                ["cell", "status", "error or reason"],
                [[_place(r), str(r.get("status")), str(r.get("error") or r.get("reason") or "")[:400]] for r in bad[:200]],
            )
        )
        if len(bad) > 200:
            sec.blocks.append(Para(f"{len(bad) - 200} more not listed; `advx results DB` lists them all.", "note"))
    return sec


# -- assembling -------------------------------------------------------------------------------------


def build_report(
    store: Any,
    spec_name: str | None = None,
    fmt: str = "html",
    rotation: Iterable[str | Path] = (),
    tables_only: bool = False,
    plots: bool | None = None,
) -> Report:
    """The report of ``store`` (a ``ResultStore``), for ``fmt`` ``html`` or ``md``.

    ``plots`` forces plots on or off (default: on where matplotlib is installed);
    ``tables_only`` keeps the tables and text (no plots, no gallery).
    """
    from .flags import sanity_flags

    rows = store.cells(spec_name, decode=True)
    use_plots = (have_matplotlib() if plots is None else plots) and not tables_only
    plotter = _Plotter(fmt) if use_plots else None
    flags = sanity_flags(rows, store.samples)
    sections: list[Section] = []
    if not rows:
        sections.append(Section("matrix", "No cells", [Para("The results file holds no cells" + (f" of spec {spec_name!r}." if spec_name else "."))]))
    else:
        sections.append(_matrix_section(rows, store, fmt, plotter))
        builders: list[Callable[[], Section | None]] = [
            lambda: _eps_section(rows, flags, plotter, tables_only),
            lambda: _roc_section(rows, plotter),
            lambda: _rotation_section(rotation_sources(store.path, rotation), plotter),
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


def rotation_sources(db: Path, extra: Iterable[str | Path]) -> list[Path]:
    """Rotation study JSON files: those given, and ``*rotation*.json`` beside the results file."""
    out = [Path(p) for p in extra]
    folder = Path(db).resolve().parent
    for p in sorted(folder.glob("*rotation*.json")):
        if p.resolve() not in {q.resolve() for q in out} and p.stat().st_size < 20_000_000:
            out.append(p)
    return out


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
    rotation: Iterable[str | Path] = (),
    tables_only: bool = False,
    plots: bool | None = None,
) -> Path:
    """Write the report of results file ``db`` to ``out`` and return its path.

    ``fmt`` is ``html`` (one self-contained file) or ``md`` (Markdown, PNG images in the
    folder ``<out stem>-images`` beside it); by default from ``out``'s extension.
    ``spec_name`` limits it to one spec's cells; ``rotation`` adds rotation-study JSON
    files (those named ``*rotation*.json`` beside ``db`` are read anyway); ``tables_only``
    leaves out plots and images; ``plots=False`` renders as if matplotlib were missing.
    """
    from .errors import ConfigError
    from .results import ResultStore

    out = Path(out)
    if fmt is None:
        fmt = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}.get(out.suffix.lower(), "html")
    if fmt not in ("html", "md"):
        raise ConfigError(f"unknown report format {fmt!r}; use html or md")
    if out.parent and not out.parent.exists():
        raise ConfigError(f"report path {str(out)!r}: folder {str(out.parent)!r} does not exist")
    with ResultStore(db, readonly=True) as store:
        report = build_report(store, spec_name, fmt, rotation, tables_only, plots)
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


def export_examples(db: str | Path, folder: str | Path, spec_name: str | None = None) -> tuple[int, int]:
    """Write every kept example of ``db`` as PNG files under ``folder``; return (cells, examples).

    ``folder/<cell_key>/<idx>-clean.png``, ``-adversarial.png`` and ``-perturbation.png``
    (amplified; grey is unchanged), and ``folder/examples.csv`` naming each file's cell,
    true label, predictions and confidences.
    """
    import csv

    from .errors import ConfigError
    from .results import ResultStore

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--examples {str(folder)!r}: cannot create the folder ({exc.strerror})") from None
    n_cells = n_examples = 0
    with ResultStore(db, readonly=True) as store, open(folder / "examples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell_key", *PLACE, "idx", "label", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "linf", "l2", "clean", "adversarial", "perturbation", "amplification"])
        have = store.cells_with_examples()
        for r in store.cells(spec_name):
            if r["cell_key"] not in have:
                continue
            ex = store.examples(r["cell_key"])
            if ex is None:
                continue
            n_cells += 1
            sub = folder / r["cell_key"]
            sub.mkdir(exist_ok=True)
            for i in range(len(ex["idx"])):
                idx = int(ex["idx"][i])
                c, a, p, amp = example_images(ex["x"][i], ex["x_adv"][i])
                names = [f"{r['cell_key']}/{idx}-{k}.png" for k in ("clean", "adversarial", "perturbation")]
                for name, data in zip(names, (c, a, p)):
                    (folder / name).write_bytes(data)
                get = lambda k, cast: cast(ex[k][i]) if k in ex else ""  # noqa: E731
                w.writerow([r["cell_key"], *(r.get(k) for k in PLACE), idx, get("label", int), get("clean_pred", int), get("clean_conf", float), get("adv_pred", int), get("adv_conf", float), get("linf", float), get("l2", float), *names, f"{amp:.3f}"])
                n_examples += 1
    return n_cells, n_examples
