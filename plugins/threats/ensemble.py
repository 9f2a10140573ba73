"""Threat models of an ensemble: seed 002's Grad.1 (one member) and Grad.2 (mean of members' gradients)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from advx import AttackView, Ensemble, ThreatConfig, ThreatModel, hookimpl, mean_of_loss_gradients

NOT_AN_ENSEMBLE = "the defense is not an ensemble (its module does not implement advx.Ensemble)"


class MemberConfig(ThreatConfig):
    index: int = Field(0, ge=0, description="which member the attacker crafts on (0-based)")


class Member(ThreatModel):
    """Seed 002 "Grad.1": crafted on one member of the ensemble, scored on the whole ensemble."""

    name: ClassVar[str] = "member"
    Config = MemberConfig
    config: MemberConfig
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True

    def params(self) -> dict[str, Any]:
        return {"index": self.config.index, **super().params()}

    def not_applicable(self, target):
        if not isinstance(target, Ensemble):
            return NOT_AN_ENSEMBLE
        index = self.config.index
        if index >= target.num_members:
            return f"member index {index} is out of range: the ensemble has {target.num_members} members"
        return None

    def view(self, ws, cell, target):
        assert isinstance(target, Ensemble)
        return AttackView(target.member(self.config.index).eval(), self.defended_key(cell, "member", self.config.index))


class MemberMeanView(nn.Module):
    """The ensemble as the Grad.2 attacker sees it: same outputs, gradient = mean of members' loss gradients."""

    def __init__(self, ensemble: nn.Module) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: Tensor) -> Tensor:
        return mean_of_loss_gradients(self.ensemble.member_logits(x))  # type: ignore[operator]


class MemberMean(ThreatModel):
    """Seed 002 "Grad.2": the gradient is the mean of the members' loss gradients (not that of the averaged prediction)."""

    name: ClassVar[str] = "member-mean"

    def not_applicable(self, target):
        if not isinstance(target, Ensemble):
            return NOT_AN_ENSEMBLE
        return None

    def view(self, ws, cell, target):
        return AttackView(MemberMeanView(target).eval(), self.defended_key(cell, "member-mean"))


@hookimpl
def advx_register_threats():
    return [Member, MemberMean]
