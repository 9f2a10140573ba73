"""The rotation study's report section (seed 003): class probabilities against the rotation angle.

The study's script (``experiments/seed003-rotation/rotation.py --out FILE.json``) writes its
curves as JSON; this plugin contributes the report section that draws them, through the
``advx_report_sections`` hook, so the kernel's report knows nothing of the study's keys.
A file is read when attached (``advx report DB --attach FILE.json``) or when it lies
beside the results file as ``*rotation*.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from advx import INSTALL_HINT, ReportPara, ReportSection, ReportTable, SectionContext, hookimpl

#: at most this many rotation figures (the table lists every study)
MAX_FIGURES = 8


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


@hookimpl
def advx_report_sections():
    return [rotation_section]


def rotation_section(ctx: SectionContext) -> ReportSection | None:
    """The rotation study's curves, from its JSON files (attached, or beside the results file)."""
    sources, plotter = rotation_sources(ctx.store.path, ctx.attachments), ctx.plotter
    studies = [(p, s) for p in sources for s in load_rotation(p)]
    if not studies:
        return None
    sec = ReportSection("rotation", "Rotation: class probabilities against angle")
    sec.blocks.append(
        ReportPara(
            "Mean probability of the true and the target class as each image is rotated (from "
            + ", ".join(sorted({p.name for p, _ in studies}))
            + "). The ORACLE angle is chosen with the true label: an upper bound, not a deployable defense."
        )
    )
    if plotter is None:
        rows = [[s["name"], str(s.get("n") or "-"), "-" if s["oracle_angle"] is None else format(s["oracle_angle"], "g")] for _, s in studies]
        sec.blocks.append(ReportTable(["pair", "examples", "ORACLE median best angle"], rows))
        sec.blocks.append(ReportPara(f"Rotation plots need matplotlib: {INSTALL_HINT}.", "note"))
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
        sec.blocks.append(plotter.done(fig, "rotation-" + re.sub(r"[^a-z0-9]+", "-", s["name"].lower()).strip("-"), f"rotation: {s['name']} (dashed: the ORACLE best angle, chosen with the true label)"))
    return sec


def rotation_sources(db: Path, extra: Iterable[str | Path]) -> list[Path]:
    """Rotation study JSON files: those attached whose content is a rotation study, and
    ``*rotation*.json`` beside the results file."""
    out = [Path(p) for p in extra if Path(p).suffix == ".json"]
    folder = Path(db).resolve().parent
    for p in sorted(folder.glob("*rotation*.json")):
        if p.resolve() not in {q.resolve() for q in out} and p.stat().st_size < 20_000_000:
            out.append(p)
    return out
