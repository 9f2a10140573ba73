"""The sections every report has: the matrix, eps sweeps, breakdowns, the gallery, cost and provenance."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any
from advx.report.blocks import GALLERY_EXAMPLES, Gallery, INSTALL_HINT, MAX_FIGURES, MAX_GALLERY, Para, Section, Table
from advx.analysis.intervals import proportion_interval, with_interval
from advx.analysis.groups import MODEL_PARTS, distinct_labels, robust_share, worst_case_groups
from advx.report.common import _cfg, _flags_of, _fmt, _heat, _place
from advx.report.images import example_images
from advx.report.plots import LEGEND_FONT, _Plotter, _slug


def _matrix_section(rows: list[dict[str, Any]], store: Any, fmt: str, plotter: _Plotter | None, cis: dict[str, dict[str, tuple[float, float]]] | None = None) -> Section:
    sec = Section("matrix", "Robust accuracy: the matrix")
    rkeys: list[str] = []
    ckeys: list[str] = []
    grid: dict[tuple[str, str], dict[str, Any]] = {}
    clean: dict[str, list[float]] = defaultdict(list)
    clean_ci: dict[str, tuple[float, float] | None] = {}
    if cis is None:
        cis = store.intervals(rows, metrics=("clean_accuracy", "robust_accuracy"))
    # rows and columns by identity: two models of one label (trained differently) are two rows
    rlabel = distinct_labels(rows, MODEL_PARTS, lambda r: _place(r, ("dataset", "model", "defense")))
    clabel = distinct_labels(rows, ("threat", "attack", "seed"), lambda r: _place(r, ("threat", "attack")))
    for r in rows:
        rk, ck = rlabel[r.cell_key], clabel[r.cell_key]
        if rk not in rkeys:
            rkeys.append(rk)
        if ck not in ckeys:
            ckeys.append(ck)
        grid[(rk, ck)] = r
        if r.get("status") == "done" and r.get("clean_accuracy") is not None:
            clean[rk].append(r["clean_accuracy"])
            clean_ci.setdefault(rk, cis.get(r.cell_key, {}).get("clean_accuracy"))
    sec.blocks.append(
        Para(
            "Rows: dataset / model / defense; columns: threat model / attack. Each cell is the robust accuracy "
            "(accuracy on the adversarial examples); the clean column is the accuracy on the clean examples "
            "(a range where the cells of a row evaluated different examples). In brackets: the 95% interval "
            "of each number, a percentile bootstrap over the evaluated examples (1,000 resamples); two numbers "
            "whose intervals overlap differ within noise."
        )
    )
    headers = ["dataset / model / defense", "clean"] + ckeys
    body, colors = [], []
    for rk in rkeys:
        cs = clean.get(rk, [])
        lo, hi = (min(cs), max(cs)) if cs else (None, None)
        line = [rk, "-" if lo is None else (with_interval(_fmt(lo), clean_ci.get(rk)) if hi - lo < 1e-9 else f"{lo:.4f}-{hi:.4f}")]
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
            elif r.get("status") == "partial":  # some shards stored, no numbers yet
                line.append("partial")
                col.append("#f4f4f4")
            else:
                line.append(with_interval(_fmt(r.get("robust_accuracy")), cis.get(r.cell_key, {}).get("robust_accuracy")))
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
    multi = worst_case_groups(rows)
    if multi:
        sec.blocks.append(Para("Per-example worst case: an example counts as robust only if no attack of the same threat constraint (norm and eps) fooled it. In brackets: 95% bootstrap intervals over the examples.", "h3"))
        wrows = []
        for place, c, cells in multi:
            robust = store.worst_case_examples(cells)
            worst = robust_share(robust)
            best = min(cells, key=lambda r: r.robust_accuracy)
            best_ci = cis.get(best.cell_key, {}).get("robust_accuracy")
            wrows.append([
                place, c, str(len(cells)),
                f"{with_interval(_fmt(best.robust_accuracy), best_ci)} ({best.attack})",
                with_interval(_fmt(worst), proportion_interval(list(robust.values()))),
            ])
        sec.blocks.append(Table(["dataset / model / defense / threat", "constraint", "attacks", "best single attack", "worst case"], wrows, right={2, 3, 4}))
    _optimality_blocks(sec, rows, store)
    return sec


def _optimality_blocks(sec: Section, rows: list[Any], store: Any) -> None:
    """AttackBench's optimality of each attack, where cells sweep eps or run minimum-norm attacks."""
    from advx.analysis.optimality import OPTIMALITY_HEADERS, optimality_groups, optimality_table

    body, notes = optimality_table(optimality_groups(rows, store.samples))
    if not body:
        return
    sec.blocks.append(Para("Optimality of the attacks (AttackBench, Cinà et al. 2025).", "h3"))
    sec.blocks.append(Para(
        "Per attack, the mean robust accuracy over the budgets from 0 to the largest (the area under its robust-accuracy "
        "curve over that range) beside the same for the per-example best: an example counts as robust at a budget only "
        "if no attack of the group broke it there or at a smaller budget. Gap: the difference; optimality: best over "
        "attack (1: no attack of the group does better anywhere). Computed from the per-example records."
    ))
    sec.blocks.append(Table(list(OPTIMALITY_HEADERS), body, right=set(range(4, len(OPTIMALITY_HEADERS)))))
    for note in notes:
        sec.blocks.append(Para(f"Left out: {note}"))


