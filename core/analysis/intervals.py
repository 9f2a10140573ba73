"""95% confidence intervals of a cell's metrics, from its per-example records.

A robust accuracy of 0.61 on 1,000 test examples and one of 0.61 on 100 are different
claims: the first is known to about three points, the second to about ten. Every proportion
(accuracies, success rates, error rates, the detector's rates) and every detector AUC gets
a percentile bootstrap interval over the evaluated examples: the examples are resampled
with replacement ``resamples`` times, the metric recomputed on each resample, and the
interval is the central ``level`` share of those values. For an AUC the positives
(adversarial examples) and the negatives (their clean originals) are resampled apart: two
independent draws of the examples, one weighting the clean scores, one the adversarial
ones (for ``detection_auc_fooled`` only the fooled examples' draws count).

Intervals are computed when rows are read, from the ``samples`` table, never stored: a
cell's records are its only copy of the evidence (a sharded cell's shards add up to one
cell's records), and the interval follows whatever records the reader sees. The random
generator has a fixed seed, so the same records give the same interval on every run and
machine (``advx results --ci`` output is reproducible and testable).

The bootstrap is vectorised and shared: a block of resamples is a matrix of how often each
example was drawn (a multinomial count per example), drawn once for every metric of the
cell, so all proportions of a resample are one matrix product and an AUC one cumulative sum
over the sorted negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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

def _fooled(s: dict[str, Tensor]) -> Tensor:
    return (s["adv_pred"] != s["label"]).nonzero().flatten()


#: AUC metrics as (negative scores, positive scores, the examples the positives belong to)
AUCS: dict[str, Callable[[dict[str, Tensor]], tuple[Tensor, Tensor, Tensor]]] = {
    "detection_auc": lambda s: (s["clean_score"], s["adv_score"], torch.arange(len(s["label"]))),
    "detection_auc_fooled": lambda s: (s["clean_score"], s["adv_score"][_fooled(s)], _fooled(s)),
}

#: every metric that gets an interval
INTERVAL_METRICS: tuple[str, ...] = (*PROPORTIONS, *AUCS)


#: below this many examples a cell's bootstrap runs on one thread: its matrices are too small
#: for torch's intra-op threads to pay for their start and, on a shared machine, their waits
#: (a 1,000-cell report's intervals: 0.8 s CPU on one thread, 14 s on two with the cores busy)
ONE_THREAD_BELOW = 5000


@contextmanager
def _threads_for(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if n >= ONE_THREAD_BELOW or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _counts(generator: torch.Generator, n: int, b: int) -> Tensor:
    """``b`` bootstrap resamples of ``n`` items, as a (b, n) matrix of how often each was drawn."""
    draws = torch.randint(n, (b, n), generator=generator)
    # float32 holds every count exactly (at most n < 2**24) and scatters twice as fast as float64
    return torch.zeros(b, n).scatter_add_(1, draws, torch.ones(b, n))


def _percentiles(values: Tensor, level: float) -> tuple[float, float] | None:
    values = values[torch.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2
    lo, hi = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype)).tolist()
    return float(lo), float(hi)


class _Auc:
    """One AUC's negatives and positives (indices into the examples), sorted for the bootstrap."""

    def __init__(self, negatives: Tensor, positives: Tensor, pos_index: Tensor) -> None:
        keep_neg = torch.isfinite(negatives)
        keep_pos = torch.isfinite(positives)
        order = negatives[keep_neg].double().argsort()
        self.neg_index = keep_neg.nonzero().flatten()[order]
        neg = negatives[self.neg_index].double()
        self.pos_index = pos_index[keep_pos]
        pos = positives[keep_pos].double()
        self.below = torch.searchsorted(neg, pos, right=False)  # negatives strictly below each positive
        self.upto = torch.searchsorted(neg, pos, right=True)  # ... below or tied
        self.empty = not len(self.neg_index) or not len(self.pos_index)

    def resampled(self, wn: Tensor, wp: Tensor) -> Tensor:
        """The AUC of each resample (rows of ``wn``, ``wp``: draws per example), ties counting half."""
        wn, wp = wn[:, self.neg_index].double(), wp[:, self.pos_index].double()
        cum = torch.cat([torch.zeros(len(wn), 1, dtype=torch.float64), wn.cumsum(1)], 1)  # cum[:, k]: weight of the k lowest
        wins = cum[:, self.below] + 0.5 * (cum[:, self.upto] - cum[:, self.below])  # negatives each positive beats
        return (wp * wins).sum(1) / (wp.sum(1) * wn.sum(1))


