"""The detection section: ROC curves and operating points of detectors."""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from advx.report.blocks import INSTALL_HINT, MAX_FIGURES, Para, Section, Table
from advx.report.common import _cfg, _fmt, _place
from advx.report.plots import LEGEND_FONT, _Plotter, _slug


def _operating_label(row: Any, registry: Any) -> str:
    """The detector's operating point as its defense names it (``Defense.operating_point``), else "threshold"."""
    cfg = dict(row.defense_config)
    try:
        cls = registry.get("defense", cfg.get("name"))
    except Exception:  # noqa: BLE001 - a defense no longer installed: the generic label
        return "threshold"
    return cls.operating_point(cfg) or "threshold"


def _interp_tpr(points: list[list[float]], fpr: float) -> float:
    for (f0, t0), (f1, t1) in zip(points, points[1:]):
        if f0 <= fpr <= f1:
            return t0 if f1 == f0 else t0 + (t1 - t0) * (fpr - f0) / (f1 - f0)
    return points[-1][1]


def _roc_section(rows: list[dict[str, Any]], plotter: _Plotter | None, registry: Any) -> Section | None:
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
        roc = (_cfg(r, "details") or {}).get("roc")
        table.append(
            [
                _place(r),
                _operating_label(r, registry),
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
        if (_cfg(r, "details") or {}).get("roc"):
            groups[(r["dataset"], r["model"], r["threat"], r["attack"])].append(r)
    items = list(groups.items())
    for (d, m, t, a), cells in items[:MAX_FIGURES]:
        fig = plotter.figure(4.6, 4.2, left=0.75 / 4.6)
        ax = fig.subplots()
        for r in cells:
            pts = _cfg(r, "details")["roc"]
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{r['defense'][:36]} (AUC {r['detection_auc']:.3f})", color=plotter.color("defense", r["defense"]))[0]
            if r.get("detection_fpr") is not None and r.get("detection_tpr") is not None:
                ax.plot([r["detection_fpr"]], [r["detection_tpr"]], marker="D", ms=7, color=line.get_color(), mec="black")
                ax.annotate(_operating_label(r, registry), (r["detection_fpr"], r["detection_tpr"]), textcoords="offset points", xytext=(6, -10), fontsize=7)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlabel("false positive rate (clean rejected)", fontsize=8)
        ax.set_ylabel("true positive rate (adversarial rejected)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(f"{a} on {d} / {m}, {t}", fontsize=9)
        ax.legend(fontsize=LEGEND_FONT, loc="lower right")
        sec.blocks.append(plotter.done(fig, f"roc-{_slug(a + '-' + d + '-' + m + '-' + t)}", f"ROC: {a} on {d} / {m}, {t}"))
    if len(items) > MAX_FIGURES:
        sec.blocks.append(Para(f"{len(items) - MAX_FIGURES} more ROC plots are not drawn; the table has every cell.", "note"))
    return sec
