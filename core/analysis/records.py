"""The per-example record: one row per evaluated example, the unit every analysis reads.

``scoring.score`` produces records with exactly these columns, ``metrics`` aggregates them,
the store keeps them (the ``samples`` table) so later analyses (worst case over attacks,
breakdowns, detection curves, confidence intervals) need no rerun.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleColumn:
    """One column of the per-sample table: a tensor of this dtype in the records."""

    name: str
    dtype: torch.dtype
    description: str = ""

    @property
    def sql(self) -> str:
        return "REAL" if self.dtype.is_floating_point else "INTEGER"


SAMPLE_COLUMNS: tuple[SampleColumn, ...] = (
    SampleColumn("idx", torch.int64, "index of the example in the test split"),
    SampleColumn("label", torch.int64, "true class"),
    SampleColumn("clean_pred", torch.int64, "prediction on the clean example"),
    SampleColumn("clean_conf", torch.float32, "top-1 probability on the clean example"),
    SampleColumn("adv_pred", torch.int64, "prediction on the adversarial example"),
    SampleColumn("adv_conf", torch.float32, "top-1 probability on the adversarial example"),
    SampleColumn("adv_top5", torch.int64, "1 if the true class is in the adversarial top 5"),
    SampleColumn("target", torch.int64, "the attack's target class, -1 when untargeted"),
    SampleColumn("linf", torch.float32, "L-inf norm of the perturbation"),
    SampleColumn("l2", torch.float32, "L2 norm of the perturbation"),
    SampleColumn("clean_score", torch.float32, "detector score of the clean example (NaN: no detector)"),
    SampleColumn("adv_score", torch.float32, "detector score of the adversarial example"),
    SampleColumn("clean_rejected", torch.int64, "1 if the detector rejects the clean example, -1: no detector"),
    SampleColumn("adv_rejected", torch.int64, "1 if the detector rejects the adversarial example, -1: no detector"),
)
SAMPLE_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SAMPLE_COLUMNS)
