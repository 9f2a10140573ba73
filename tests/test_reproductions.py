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
    assert out.splitlines() == ["|  | paper | ours |", "|---|---:|---:|", "| FGSM | 0.38 | 0.2500 |", "| clean | 0.99 | 0.99 |",
                                "| both | - | 0.250 / 0.010 |"]


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
    assert rep.rewrite(doc, t, results) == "before\n<!-- table: t -->\n|  | paper | ours |\n|---|---:|---:|\n| FGSM | 0.38 | 0.2500 |\n<!-- /table -->\nafter"


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
    assert rep.render_table(t, results).splitlines()[-1] == "| 0.30 ± 0.26 (0.10-0.60) |"  # sd with n - 1
    t["rows"] = [[{"spread": [{"results": "seeds", "model": "m(train.seed=0)"}]}]]
    with pytest.raises(rep.ReproductionError, match="two or more"):
        rep.render_table(t, results)