def _eps_tables(sweeps: dict[tuple, list[dict[str, Any]]], width: int = 8, cis: dict[str, dict[str, tuple[float, float]]] | None = None) -> list[Any]:
    """The eps sweeps as tables: per attack, rows eps (clean first), columns the places it ran on.

    Place parts shared by every column go into the table's title, so columns name only what
    differs (the shape of the tables in docs/reproductions.md). With ``cis`` (by cell key) each
    accuracy carries its 95% interval.
    """
    cis = cis or {}

    def cell_text(r: dict[str, Any] | None, metric: str) -> str:
        return "" if r is None else with_interval(_fmt(r.get(metric)), cis.get(r.cell_key, {}).get(metric))

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
        clean: dict[str, dict[str, Any]] = {}
        for r in cells:
            col = " / ".join(str(r[p]) for p in varying)
            if col not in places:
                places.append(col)
            at[(col, _cfg(r, "attack_config")["eps"])] = r
            if r.get("clean_accuracy") is not None:
                clean.setdefault(col, r)
        epss = sorted({e for _, e in at})
        extra = {k: v for k, v in json.loads(rest).items() if k not in ("name", "label_mode") or (k == "label_mode" and v != "true")}
        title = f"{name}{' ' + json.dumps(extra) if extra else ''}: robust accuracy" + (f" ({', '.join(shared)})" if shared else "")
        for start in range(0, len(places), width):
            if shown >= MAX_FIGURES:
                skipped += 1
                continue
            cols = places[start : start + width]
            body = [["clean"] + [cell_text(clean.get(c), "clean_accuracy") or "-" for c in cols]]
            body += [[f"{e:g}"] + [cell_text(at.get((c, e)), "robust_accuracy") for c in cols] for e in epss]
            out.append(Para(title + (f" [{start // width + 1}]" if len(places) > width else ""), "h3"))
            out.append(Table(["eps"] + cols, body, right=set(range(len(cols) + 1))))
            shown += 1
    if skipped:
        out.append(Para(f"{skipped} more eps tables are not shown (at most {MAX_FIGURES}); the matrix has every number.", "note"))
    return out


