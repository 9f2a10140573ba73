"""``docs/reproductions.md`` quotes the stored results (``experiments/results/``) through
``experiments/reproductions.py``: the document and the runs cannot drift apart."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("reproductions", ROOT / "experiments" / "reproductions.py")
rep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rep)


def test_every_table_of_the_document_equals_the_stored_results():
    doc = rep.DOC.read_text()
    tables = rep.load_tables()
    assert tables, "reproductions.toml declares no table"
    assert doc.count("<!-- table: ") == len(tables)
    assert rep.rewrite(doc, tables) == doc, "run: python experiments/reproductions.py"


CELLS = [
    {"status": "done", "spec_name": "s", "defense": "none", "threat": "white-box", "attack": "fgsm(eps=0.3)", "robust_accuracy": 0.25, "clean_accuracy": 0.99},
    {"status": "done", "spec_name": "s", "defense": "none", "threat": "white-box", "attack": "bim(eps=0.2)", "robust_accuracy": 0.01, "clean_accuracy": 0.99},
    {"status": "failed", "spec_name": "s", "defense": "none", "threat": "white-box", "attack": "pgd", "robust_accuracy": None},
]


@pytest.fixture
def results(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(CELLS))
    return tmp_path


def table(rows, **where):
    return {"id": "t", "columns": ["", "paper", "ours"], "rows": rows, "where": {"results": "s", **where}}


def test_a_selector_renders_the_one_matching_cell_and_its_metric(results):
    t = table([["FGSM", "0.38", {"attack": "fgsm(eps=0.3)"}], ["clean", "0.99", {"attack": "bim(eps=0.2)", "metric": "clean_accuracy", "fmt": ".2f"}],
               ["both", "-", [{"attack": "fgsm(eps=0.3)", "fmt": ".3f"}, {"attack": "bim(eps=0.2)", "fmt": ".3f"}]]])
    out = rep.render_table(t, results)
    assert out.splitlines()[:5] == ["|  | paper | ours |", "|---|---:|---:|", "| FGSM | 0.38 | 0.2500 (no interval) |",
                                    "| clean | 0.99 | 0.99 (no interval) |", "| both | - | 0.250 (no interval) / 0.010 (no interval) |"]
    assert out.splitlines()[-1] == "95% intervals in brackets: " + rep.METHODS["none"] + "."  # these cells have no n


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"attack": "pgd"}, "no cell match"),  # failed cells are not quoted
        ({"threat": "white-box"}, "2 cells match"),
        ({"attack": "fgsm(eps=0.3)", "metric": "nope"}, "no column 'nope'"),
        ({"atack": "fgsm(eps=0.3)"}, "unknown selector key"),
    ],
)
def test_a_selector_that_does_not_name_one_cell_fails_naming_the_table(results, entry, message):
    with pytest.raises(rep.ReproductionError, match=message) as e:
        rep.render_table(table([["x", "y", entry]]), results)
    assert "table t" in str(e.value)


def test_missing_results_file_and_undeclared_or_unmarked_tables_are_errors(results):
    with pytest.raises(rep.ReproductionError, match="advx results DB --spec other"):
        rep.render_table({"id": "t", "columns": ["a"], "rows": [[{"results": "other"}]]}, results)
    t = {"t": table([["FGSM", "0.38", {"attack": "fgsm(eps=0.3)"}]])}
    with pytest.raises(rep.ReproductionError, match="does not mark"):
        rep.rewrite("no tables here", t, results)
    with pytest.raises(rep.ReproductionError, match="does not declare"):
        rep.rewrite("<!-- table: u -->\n<!-- /table -->", t, results)
    doc = "before\n<!-- table: t -->\nstale\n<!-- /table -->\nafter"
    note = "95% intervals in brackets: " + rep.METHODS["none"] + "."
    assert rep.rewrite(doc, t, results) == (
        f"before\n<!-- table: t -->\n|  | paper | ours |\n|---|---:|---:|\n| FGSM | 0.38 | 0.2500 (no interval) |\n\n{note}\n<!-- /table -->\nafter"
    )


def test_a_path_selector_reads_a_studys_own_json(results):
    (results / "study.json").write_text(json.dumps({"pairs": {"1->8": {"table": [{"p": 0.9612}]}}}))
    t = {"id": "t", "columns": ["p %"], "rows": [[{"results": "study", "path": ["pairs", "1->8", "table", 0, "p"], "scale": 100, "fmt": ".1f"}]]}
    assert rep.render_table(t, results).splitlines()[-1] == "| 96.1 |"
    t["rows"] = [[{"results": "study", "path": ["pairs", "6->9"]}]]
    with pytest.raises(rep.ReproductionError, match="has no"):
        rep.render_table(t, results)


def test_a_spread_renders_mean_sample_sd_and_range_of_its_selectors(results):
    seeds = [dict(CELLS[0], model=f"m(train.seed={s})", robust_accuracy=v) for s, v in ((0, 0.10), (100, 0.20), (200, 0.60))]
    (results / "seeds.json").write_text(json.dumps(seeds))
    entry = {"spread": [{"results": "seeds", "model": f"m(train.seed={s})"} for s in (0, 100, 200)], "fmt": ".2f"}
    t = {"id": "t", "columns": ["FGSM"], "rows": [[entry]], "where": {"attack": "fgsm(eps=0.3)"}}
    # sd with n - 1; the t interval of the mean: 0.30 -+ 4.303 * 0.2646 / sqrt(3), clipped to [0, 1] for a proportion
    assert rep.render_table(t, results).splitlines()[2] == "| 0.30 ± 0.26 (0.10-0.60) [0.00, 0.96] |"
    t["rows"] = [[{"spread": [{"results": "seeds", "model": "m(train.seed=0)"}]}]]
    with pytest.raises(rep.ReproductionError, match="two or more"):
        rep.render_table(t, results)


def test_wilson_and_hanley_mcneil_give_the_textbook_intervals():
    lo, hi = rep.wilson(0.5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    lo, hi = rep.wilson(0.0, 10000)  # no success: still an interval, not a point
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.0003 < hi < 0.0004
    lo, hi = rep.hanley_mcneil(0.9, 50, 50)  # Hanley & McNeil (1982): SE 0.0321 at AUC 0.9, 50 + 50
    assert (hi - lo) / 2 == pytest.approx(1.96 * 0.0321, abs=2e-4)
    assert rep.hanley_mcneil(1.0, 10, 10) == (1.0, 1.0)
    lo, hi = rep.seeds_interval([0.1, 0.2, 0.6])
    assert (lo + hi) / 2 == pytest.approx(0.3) and (hi - lo) / 2 == pytest.approx(4.303 * 0.2646 / 3**0.5, abs=1e-3)
    with pytest.raises(ValueError):
        rep.wilson(0.5, 0)


def test_intervals_follow_the_stored_counts_and_prefer_a_stored_bootstrap(results):
    cells = [
        {"status": "done", "attack": "a", "n": 100, "adversarial_accuracy": 0.5, "clean_accuracy": 0.8, "success_rate": 0.5,
         "mean_l2": 1.5, "detection_auc": 0.9, "detection_auc_fooled": 0.9, "top1_error": 0.5},
        {"status": "done", "attack": "b", "n": 100, "adversarial_accuracy": 0.5,
         "adversarial_accuracy_ci_low": 0.41, "adversarial_accuracy_ci_high": 0.59},
    ]
    (results / "c.json").write_text(json.dumps(cells))
    t = {"id": "t", "columns": ["a", "b", "c", "d", "e", "f"], "where": {"results": "c"}, "rows": [[
        {"attack": "a"}, {"attack": "b"}, {"attack": "a", "metric": "success_rate"}, {"attack": "a", "metric": "mean_l2", "fmt": ".2f"},
        {"attack": "a", "metric": "detection_auc"}, {"attack": "a", "metric": "detection_auc_fooled"}]]}
    lines = rep.render_table(t, results).splitlines()
    wl, wh = rep.wilson(0.5, 100)
    sl, sh = rep.wilson(0.5, 80)  # success_rate is a share of the 80 examples right on clean inputs
    al, ah = rep.hanley_mcneil(0.9, 100, 100)
    fl, fh = rep.hanley_mcneil(0.9, 50, 100)  # over fooled examples: n * top1_error positives
    assert lines[2] == f"| 0.5000 [{wl:.4f}, {wh:.4f}] | 0.5000 [0.4100, 0.5900] | 0.5000 [{sl:.4f}, {sh:.4f}] | 1.50 | 0.9000 [{al:.4f}, {ah:.4f}] | 0.9000 [{fl:.4f}, {fh:.4f}] |"
    assert lines[-1] == "95% intervals in brackets: " + "; ".join(rep.METHODS[m] for m in ("bootstrap", "wilson", "hanley-mcneil")) + "."


def test_a_value_inside_a_cell_or_a_studys_json_gets_an_interval_only_with_its_count(results):
    (results / "d.json").write_text(json.dumps([{"status": "done", "attack": "a", "n": 10, "metrics": {"diagnostics": {"gradients": {"zero_share": 0.5}}}}]))
    (results / "study.json").write_text(json.dumps({"pair": {"n": 100, "share": 0.5, "p": 0.97}}))
    t = {"id": "t", "columns": ["a", "b", "c", "d"], "rows": [[
        {"results": "d", "attack": "a", "metric": ["metrics", "diagnostics", "gradients", "zero_share"], "n": 32},
        {"results": "d", "attack": "a", "metric": ["metrics", "diagnostics", "gradients", "zero_share"]},
        {"results": "study", "path": ["pair", "share"], "n": ["pair", "n"]}, {"results": "study", "path": ["pair", "p"]}]]}
    (l32, h32), (l100, h100) = rep.wilson(0.5, 32), rep.wilson(0.5, 100)
    assert rep.render_table(t, results).splitlines()[2] == f"| 0.5000 [{l32:.4f}, {h32:.4f}] | 0.5000 | 0.5000 [{l100:.4f}, {h100:.4f}] | 0.9700 |"


def test_a_detail_selector_reads_one_class_or_bucket_with_its_own_interval(tmp_path):
    """``detail = ["per_class", "0"]`` renders class 0 of the cell, with the group's bootstrap
    interval where the export has one and else Wilson over the group's own n, never the cell's."""
    cell = {"status": "done", "spec_name": "s", "defense": "none", "threat": "white-box", "attack": "fgsm(eps=0.3)", "n": 1000,
            "adversarial_accuracy": 0.5, "robust_accuracy": 0.5,
            "details": {"per_class": {"0": {"n": 20, "adversarial_accuracy": 0.25, "clean_accuracy": 0.9},
                                      "1": {"n": 980, "adversarial_accuracy": 0.5, "clean_accuracy": 0.99,
                                            "adversarial_accuracy_ci_low": 0.47, "adversarial_accuracy_ci_high": 0.53}},
                        "per_confidence": {"high": {"count": 900, "n": 900, "top5_error": 0.125}}}}
    (tmp_path / "s.json").write_text(json.dumps([cell]))
    t = table([["0", "-", {"attack": "fgsm(eps=0.3)", "detail": ["per_class", "0"]}],
               ["1", "-", {"attack": "fgsm(eps=0.3)", "detail": ["per_class", "1"]}],
               ["high", "-", {"attack": "fgsm(eps=0.3)", "detail": ["per_confidence", "high"], "metric": "top5_error"}],
               ["all", "-", {"attack": "fgsm(eps=0.3)"}]])
    lines = rep.render_table(t, tmp_path).splitlines()
    lo, hi = rep.wilson(0.25, 20)
    assert lines[2] == f"| 0 | - | 0.2500 [{lo:.4f}, {hi:.4f}] |"  # 20 examples: wide
    assert lines[3] == "| 1 | - | 0.5000 [0.4700, 0.5300] |"  # the export's bootstrap of class 1
    lo, hi = rep.wilson(0.125, 900)
    assert lines[4] == f"| high | - | 0.1250 [{lo:.4f}, {hi:.4f}] |"
    lo, hi = rep.wilson(0.5, 1000)
    assert lines[5] == f"| all | - | 0.5000 [{lo:.4f}, {hi:.4f}] |"
    spread = {"spread": [{"attack": "fgsm(eps=0.3)", "detail": ["per_class", "0"]}, {"attack": "fgsm(eps=0.3)", "detail": ["per_class", "1"]}]}
    assert rep.render_table(table([["x", "-", spread]]), tmp_path).splitlines()[2].startswith("| x | - | 0.3750 ± 0.1768 (0.2500-0.5000)")
    with pytest.raises(rep.ReproductionError, match=r"table t: s.json has no \['details', 'per_class', '7'\]"):
        rep.render_table(table([["x", "-", {"attack": "fgsm(eps=0.3)", "detail": ["per_class", "7"]}]]), tmp_path)
