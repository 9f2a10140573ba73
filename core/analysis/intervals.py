"""95% confidence intervals of a cell's metrics, from its per-example records.

A robust accuracy of 0.61 on 1,000 test examples and one of 0.61 on 100 are different
claims: the first is known to about three points, the second to about ten. Every proportion
(accuracies, success rates, error rates, the detector's rates) and every detector AUC gets
a percentile bootstrap interval over the evaluated examples: the examples are resampled
with replacement ``resamples`` times, the metric recomputed on each resample, and the
interval is the central ``level`` share of those values. For an AUC the positives
(adversarial examples) and the negatives (their clean originals) are resampled apart, so
that each resample keeps the numbers of both (a stratified bootstrap).

Intervals are computed when rows are read, from the ``samples`` table, never stored: a
cell's records are its only copy of the evidence (a sharded cell's shards add up to one
cell's records), and the interval follows whatever records the reader sees. The random
generator has a fixed seed, so the same records give the same interval on every run and
machine (``advx results --ci`` output is reproducible and testable).

The bootstrap is vectorised: a block of resamples is a matrix of how often each example
was drawn (a multinomial count per example), so a proportion of a resample is one matrix
product and an AUC one cumulative sum over the sorted negatives; 1,000 resamples of
10,000 examples take a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

#: the default number of bootstrap resamples and the default level
RESAMPLES = 1000
LEVEL = 0.95
#: the generator's seed: the same records give the same interval everywhere
SEED = 0
#: resamples drawn at once (bounds memory at BLOCK x n counts)
BLOCK = 100


def _all(s: dict[str, Tensor]) -> Tensor:
    return torch.ones(len(s["label"]), dtype=torch.bool)


def _detected(s: dict[str, Tensor]) -> Tensor:
    return (s["clean_rejected"] >= 0) if "clean_rejected" in s else torch.zeros(len(s["label"]), dtype=torch.bool)


#: proportion metrics as (hit, counted) per example: the metric is hits / counted; each is
#: the same quantity ``advx.analysis.metrics`` declares (a test pins that both agree)
PROPORTIONS: dict[str, Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]] = {
    "clean_accuracy": lambda s: (s["clean_pred"] == s["label"], _all(s)),
    "robust_accuracy": lambda s: ((s["clean_pred"] == s["label"]) & (s["adv_pred"] == s["label"]), _all(s)),
    "adversarial_accuracy": lambda s: (s["adv_pred"] == s["label"], _all(s)),
    "success_rate": lambda s: (s["adv_pred"] != s["label"], s["clean_pred"] == s["label"]),
    "targeted_success_rate": lambda s: (s["adv_pred"] == s["target"], (s["target"] >= 0) & (s["target"] != s["label"])),
    "top1_error": lambda s: (s["adv_pred"] != s["label"], _all(s)),
    "top5_error": lambda s: (~s["adv_top5"].bool(), _all(s)),
    "detection_tpr": lambda s: (s["adv_rejected"] == 1, _detected(s)),
    "accuracy_with_rejection": lambda s: ((s["adv_rejected"] == 1) | (s["adv_pred"] == s["label"]), _detected(s)),
    "detection_fpr": lambda s: (s["clean_rejected"] == 1, _detected(s)),
}

#: AUC metrics as (negative scores, positive scores)
AUCS: dict[str, Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]] = {
    "detection_auc": lambda s: (s["clean_score"], s["adv_score"]),
    "detection_auc_fooled": lambda s: (s["clean_score"], s["adv_score"][s["adv_pred"] != s["label"]]),
}

#: every metric that gets an interval
INTERVAL_METRICS: tuple[str, ...] = (*PROPORTIONS, *AUCS)


def _counts(generator: torch.Generator, n: int, b: int) -> Tensor:
    """``b`` bootstrap resamples of ``n`` items, as a (b, n) matrix of how often each was drawn."""
    draws = torch.randint(n, (b, n), generator=generator)
    return torch.zeros(b, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones(b, n, dtype=torch.float64))


def _percentiles(values: Tensor, level: float) -> tuple[float, float] | None:
    values = values[torch.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2
    lo, hi = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype)).tolist()
    return float(lo), float(hi)


def proportion_interval(
    hit: Tensor, counted: Tensor, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``hit[counted].mean()``, resampling every example (so
    the number counted varies between resamples, as it would in a new test set)."""
    hit, counted = hit.bool().flatten(), counted.bool().flatten()
    if not bool(counted.any()):
        return None
    n = len(hit)
    g = torch.Generator().manual_seed(seed)
    num, den = (hit & counted).double(), counted.double()
    out = []
    for start in range(0, resamples, BLOCK):
        c = _counts(g, n, min(BLOCK, resamples - start))
        out.append((c @ num) / (c @ den))  # 0/0 (nothing counted in a resample) is NaN, dropped
    return _percentiles(torch.cat(out), level)


