"""Metrics: aggregate numbers derived from the per-example records of one evaluation.

Each metric is declared once, with ``@metric``: its name, SQL type, how tables show it
and the function that computes it from the records (``score``'s output) and, for cost
metrics, from what crafting cost. The result schema (``advx.store.schema``), the SQLite
columns, the ``advx results`` tables, the CSV/JSON/Markdown exports and the Python API
are all derived from this list, so adding a metric is one decorated function here.

Records are dicts of aligned tensors (see ``advx.analysis.records.SAMPLE_COLUMNS``). Detection
metrics use the detector's scores and rejections where the evaluated module is an
``advx.Detector`` and are ``None`` elsewhere: adversarial inputs are the positives, their
clean originals the negatives; ``detection_auc`` counts every adversarial example,
``detection_auc_fooled`` only those that fool the classifier (seed 004 does not say which
it uses; both are kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advx.runtime.crafting import Cost

#: clean-confidence buckets of seed 001: High >= 30%, Medium 15-30%, Low < 15%
BUCKETS = (("high", 0.30, math.inf), ("medium", 0.15, 0.30), ("low", -math.inf, 0.15))


@dataclass(frozen=True)
class MetricDef:
    """One metric: a column of every result row."""

    name: str
    fn: Callable[[dict[str, Tensor], Cost | None], Any]
    sql: str = "REAL"
    header: str | None = None  # column heading in result tables; None: not in the default table
    fmt: str = ".4f"
    description: str = ""
    breakdown: bool = True  # computed per class / per confidence bucket too


METRICS: list[MetricDef] = []


def metric(name: str, *, sql: str = "REAL", header: str | None = None, fmt: str = ".4f", description: str = "", breakdown: bool = True):
    """Declare a metric; the decorated ``fn(records, cost)`` computes it (``None`` when undefined)."""

    def deco(fn: Callable[[dict[str, Tensor], Cost | None], Any]):
        if any(m.name == name for m in METRICS):
            raise ValueError(f"metric {name!r} declared twice")
        METRICS.append(MetricDef(name, fn, sql, header, fmt, description, breakdown))
        return fn

    return deco


def _mean(t: Tensor) -> float | None:
    return float(t.float().mean()) if t.numel() else None


def _has(s: dict[str, Tensor], key: str) -> bool:
    return key in s and s[key].numel() > 0


# -- accuracy and success -----------------------------------------------------------------------


@metric("n", sql="INTEGER", header="n", fmt="d", description="evaluated examples")
def _n(s, cost):
    return int(len(s["label"]))


@metric("clean_accuracy", header="clean acc", description="accuracy on the clean examples")
def _clean_accuracy(s, cost):
    return _mean(s["clean_pred"] == s["label"])


@metric(
    "robust_accuracy",
    header="robust acc",
    description="examples classified correctly both clean and under attack (RobustBench, AutoAttack): never above clean accuracy",
)
def _robust_accuracy(s, cost):
    return _mean((s["clean_pred"] == s["label"]) & (s["adv_pred"] == s["label"]))


@metric(
    "adversarial_accuracy",
    description="accuracy on the adversarial examples, whatever the clean prediction (the papers' 'Adv Acc'; "
    "above robust accuracy where an attack turned wrong answers right)",
)
def _adversarial_accuracy(s, cost):
    return _mean(s["adv_pred"] == s["label"])


@metric("success_rate", header="success", description="untargeted success: share of correctly classified examples now misclassified")
def _success_rate(s, cost):
    correct = s["clean_pred"] == s["label"]
    return _mean(s["adv_pred"][correct] != s["label"][correct])


@metric("targeted_success_rate", header="targeted", description="targeted success: share of examples (target != truth) classified as the target")
def _targeted_success_rate(s, cost):
    target, label = s["target"], s["label"]
    if not bool((target >= 0).any()):
        return None
    valid = (target >= 0) & (target != label)
    return _mean(s["adv_pred"][valid] == target[valid])


@metric("top1_error", description="top-1 error on the adversarial examples")
def _top1_error(s, cost):
    return _mean(s["adv_pred"] != s["label"])


@metric("top5_error", description="top-5 error on the adversarial examples")
def _top5_error(s, cost):
    return _mean(~s["adv_top5"].bool())


# -- perturbation size ----------------------------------------------------------------------------


@metric("mean_linf", header="mean Linf", description="mean L-inf norm of the perturbations", breakdown=False)
def _mean_linf(s, cost):
    return _mean(s["linf"])


@metric("max_linf", description="largest L-inf norm of the perturbations", breakdown=False)
def _max_linf(s, cost):
    return float(s["linf"].max()) if len(s["linf"]) else None


@metric("mean_l2", header="mean L2", description="mean L2 norm of the perturbations", breakdown=False)
def _mean_l2(s, cost):
    return _mean(s["l2"])


@metric("max_l2", description="largest L2 norm of the perturbations", breakdown=False)
def _max_l2(s, cost):
    return float(s["l2"].max()) if len(s["l2"]) else None


# -- detection ------------------------------------------------------------------------------------


def _detected(s: dict[str, Tensor]) -> bool:
    return _has(s, "clean_rejected") and bool((s["clean_rejected"] >= 0).any())


@metric("detection_auc", header="det AUC", description="ROC AUC of the detector: every adversarial example vs its clean original", breakdown=False)
def _detection_auc(s, cost):
    return roc_auc(s["clean_score"], s["adv_score"]) if _has(s, "clean_score") else None


@metric("detection_auc_fooled", description="ROC AUC of the detector on the adversarial examples that fool the classifier", breakdown=False)
def _detection_auc_fooled(s, cost):
    if not _has(s, "clean_score"):
        return None
    fooled = s["adv_pred"] != s["label"]
    return roc_auc(s["clean_score"], s["adv_score"][fooled])


@metric("detection_tpr", description="share of adversarial examples the detector rejects (at its threshold)", breakdown=False)
def _detection_tpr(s, cost):
    return _mean(s["adv_rejected"] == 1) if _detected(s) else None


@metric("accuracy_with_rejection", header="acc w/ reject", description="adversarial examples rejected or correctly classified (a rejection counts as defended)", breakdown=False)
def _accuracy_with_rejection(s, cost):
    if not _detected(s):
        return None
    return _mean((s["adv_rejected"] == 1) | (s["adv_pred"] == s["label"]))


@metric("detection_fpr", header="clean FPR", description="share of clean examples the detector rejects (at its threshold): what accuracy with rejection costs", breakdown=False)
def _detection_fpr(s, cost):
    return _mean(s["clean_rejected"] == 1) if _detected(s) else None


# -- cost -----------------------------------------------------------------------------------------


@metric("attack_seconds", fmt=".2f", description="seconds spent crafting (None when the examples were reused from another cell)", breakdown=False)
def _attack_seconds(s, cost):
    return None if cost is None else cost.seconds


@metric("images_per_second", header="img/s", fmt=".0f", description="examples crafted per second", breakdown=False)
def _images_per_second(s, cost):
    return None if cost is None or cost.seconds <= 0 else len(s["label"]) / cost.seconds


@metric("forwards_per_sample", header="fwd/sample", fmt=".1f", description="forward passes per example, counted by the kernel", breakdown=False)
def _forwards_per_sample(s, cost):
    return None if cost is None else cost.forwards / max(len(s["label"]), 1)


@metric("backwards_per_sample", header="bwd/sample", fmt=".1f", description="backward passes per example, counted by the kernel", breakdown=False)
def _backwards_per_sample(s, cost):
    return None if cost is None else cost.backwards / max(len(s["label"]), 1)


# -- aggregation ----------------------------------------------------------------------------------


def summarize(s: dict[str, Tensor], cost: Cost | None = None) -> dict[str, Any]:
    """Every declared metric of the records ``s`` (cost metrics are ``None`` without ``cost``)."""
    return {m.name: m.fn(s, cost) for m in METRICS}


def _summarize_subset(s: dict[str, Tensor], mask: Tensor) -> dict[str, Any]:
    sub = {k: v[mask] for k, v in s.items()}
    return {m.name: m.fn(sub, None) for m in METRICS if m.breakdown}


def breakdown_by_class(s: dict[str, Tensor], num_classes: int) -> dict[str, dict[str, Any]]:
    """The accuracy metrics per true class (seed 000's imbalance analysis)."""
    return {str(c): _summarize_subset(s, s["label"] == c) for c in range(num_classes) if bool((s["label"] == c).any())}


def breakdown_by_confidence(s: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """The accuracy metrics per clean-confidence bucket (seed 001), with the bucket's ``count``."""
    out = {}
    for name, lo, hi in BUCKETS:
        m = (s["clean_conf"] >= lo) & (s["clean_conf"] < hi)
        out[name] = {"count": int(m.sum()), **_summarize_subset(s, m)}
    return out


def roc_auc(negatives: Tensor, positives: Tensor) -> float | None:
    """Area under the ROC curve of scores (positives should score higher); ties count half.

    The Mann-Whitney form: the probability that a random positive outscores a random
    negative. Equal to scikit-learn's ``roc_auc_score`` on the concatenated scores.
    """
    neg, pos = negatives[torch.isfinite(negatives)], positives[torch.isfinite(positives)]
    if not len(neg) or not len(pos):
        return None
    scores = torch.cat([neg, pos]).double()
    uniq, inverse = torch.unique(scores, return_inverse=True)
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]  # average ranks over ties
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def roc_points(negatives: Tensor, positives: Tensor, max_points: int = 101) -> list[list[float]] | None:
    """The ROC curve as ``[[fpr, tpr], ...]`` from (0, 0) to (1, 1), thinned to ``max_points``."""
    neg, pos = negatives[torch.isfinite(negatives)].double(), positives[torch.isfinite(positives)].double()
    if not len(neg) or not len(pos):
        return None
    scores = torch.cat([neg, pos])
    is_pos = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))]).double()
    order = scores.argsort(descending=True)
    scores, is_pos = scores[order], is_pos[order]
    tp, fp = is_pos.cumsum(0), (1 - is_pos).cumsum(0)
    last = torch.ones(len(scores), dtype=torch.bool)  # one point per distinct threshold
    last[:-1] = scores[1:] != scores[:-1]
    tpr, fpr = tp[last] / len(pos), fp[last] / len(neg)
    pts = [[0.0, 0.0]] + [[float(f), float(t)] for f, t in zip(fpr, tpr)]
    if pts[-1] != [1.0, 1.0]:
        pts.append([1.0, 1.0])
    if len(pts) > max_points:
        keep = torch.linspace(0, len(pts) - 1, max_points).round().long().unique()
        pts = [pts[int(i)] for i in keep]
    return pts