def intervals(
    records: dict[str, Tensor],
    metrics: Iterable[str] = INTERVAL_METRICS,
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, tuple[float, float]]:
    """The ``level`` interval of each of ``metrics`` that is defined for ``records`` (no detector,
    no targeted example, no records: left out).

    Every metric reads the same resamples: one draw of the examples serves every proportion
    (and the negatives of the AUCs), a second, independent one the AUCs' positives, so an
    interval is the same whichever other metrics are asked for, and a cell costs one
    bootstrap, not one per metric. ``metrics`` must be among ``INTERVAL_METRICS``: norms and
    costs are not proportions and get none (a ``ValueError`` says so)."""
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in PROPORTIONS and m not in AUCS]
    if unknown:
        raise ValueError(f"no interval for metric {unknown[0]!r}: intervals exist for {', '.join(INTERVAL_METRICS)}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level must lie in (0, 1) and resamples be positive, got {level} and {resamples}")
    if not records or "label" not in records or not len(records["label"]):
        return {}
    n = len(records["label"])
    has_detector = "clean_rejected" in records
    props: list[tuple[str, Tensor, Tensor]] = []
    for name in metrics:
        if name in PROPORTIONS and (has_detector or name not in ("detection_tpr", "accuracy_with_rejection", "detection_fpr")):
            hit, counted = PROPORTIONS[name](records)
            if bool(counted.any()):
                props.append((name, (hit.bool() & counted.bool()).float(), counted.float()))
    aucs: list[tuple[str, _Auc]] = []
    if "clean_score" in records:
        for name in metrics:
            if name in AUCS:
                auc = _Auc(*AUCS[name](records))
                if not auc.empty:
                    aucs.append((name, auc))
    if not props and not aucs:
        return {}
    with _threads_for(n):
        return _bootstrap(metrics, n, props, aucs, level, resamples, seed)


def _bootstrap(metrics: list[str], n: int, props: list[tuple[str, Tensor, Tensor]], aucs: list[tuple[str, "_Auc"]], level: float, resamples: int, seed: int) -> dict[str, tuple[float, float]]:
    examples, positives = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    hits = torch.stack([h for _, h, _ in props], 1) if props else None
    counted = torch.stack([c for _, _, c in props], 1) if props else None
    values: dict[str, list[Tensor]] = {name: [] for name, *_ in props + aucs}
    for start in range(0, resamples, BLOCK):
        b = min(BLOCK, resamples - start)
        wn = _counts(examples, n, b)
        if props:
            share = (wn @ hits).double() / (wn @ counted).double()  # exact sums of counts; 0/0 is NaN, dropped
            for j, (name, *_) in enumerate(props):
                values[name].append(share[:, j])
        if aucs:
            wp = _counts(positives, n, b)
            for name, auc in aucs:
                values[name].append(auc.resampled(wn, wp))
    out = {}
    for name in metrics:
        if name in values:
            ci = _percentiles(torch.cat(values[name]), level)
            if ci is not None:
                out[name] = ci
    return out


def interval(
    records: dict[str, Tensor], metric: str, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """The ``level`` interval of ``metric`` over the examples of ``records`` (``None`` where
    the metric is undefined for them); the same as ``intervals(records)[metric]``."""
    return intervals(records, [metric], level=level, resamples=resamples, seed=seed).get(metric)


def proportion_interval(
    hits: Tensor, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """The ``level`` interval of the share of true entries of ``hits``, one per example (e.g.
    robust under every attack of a worst case): the same bootstrap, with the same draws, as a
    cell's accuracies (``None`` for no examples)."""
    hits = torch.as_tensor(hits).bool().flatten()
    if not len(hits):
        return None
    zeros = torch.zeros(len(hits), dtype=torch.long)
    records = {"label": zeros, "clean_pred": zeros, "adv_pred": (~hits).long()}
    return interval(records, "adversarial_accuracy", level=level, resamples=resamples, seed=seed)


def breakdown_intervals(records: dict[str, Tensor], **kw: Any) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """The intervals of each group of the cell's breakdowns (``advx.analysis.metrics``):
    ``{"per_class": {"0": {metric: (lo, hi)}, ...}, "per_confidence": {"high": ..., ...}}``.

    Each group's interval is the bootstrap over that group's examples only (the examples of
    class 0 are resampled among themselves), so it says how well the group's own number is
    known: a minority class of 10 test examples gets a wide one. The groups are the
    breakdowns' own (true class; clean-confidence bucket); an empty group gets none.
    ``kw`` are ``intervals``' settings."""
    from advx.analysis.metrics import BUCKETS  # the buckets the breakdown itself uses

    if not records or "label" not in records or not len(records["label"]):
        return {}
    label = records["label"]

    def of(mask: Tensor) -> dict[str, tuple[float, float]]:
        return intervals({k: v[mask] for k, v in records.items()}, **kw) if bool(mask.any()) else {}

    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
        "per_class": {str(int(c)): of(label == c) for c in torch.unique(label).tolist()}
    }
    if "clean_conf" in records:
        conf = records["clean_conf"]
        out["per_confidence"] = {name: of((conf >= lo) & (conf < hi)) for name, lo, hi in BUCKETS}
    return out


def ci_columns(metric: str) -> tuple[str, str]:
    """The export columns of ``metric``'s interval: ``<metric>_ci_low``, ``<metric>_ci_high``."""
    return f"{metric}_ci_low", f"{metric}_ci_high"


def with_interval(value: str, ci: tuple[float, float] | None, fmt: str = ".4f") -> str:
    """A formatted value with its interval beside it: ``0.6100 [0.5540, 0.6640]``."""
    return value if ci is None else f"{value} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
