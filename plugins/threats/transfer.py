"""Transfer: crafted on an independently trained substitute (seed 004: model E -> model F)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from advx import AttackView, Need, ThreatConfig, ThreatModel, hookimpl


class TransferConfig(ThreatConfig):
    source: Any = Field(description="the substitute model table, e.g. { name = \"mlp\", train = { seed = 1 } }")
    defended: bool = Field(False, description="apply the cell's defense to the substitute too")


class Transfer(ThreatModel):
    """Crafted on an independently trained substitute model (seed 004: model E -> model F)."""

    name: ClassVar[str] = "transfer"
    Config = TransferConfig
    config: TransferConfig
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True
    takes_source: ClassVar[bool] = True

    def label(self) -> str:
        assert self.source is not None
        base = f"transfer<-{self.source.label or self.source.describe()}"
        return base + ("(defended)" if self.config.defended else "")

    def needs(self, cell):
        what = "transfer source" + (", defended" if self.config.defended else "")
        return [Need(self.source, defended=self.config.defended, what=what)]

    def view(self, ws, cell, target):
        src = self.source
        assert src is not None
        if self.config.defended:
            m = ws.defended_model(cell.dataset, src, cell.defense, cell=cell)
            return AttackView(m, ["defended", cell.dataset.key(), src.key(), cell.defense.key()], reusable=True)
        return AttackView(ws.base_model(cell.dataset, src, cell=cell), ["base", cell.dataset.key(), src.key()], reusable=True)


@hookimpl
def advx_register_threats():
    return [Transfer]
