"""Undefended: crafted on the trained base model, blind to the defense."""

from __future__ import annotations

from typing import ClassVar

from advx import AttackView, Need, ThreatModel, hookimpl


class Undefended(ThreatModel):
    """The attacker sees the trained base model, not the defense."""

    name: ClassVar[str] = "undefended"
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True

    def needs(self, cell):
        return [Need(cell.model, what="base model")]

    def view(self, ws, cell, target):
        base = ws.base_model(cell.dataset, cell.model, cell=cell)
        return AttackView(base, ["base", cell.dataset.key(), cell.model.key()], reusable=True)


@hookimpl
def advx_register_threats():
    return [Undefended]