def _eps_section(rows: list[dict[str, Any]], flags: list[Any], plotter: _Plotter | None, tables_only: bool = False, cis: dict[str, dict[str, tuple[float, float]]] | None = None) -> Section | None:
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
                "One plot per attack (all its settings but eps and step size equal), one line per defense, its shaded band the 95% bootstrap interval over the examples; a red ring marks a point a sanity flag names."
                if plotter is not None
                else "One table per attack (all its settings but eps and step size equal): robust accuracy per eps, with its 95% bootstrap interval over the examples in brackets."
            )
        )
    if sweeps and plotter is None:
        sec.blocks += _eps_tables(sweeps, cis=cis)
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
                ax.plot(xs, ys, marker="o", ms=4, label=defense[:40], color=plotter.color("defense", defense))
                bands = [(cis or {}).get(r.cell_key, {}).get("robust_accuracy") for r in rs]
                if all(b is not None for b in bands):  # the 95% interval over the examples, as a band
                    ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], alpha=0.15, lw=0, color=plotter.color("defense", defense))
                for x_, y_, r in zip(xs, ys, rs):
                    if _flags_of(r, flags):
                        ax.plot([x_], [y_], marker="o", ms=12, mfc="none", mec="red", mew=2)
            ax.set_xlabel(f"eps ({_cfg(cells[0], 'attack_traits').get('norm', '')})")
            ax.set_ylabel("robust accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{name} on {d} / {m}, {t}", fontsize=9)
            ax.legend(fontsize=LEGEND_FONT, title="defense", title_fontsize=LEGEND_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            sec.blocks.append(plotter.done(fig, f"eps-{_slug(name + '-' + d + '-' + m + '-' + t)}", f"{name}: {d} / {m}, {t}"))
        if len(items) > MAX_FIGURES:
            sec.blocks.append(Para(f"{len(items) - MAX_FIGURES} more eps sweeps are not drawn (at most {MAX_FIGURES} plots per section); their numbers are in the matrix.", "note"))
    if flags:
        sec.blocks.append(Para(f"Sanity flags ({len(flags)}): places to look, not verdicts (see advx.analysis.checks).", "h3"))
        sec.blocks.append(Table(["check", "message"], [[f.check, f.message] for f in flags]))
    else:
        sec.blocks.append(Para("Sanity checks ran on the finished cells: none fired."))
    return sec


def _breakdown_section(rows: list[dict[str, Any]], kind: str, plotter: _Plotter | None) -> Section | None:
    key = "per_class" if kind == "class" else "per_confidence"
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "done" and (_cfg(r, "details") or {}).get(key):
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
        # every attack of the group: a chart that drops some would hide the attacks that broke it
        first = _cfg(cells[0], "details")[key]
        cats = order or sorted(first, key=lambda k: int(k) if k.isdigit() else 0)
        cats = [c for c in cats if c in first]
        if plotter is None:
            head = [kind] + (["clean acc"] if kind == "class" else ["count"]) + [r["attack"] for r in cells]
            body = []
            for c in cats:
                lead = _fmt(first[c].get("clean_accuracy")) if kind == "class" else str(first[c].get("count", "-"))
                body.append([c, lead] + [_fmt(_cfg(r, "details")[key].get(c, {}).get(metric)) for r in cells])
            sec.blocks.append(Para(f"{d} / {m} / {df} / {t}: {metric.replace('_', ' ')}", "h3"))
            sec.blocks.append(Table(head, body, right=set(range(1, len(head)))))
            continue
        import numpy as np

        series = ([("clean", [first[c].get("clean_accuracy") for c in cats])] if kind == "class" else []) + [
            (r["attack"], [_cfg(r, "details")[key].get(c, {}).get(metric) for c in cats]) for r in cells
        ]
        legend_w = 0.6 + 0.075 * max(len(label[:48]) for label, _ in series)  # inches the legend's longest label takes
        w = min(14.0, max(5.5, 0.12 * len(cats) * len(series) + 2.5 + legend_w))
        h = max(3.4, 0.8 + 0.2 * len(series))  # a legend of many attacks stays inside the figure
        fig = plotter.figure(w, h, right=1 - (legend_w + 0.2) / w, bottom=(0.55 if kind == "class" else 0.75) / h, top=1 - 0.35 / h)
        ax = fig.subplots()
        width = 0.8 / len(series)
        xs = np.arange(len(cats))
        for i, (label, vals) in enumerate(series):
            color = "#b0b0b0" if i == 0 and kind == "class" else plotter.color("attack", label)  # clean: grey
            ax.bar(xs + i * width - 0.4 + width / 2, [np.nan if v is None else v for v in vals], width, label=label[:48], color=color)
        ticks = cats if kind == "class" else [f"{c}\n(n={first[c].get('count', '?')})" for c in cats]
        ax.set_xticks(xs, ticks, fontsize=LEGEND_FONT - 1)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy" if kind == "class" else "top-1 error after the attack")
        ax.set_title(f"{d} / {m} / {df}, {t}", fontsize=9)
        ax.legend(fontsize=LEGEND_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
        sec.blocks.append(Para(f"Training and fitting: {len(trained)} trained or fitted in {total:.1f} s, {len(trainings) - len(trained)} loaded from the cache or a model file (not in the cells' seconds).", "h3"))
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
        ["cells", f"{len(rows)}: {sum(r.get('status') == 'done' for r in rows)} done, {sum(r.get('status') == 'failed' for r in rows)} failed, {sum(r.get('status') == 'not-applicable' for r in rows)} not applicable"
                  + (f", {n} partial (shards missing)" if (n := sum(r.get('status') == 'partial' for r in rows)) else "")],
        ["advx", distinct("advx_version")],
        ["torch", distinct("torch_version")],
        ["device", distinct("device")],
        ["seeds", distinct("seed")],
        ["run", f"{min(started) if started else '-'} to {max(finished) if finished else '-'} (UTC)"],
        ["report written", datetime.now(timezone.utc).isoformat(timespec="seconds")],
    ]
    sec.blocks.append(Table(["", ""], body))
    bad = [r for r in rows if r.get("status") in ("failed", "not-applicable", "partial")]
    if bad:
        sec.blocks.append(Para(f"Failed, not-applicable and partial cells ({len(bad)}):", "h3"))
        sec.blocks.append(
            Table(
                ["cell", "status", "error or reason"],
                [[_place(r), str(r.get("status")), str(r.get("error") or r.get("reason") or _partial(r))[:400]] for r in bad[:200]],
            )
        )
        if len(bad) > 200:
            sec.blocks.append(Para(f"{len(bad) - 200} more not listed; `advx results DB` lists them all.", "note"))
    return sec


def _partial(r: Any) -> str:
    """What a partial cell holds: its stored shards (a sharded cell not finished yet)."""
    got = ((r.get("details") or {}) if r.get("status") == "partial" else {}).get("shards") or {}
    return f"{got['stored']} of {got['count']} shards stored; run the spec again for the others" if got else ""
