"""95% intervals from per-example records (``advx.analysis.intervals``): each interval holds its
metric's value, shrinks as examples are added, matches the textbook width where one is
known, and is the same on every run (a fixed seed)."""

from __future__ import annotations

import math

import pytest
import torch

from advx.analysis.intervals import AUCS, INTERVAL_METRICS, PROPORTIONS, interval, intervals, proportion_interval
from advx.analysis.metrics import roc_auc, summarize


def records(n: int, *, acc: float = 0.9, adv_acc: float = 0.6, detector: bool = False, seed: int = 1) -> dict[str, torch.Tensor]:
    """``n`` hand-built records: clean accuracy about ``acc``, adversarial about ``adv_acc``;
    with ``detector`` scores where adversarial inputs score higher on average."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(10, (n,), generator=g)
    wrong = (label + 1) % 10
    clean = torch.where(torch.rand(n, generator=g) < acc, label, wrong)
    adv = torch.where(torch.rand(n, generator=g) < adv_acc, label, wrong)
    target = torch.where(torch.arange(n) % 2 == 0, (label + 2) % 10, torch.full((n,), -1))
    adv = torch.where((target >= 0) & (torch.rand(n, generator=g) < 0.3), target, adv)
    s = {
        "idx": torch.arange(n), "label": label, "clean_pred": clean, "adv_pred": adv, "target": target,
        "adv_top5": (torch.rand(n, generator=g) < 0.8).long(), "linf": torch.zeros(n), "l2": torch.zeros(n),
        "clean_conf": torch.ones(n), "adv_conf": torch.ones(n),
    }
    if detector:
        s["clean_score"] = torch.randn(n, generator=g)
        s["adv_score"] = torch.randn(n, generator=g) + 1.0
        s["clean_rejected"] = (s["clean_score"] > 1.5).long()
        s["adv_rejected"] = (s["adv_score"] > 1.5).long()
    else:
        s["clean_score"] = s["adv_score"] = torch.full((n,), float("nan"))
        s["clean_rejected"] = s["adv_rejected"] = torch.full((n,), -1)
    return s


def test_every_interval_metric_is_the_declared_metric_and_holds_its_value():
    """The (hit, counted) of each proportion and the scores of each AUC give exactly the value
    ``metrics`` declares, so an interval is always around the number a table shows."""
    s = records(2000, detector=True)
    m = summarize(s)
    for name, fn in PROPORTIONS.items():
        hit, counted = fn(s)
        assert float(hit[counted].float().mean()) == pytest.approx(m[name], abs=1e-9), name
    for name, fn in AUCS.items():
        assert roc_auc(*fn(s)[:2]) == pytest.approx(m[name], abs=1e-12), name
    got = intervals(s)
    assert set(got) == set(INTERVAL_METRICS)
    for name, (lo, hi) in got.items():
        assert lo <= m[name] <= hi and lo < hi, name


def test_an_interval_shrinks_as_examples_are_added():
    widths = []
    for n in (100, 1000, 10000):
        lo, hi = interval(records(n), "robust_accuracy")
        widths.append(hi - lo)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # about 1/sqrt(n): 3.2x per tenfold


def test_a_proportion_has_the_normal_width_where_it_is_known():
    """400 examples, 200 right: the 95% interval is 0.5 +- 1.96 * sqrt(0.25 / 400) = +-0.049."""
    s = records(400)
    s["adv_pred"] = torch.where(torch.arange(400) < 200, s["label"], (s["label"] + 1) % 10)
    lo, hi = interval(s, "adversarial_accuracy")
    half = 1.96 * math.sqrt(0.25 / 400)
    assert lo == pytest.approx(0.5 - half, abs=0.01) and hi == pytest.approx(0.5 + half, abs=0.01)


def test_an_auc_interval_resamples_positives_and_negatives_apart():
    """Scores that separate perfectly: every resample keeps both kinds, so the interval is [1, 1];
    overlapping scores: about Hanley and McNeil's width, around the sample AUC."""
    neg, pos = torch.zeros(50), torch.ones(30)
    s = records(50, detector=True)
    s["clean_score"], s["adv_score"] = neg, torch.cat([pos, torch.ones(20)])
    assert interval(s, "detection_auc") == (1.0, 1.0)

    s = records(1000, detector=True)
    auc = roc_auc(s["clean_score"], s["adv_score"])
    lo, hi = interval(s, "detection_auc")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + 999 * (q1 - auc * auc) + 999 * (q2 - auc * auc)) / (1000 * 1000))
    assert lo < auc < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_the_same_records_give_the_same_interval_and_the_settings_count():
    s = records(500, detector=True)
    assert interval(s, "success_rate") == interval(s, "success_rate")
    assert interval(s, "success_rate", seed=1) != interval(s, "success_rate")
    lo95, hi95 = interval(s, "success_rate")
    lo50, hi50 = interval(s, "success_rate", level=0.5)
    assert lo95 < lo50 < hi50 < hi95
    lo1, hi1 = interval(s, "success_rate", resamples=1)  # one resample: one value, no spread
    assert lo1 == hi1
    assert interval(s, "detection_auc", resamples=50) != interval(s, "detection_auc")
    # every metric reads the same resamples: asking for one alone or for all gives the same interval
    assert intervals(s)["success_rate"] == interval(s, "success_rate") and intervals(s)["detection_auc"] == interval(s, "detection_auc")


def test_no_interval_where_the_metric_is_undefined_and_none_for_norms():
    s = records(100)  # no detector
    assert interval(s, "detection_auc") is None and interval(s, "detection_fpr") is None
    s["target"] = torch.full((100,), -1)
    assert interval(s, "targeted_success_rate") is None
    assert interval({}, "robust_accuracy") is None
    with pytest.raises(ValueError, match="no interval for metric 'mean_l2'"):
        interval(s, "mean_l2")
    with pytest.raises(ValueError, match="level must lie in"):
        interval(s, "robust_accuracy", level=1.5)


def test_a_worst_case_share_gets_the_same_bootstrap_as_a_cell():
    """``proportion_interval`` (the worst case over attacks, robust per example) draws the same
    resamples as a cell's accuracies: the same hits give the same interval either way."""
    s = records(500)
    hits = (s["clean_pred"] == s["label"]) & (s["adv_pred"] == s["label"])
    assert proportion_interval(hits) == interval(s, "robust_accuracy")
    lo, hi = proportion_interval(hits)
    assert lo < float(hits.float().mean()) < hi
    assert proportion_interval(torch.zeros(0, dtype=torch.bool)) is None
    assert proportion_interval(hits, level=0.5) != proportion_interval(hits)
