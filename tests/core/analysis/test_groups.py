"""Groups are made of cells, not of labels: numbers are grouped by what identifies their cells.

Two specs in one results file evaluate the same ``mlp`` trained 2 and 3 epochs: the labels
are equal ("mlp"), the cells are not. The worst case, the sanity checks and the report's
matrix must keep them apart and say what differs.
"""

from __future__ import annotations

import pytest

import advx
from advx.analysis.checks import run_checks
from advx.analysis.groups import place_labels, worst_case_groups
from advx.report import build_report


def spec(name, epochs, cache, eps=(0.05, 0.1), attacks=None):
    return {
        "matrix": {"name": name, "samples": 60, "batch_size": 60, "cache_dir": str(cache), "diagnostics": False},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "hidden": [32], "train": {"epochs": epochs}}],
        "attacks": attacks or [{"name": "fgsm", "eps": list(eps)}, {"name": "bim", "eps": list(eps), "steps": 5}],
    }


@pytest.fixture(scope="module")
def two_trainings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("groups")
    db = tmp / "r.db"
    advx.run_matrix(spec("two", 2, tmp / "c"), store=db)
    advx.run_matrix(spec("three", 3, tmp / "c"), store=db)
    with advx.ResultStore(db) as store:
        return db, store.cells()


def test_places_of_one_label_are_told_apart(two_trainings):
    _, rows = two_trainings
    assert len(rows) == 8 and len({r.model for r in rows}) == 1  # one label for two models
    labels = set(place_labels(rows).values())
    assert labels == {"digits / mlp(hidden=[32]) / none / white-box [train.epochs=2]", "digits / mlp(hidden=[32]) / none / white-box [train.epochs=3]"}


def test_worst_case_never_mixes_models(two_trainings):
    db, rows = two_trainings
    groups = worst_case_groups(rows)
    assert len(groups) == 4  # 2 models x 2 eps, each over fgsm and bim of one model
    assert all(len({r.train_config["epochs"] for r in cells}) == 1 for _, _, cells in groups)
    with advx.ResultStore(db) as store:
        for _, _, cells in groups:
            assert store.worst_case(cells) <= min(r.robust_accuracy for r in cells)
        a = next(r for r in rows if r.train_config["epochs"] == 2 and r.eps == 0.1)
        b = next(r for r in rows if r.train_config["epochs"] == 3 and r.eps == 0.1)
        with pytest.raises(advx.ConfigError, match="do not share their model"):
            store.worst_case([a, b])
        # the per-example records behind it (what the intervals resample) refuse the same mix
        with pytest.raises(advx.ConfigError, match="do not share their model"):
            store.worst_case_examples([a, b])


def test_checks_compare_cells_of_one_model(two_trainings):
    _, rows = two_trainings
    # BIM of one model against FGSM of the other is never compared: every iterative-weaker
    # flag, if any, names two cells of one training
    for f in run_checks(rows):
        epochs = {r.train_config["epochs"] for r in rows if r.cell_key in f.cells}
        assert len(epochs) == 1, f


def test_the_report_matrix_keeps_every_cell(two_trainings, tmp_path):
    db, rows = two_trainings
    with advx.ResultStore(db, readonly=True) as store:
        report = build_report(store, tables_only=True)
    matrix = report.sections[0].blocks[1]
    shown = sum(1 for line in matrix.rows for v in line[2:] if v not in ("", "failed", "n/a"))
    assert shown == 8
    assert {line[0] for line in matrix.rows} == {
        "digits / mlp(hidden=[32]) / none [train.epochs=2]", "digits / mlp(hidden=[32]) / none [train.epochs=3]",
    }


def test_weaker_knowledge_stronger_finds_the_full_knowledge_row_by_traits():
    """The white-box row with settings (eot = 10, bpda = false) is still the reference."""
    reg = advx.Registry.discover()

    def row(threat, cfg, acc, key):
        return advx.CellRow.from_flat({
            "cell_key": key, "dataset": "d", "model": "m", "defense": "rand", "attack": "pgd", "n": 500,
            "threat": threat, "threat_config": {"name": threat.split("(")[0], **cfg},
            "threat_traits": reg.get("threat", threat.split("(")[0]).traits(),
            "identity": {"dataset": 1, "model": 1, "defense": 1, "attack": 1, "examples": {}, "seed": 0, "threat": [threat, cfg]},
            "robust_accuracy": acc, "attack_config": {"name": "pgd", "eps": 0.1}, "attack_traits": {},
        })

    for wb in (row("white-box", {}, 0.87, "wb"), row("white-box(eot=1)", {"eot": 1}, 0.87, "wb"), row("white-box(bpda=False)", {"bpda": False}, 0.87, "wb")):
        flags = [f for f in run_checks([wb, row("transfer", {}, 0.64, "tr")]) if f.check == "weaker-knowledge-stronger"]
        assert len(flags) == 1 and flags[0].cells == ("tr", "wb"), wb.threat


def test_detector_rejecting_every_clean_input_is_flagged():
    def det(fpr, key):
        return advx.CellRow.from_flat({
            "cell_key": key, "dataset": "d", "model": "m", "defense": f"det{key}", "threat": "white-box", "attack": "fgsm",
            "robust_accuracy": 0.1, "accuracy_with_rejection": 1.0, "detection_fpr": fpr, "n": 500,
            "threat_traits": {"less_knowledge": False, "surrogate": False},
        })

    flags = [f.check for f in run_checks([det(1.0, "a"), det(0.05, "b")])]
    assert flags == ["detector-false-positives"]


def test_silent_success_is_left_to_random_forward_where_the_forward_is_random():
    def diag(random_forward, key):
        return advx.CellRow.from_flat({
            "cell_key": key, "dataset": "d", "model": "m", "defense": key, "threat": "white-box", "attack": "fgsm",
            "robust_accuracy": 0.5, "n": 500,
            "details": {"diagnostics": {"silent_success": 3, "random_forward": random_forward, "eot": 1}},
        })

    assert [f.check for f in run_checks([diag(True, "r")])] == ["random-forward-without-eot"]
    assert [f.check for f in run_checks([diag(False, "d")])] == ["silent-success"]


def test_a_spec_shows_its_current_cells_and_keeps_the_earlier_ones(tmp_path):
    db = tmp_path / "r.db"
    one = spec("edited", 1, tmp_path / "c", eps=(0.05, 0.1), attacks=[{"name": "fgsm", "eps": [0.05, 0.1]}])
    advx.run_matrix(one, store=db)
    two = spec("edited", 1, tmp_path / "c", attacks=[{"name": "fgsm", "eps": [0.1, 0.2]}])
    res = advx.run_matrix(two, store=db)
    assert res.skipped == 1 and res.done == 1
    with advx.ResultStore(db) as store:
        assert sorted(r.eps for r in store.cells("edited")) == [0.1, 0.2]
        assert [r.eps for r in store.earlier_cells("edited")] == [0.05]
        assert len(store.cells("edited", history=True)) == 3
