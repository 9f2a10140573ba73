"""Gray-box: crafted on an independently trained copy of the same architecture and defense."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from advx import AttackView, ConfigError, Detector, Need, ThreatConfig, ThreatModel, hookimpl
from advx.plugins.threats.detector_aware import DetectorAwareView


class GrayBoxConfig(ThreatConfig):
    seed: int | None = Field(None, description="training seed of the attacker's copy (default: the model's seed + 1)")
    detector_alpha: float | None = Field(
        None,
        ge=0,
        description="seed 004 eq. 6 on the attacker's copy: its own detector's evasion term with this weight "
        "(Table 7's 'Target' column; the defense must be a detector); none: the plain loss",
    )


class GrayBox(ThreatModel):
    """Crafted on an independently trained copy of the same architecture and defense (another seed)."""

    name: ClassVar[str] = "gray-box"
    Config = GrayBoxConfig
    config: GrayBoxConfig
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True

    def not_applicable(self, target):
        if self.config.detector_alpha is not None and not isinstance(target, Detector):
            return "detector_alpha needs a detector (the defense's module does not implement advx.Detector)"
        return None

    def copy_seed(self, cell) -> int:
        """The attacker's copy's training seed: the config's, or the model's seed + 1."""
        if self.config.seed is not None:
            return self.config.seed
        return (cell.model.train.seed if cell.model.train is not None else 0) + 1

    def needs(self, cell):
        seed = self.copy_seed(cell)
        return [Need(cell.model.with_seed(seed), defended=True, what=f"gray-box copy, seed {seed}")]

    def view(self, ws, cell, target):
        if ws.plugin(cell.model).pretrained:
            # a copy "trained with another seed" would be the same file: a white-box attack
            # labelled gray-box, whose number would read as robustness to a weaker attacker
            raise ConfigError(f'gray-box: model "{cell.model.name}" is loaded with its weights, so it has no copy trained with another seed')
        seed = self.copy_seed(cell)
        m = ws.defended_model(cell.dataset, cell.model, cell.defense, seed=seed, cell=cell)
        alpha = self.config.detector_alpha
        if alpha is None:
            return AttackView(m, self.defended_key(cell, seed), reusable=True)
        # the adaptive attacker of seed 004 eq. 6, on its own copy and that copy's detector
        return AttackView(DetectorAwareView(m, alpha).eval(), self.defended_key(cell, seed, "detector-aware", alpha), reusable=True)


@hookimpl
def advx_register_threats():
    return [GrayBox]