def auc_interval(
    negatives: Tensor, positives: Tensor, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ROC AUC (``metrics.roc_auc``: ties count half),
    resampling the negatives and the positives apart."""
    neg = negatives[torch.isfinite(negatives)].double()
    pos = positives[torch.isfinite(positives)].double()
    if not len(neg) or not len(pos):
        return None
    neg = neg.sort().values
    below = torch.searchsorted(neg, pos, right=False)  # negatives strictly below each positive
    upto = torch.searchsorted(neg, pos, right=True)  # ... below or tied
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, resamples, BLOCK):
        b = min(BLOCK, resamples - start)
        wn, wp = _counts(g, len(neg), b), _counts(g, len(pos), b)
        cum = torch.cat([torch.zeros(b, 1, dtype=torch.float64), wn.cumsum(1)], 1)  # cum[:, k]: weight of the k lowest
        wins = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])  # (b, n_pos): negatives each positive beats
        out.append((wp * wins).sum(1) / (len(pos) * len(neg)))
    return _percentiles(torch.cat(out), level)


def interval(
    records: dict[str, Tensor], metric: str, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """The ``level`` interval of ``metric`` over the examples of ``records`` (``None`` where
    the metric is undefined for them: no detector, no targeted example, no records).

    ``metric`` must be one of ``INTERVAL_METRICS``; norms and costs are not proportions and
    get none (a ``ValueError`` says so)."""
    if metric not in PROPORTIONS and metric not in AUCS:
        raise ValueError(f"no interval for metric {metric!r}: intervals exist for {', '.join(INTERVAL_METRICS)}")
    if not records or "label" not in records or not len(records["label"]):
        return None
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level must lie in (0, 1) and resamples be positive, got {level} and {resamples}")
    if metric in AUCS:
        if "clean_score" not in records:
            return None
        neg, pos = AUCS[metric](records)
        return auc_interval(neg, pos, level=level, resamples=resamples, seed=seed)
    if metric in ("detection_tpr", "accuracy_with_rejection", "detection_fpr") and "clean_rejected" not in records:
        return None
    hit, counted = PROPORTIONS[metric](records)
    return proportion_interval(hit, counted, level=level, resamples=resamples, seed=seed)


def intervals(
    records: dict[str, Tensor], metrics: Iterable[str] = INTERVAL_METRICS, **kw: Any
) -> dict[str, tuple[float, float]]:
    """The interval of each of ``metrics`` that is defined for ``records``."""
    out = {}
    for name in metrics:
        ci = interval(records, name, **kw)
        if ci is not None:
            out[name] = ci
    return out


def ci_columns(metric: str) -> tuple[str, str]:
    """The export columns of ``metric``'s interval: ``<metric>_ci_low``, ``<metric>_ci_high``."""
    return f"{metric}_ci_low", f"{metric}_ci_high"


def with_interval(value: str, ci: tuple[float, float] | None, fmt: str = ".4f") -> str:
    """A formatted value with its interval beside it: ``0.6100 [0.5540, 0.6640]``."""
    return value if ci is None else f"{value} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
