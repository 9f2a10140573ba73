"""``advx results DB --ci``: the 95% interval of every accuracy, rate and AUC, computed from the
per-example records when the rows are read (nothing stored twice), beside each number in the
table and the Markdown export and as ``<metric>_ci_low`` / ``<metric>_ci_high`` in CSV and JSON;
the report's matrix shows the same intervals."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

import advx
from advx.analysis.intervals import interval
from advx.analysis.metrics import summarize
from advx.cli import main


def _records(n: int, adv_right: int, clean_right: int, detector: bool = False) -> dict[str, torch.Tensor]:
    """``n`` examples: the first ``clean_right`` right clean, the first ``adv_right`` right under attack."""
    label = torch.arange(n) % 10
    wrong = (label + 1) % 10
    i = torch.arange(n)
    s = {
        "idx": i, "label": label,
        "clean_pred": torch.where(i < clean_right, label, wrong), "clean_conf": torch.ones(n),
        "adv_pred": torch.where(i < adv_right, label, wrong), "adv_conf": torch.ones(n),
        "adv_top5": torch.ones(n, dtype=torch.long), "target": torch.full((n,), -1),
        "linf": torch.full((n,), 0.1), "l2": torch.ones(n),
        "clean_score": torch.full((n,), float("nan")), "adv_score": torch.full((n,), float("nan")),
        "clean_rejected": torch.full((n,), -1), "adv_rejected": torch.full((n,), -1),
    }
    if detector:
        g = torch.Generator().manual_seed(0)
        s["clean_score"], s["adv_score"] = torch.randn(n, generator=g), torch.randn(n, generator=g) + 1
        s["clean_rejected"], s["adv_rejected"] = (s["clean_score"] > 1.6).long(), (s["adv_score"] > 1.6).long()
    return s


CELLS = {"small": (100, 60, 90, False), "large": (2000, 1200, 1800, True)}


@pytest.fixture
def db(tmp_path):
    """Two cells of one robust accuracy (0.6), on 100 and on 2,000 examples (the second with a detector)."""
    path = tmp_path / "r.db"
    with advx.ResultStore(path) as store:
        for key, (n, adv, clean, det) in CELLS.items():
            s = _records(n, adv, clean, det)
            row = {"cell_key": key, "spec_name": "s", "status": "done", "dataset": "digits", "model": key,
                   "defense": "none", "threat": "white-box", "attack": f"fgsm(n={n})", **summarize(s)}
            store.record(advx.CellRow.from_flat(row), s)
    return path


def _ci(key: str, metric: str) -> tuple[float, float]:
    return interval(_records(*CELLS[key]), metric)


def test_the_table_shows_each_interval_beside_its_number(db, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["results", str(db)]) == 0
    assert "[" not in capsys.readouterr().out.split("cells", 1)[1].split("trainings")[0]  # no intervals unless asked
    assert main(["results", str(db), "--ci"]) == 0
    out = capsys.readouterr().out
    assert "95% bootstrap intervals" in out
    for key in CELLS:
        lo, hi = _ci(key, "robust_accuracy")
        assert f"0.6000 [{lo:.4f}, {hi:.4f}]" in out
    lo, hi = _ci("large", "detection_auc")
    assert f"[{lo:.4f}, {hi:.4f}]" in out


def test_an_interval_holds_its_value_and_shrinks_with_the_examples():
    (slo, shi), (llo, lhi) = _ci("small", "robust_accuracy"), _ci("large", "robust_accuracy")
    assert slo < 0.6 < shi and llo < 0.6 < lhi
    assert shi - slo > 3 * (lhi - llo)  # 20 times the examples: about sqrt(20) = 4.5 times narrower


def test_csv_and_json_exports_carry_low_and_high_columns(db, capsys):
    assert main(["results", str(db), "--format", "json"]) == 0
    assert "robust_accuracy_ci_low" not in capsys.readouterr().out
    assert main(["results", str(db), "--format", "json", "--ci"]) == 0
    rows = {r["cell_key"]: r for r in json.loads(capsys.readouterr().out)}
    for key in CELLS:
        for metric in ("robust_accuracy", "clean_accuracy", "success_rate"):
            assert (rows[key][f"{metric}_ci_low"], rows[key][f"{metric}_ci_high"]) == _ci(key, metric)
    assert rows["small"]["detection_auc_ci_low"] is None and rows["large"]["detection_auc_ci_low"] == _ci("large", "detection_auc")[0]
    assert main(["results", str(db), "--format", "csv", "--ci"]) == 0
    rows = {r["cell_key"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    lo, hi = _ci("small", "robust_accuracy")
    assert float(rows["small"]["robust_accuracy_ci_low"]) == pytest.approx(lo) and float(rows["small"]["robust_accuracy_ci_high"]) == pytest.approx(hi)
    assert rows["small"]["detection_auc_ci_low"] == ""  # no detector: no interval
    assert main(["results", str(db), "--format", "markdown", "--ci"]) == 0
    lo, hi = _ci("large", "clean_accuracy")
    assert f"0.9000 [{lo:.4f}, {hi:.4f}]" in capsys.readouterr().out


def test_the_report_matrix_shows_the_intervals(db):
    from advx.report import build_report

    with advx.ResultStore(db, readonly=True) as store:
        report = build_report(store, tables_only=True)
    text = json.dumps([[b.__dict__ for b in s.blocks if hasattr(b, "rows")] for s in report.sections], default=str)
    for key in CELLS:
        lo, hi = _ci(key, "robust_accuracy")
        assert f"0.6000 [{lo:.4f}, {hi:.4f}]" in text
    lo, hi = _ci("large", "clean_accuracy")
    assert f"0.9000 [{lo:.4f}, {hi:.4f}]" in text


def test_json_export_gives_each_class_and_confidence_bucket_its_own_interval(tmp_path, capsys):
    """With ``--ci`` every group of a cell's breakdowns carries the bootstrap over its own
    examples (seed 000 reads class 0 alone, seed 001 each confidence bucket)."""
    from advx.analysis.intervals import breakdown_intervals
    from advx.analysis.metrics import breakdown_by_class, breakdown_by_confidence

    s = _records(400, 240, 360)
    s["clean_conf"] = torch.linspace(0.05, 0.95, 400)  # every bucket populated
    details = {"per_class": breakdown_by_class(s, 10), "per_confidence": breakdown_by_confidence(s)}
    path = tmp_path / "b.db"
    with advx.ResultStore(path) as store:
        row = {"cell_key": "b", "spec_name": "s", "status": "done", "dataset": "digits", "model": "m", "defense": "none",
               "threat": "white-box", "attack": "fgsm", "details": details, **summarize(s)}
        store.record(advx.CellRow.from_flat(row), s)
    assert main(["results", str(path), "--format", "json"]) == 0
    assert "robust_accuracy_ci_low" not in json.dumps(json.loads(capsys.readouterr().out)[0]["details"])
    assert main(["results", str(path), "--format", "json", "--ci"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["details"]
    for c in ("0", "3"):
        mask = s["label"] == int(c)
        want = interval({k: v[mask] for k, v in s.items()}, "robust_accuracy")
        cls = got["per_class"][c]
        assert (cls["robust_accuracy_ci_low"], cls["robust_accuracy_ci_high"]) == pytest.approx(want)
        assert cls["robust_accuracy_ci_low"] <= cls["robust_accuracy"] <= cls["robust_accuracy_ci_high"]
    for bucket in ("high", "medium", "low"):
        b = got["per_confidence"][bucket]
        assert b["count"] > 0 and b["top1_error_ci_low"] <= b["top1_error"] <= b["top1_error_ci_high"], bucket
        assert b["top5_error_ci_low"] is not None
    whole = breakdown_intervals(s)["per_class"]["0"]["robust_accuracy"]
    assert whole != interval(s, "robust_accuracy")  # class 0's examples alone, not the cell's
