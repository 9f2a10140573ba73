"""Detector-aware: seed 004 eq. 6, the adaptive attacker of a detector."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor, nn

from advx import AttackView, Detector, ThreatConfig, ThreatModel, hookimpl


class DetectorAwareConfig(ThreatConfig):
    alpha: float = Field(0.01, ge=0, description="weight of the detector's evasion term (seed 004 sweeps 1e-3, 1e-2, 1e-1, 1)")


class DetectorAwareView(nn.Module):
    """The detector as the adaptive attacker sees it: the classifier's logits, plus ``alpha`` times
    the detector's evasion terms on the gradient path only (forward values are unchanged, so
    the attack's own success checks see the real classifier)."""

    def __init__(self, detector: nn.Module, alpha: float) -> None:
        super().__init__()
        self.detector = detector
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        logits = self.detector(x)
        if self.alpha == 0:
            return logits
        e = self.detector.evasion_logits(x)  # type: ignore[operator]
        return logits + self.alpha * (e - e.detach())


class DetectorAware(ThreatModel):
    """Seed 004 eq. 6: maximise the classifier loss plus alpha times a term that pushes the input past the detector."""

    name: ClassVar[str] = "detector-aware"
    Config = DetectorAwareConfig
    config: DetectorAwareConfig

    def not_applicable(self, target):
        if not isinstance(target, Detector):
            return "the defense has no detector (its module does not implement advx.Detector)"
        return None

    def view(self, ws, cell, target):
        alpha = self.config.alpha
        return AttackView(DetectorAwareView(target, alpha).eval(), self.defended_key(cell, "detector-aware", alpha))


@hookimpl
def advx_register_threats():
    return [DetectorAware]
