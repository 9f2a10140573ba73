"""White-box: the attacker sees the whole defended model."""

from __future__ import annotations

from typing import ClassVar

from advx import AttackView, ThreatModel, hookimpl


class WhiteBox(ThreatModel):
    """The attacker sees the whole defended model (gradients included); the default."""

    name: ClassVar[str] = "white-box"

    def view(self, ws, cell, target):
        return AttackView(target, self.defended_key(cell))


@hookimpl
def advx_register_threats():
    return [WhiteBox]
