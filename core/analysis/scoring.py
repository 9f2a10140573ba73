"""Scoring: the evaluated model's per-example outcomes on clean and adversarial inputs.

One record per example, with exactly the columns of ``advx.analysis.records.SAMPLE_COLUMNS``; every
aggregate (``advx.analysis.metrics``), breakdown and worst case is derived from these records, so
they cannot disagree. A module that is an ``advx.Detector`` also gets its scores and
rejections recorded for both inputs; other modules get NaN scores and ``-1`` rejections.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advx.runtime.crafting import Crafted
from advx.runtime.guards import perturbation_norms
from advx.contract.protocols import Detector
from advx.analysis.records import SAMPLE_COLUMNS


def _detection(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    n = len(x)
    if not isinstance(model, Detector):
        return torch.full((n,), float("nan")), torch.full((n,), -1, dtype=torch.int64)
    score = model.detector_score(x).detach().float().flatten().cpu()
    rejected = model.rejects(x).detach().flatten().cpu().long()
    return score, rejected


@torch.no_grad()
def score(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    crafted: Crafted,
    device: torch.device,
    batch_size: int,
    index: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-example outcomes of ``model`` on clean ``x`` and on ``crafted.x_adv``."""
    cols: dict[str, list[Tensor]] = {c.name: [] for c in SAMPLE_COLUMNS}
    index = torch.arange(len(x)) if index is None else index
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        xb, xa, yb = x[sl].to(device), crafted.x_adv[sl].to(device), y[sl]
        p_clean = model(xb).float().softmax(1).cpu()
        logits_adv = model(xa).float()
        p_adv = logits_adv.softmax(1).cpu()
        top5 = logits_adv.topk(min(5, logits_adv.shape[1]), dim=1).indices.cpu()
        linf, l2 = perturbation_norms(xb, xa)
        clean_score, clean_rej = _detection(model, xb)
        adv_score, adv_rej = _detection(model, xa)
        batch = {
            "idx": index[sl],
            "label": yb,
            "clean_pred": p_clean.argmax(1),
            "clean_conf": p_clean.max(1).values,
            "adv_pred": p_adv.argmax(1),
            "adv_conf": p_adv.max(1).values,
            "adv_top5": (top5 == yb[:, None]).any(1),
            "target": crafted.target[sl],
            "linf": linf.cpu(),
            "l2": l2.cpu(),
            "clean_score": clean_score,
            "adv_score": adv_score,
            "clean_rejected": clean_rej,
            "adv_rejected": adv_rej,
        }
        for c in SAMPLE_COLUMNS:
            cols[c.name].append(batch[c.name].to(c.dtype))
    return {c.name: torch.cat(cols[c.name]) if cols[c.name] else torch.empty(0, dtype=c.dtype) for c in SAMPLE_COLUMNS}
