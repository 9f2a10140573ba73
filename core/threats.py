"""Threat models: what the attacker knows, as kernel objects with typed configs.

A threat model decides which module the attack crafts on (its *view*): the defended model
itself, the undefended base model, a substitute, one member of an ensemble, a module whose
gradient is the mean of the members' loss gradients, or the defended model with the
detector's evasion term on the gradient path. Attacks never know which: every attack works
under every threat model, and the kernel scores the crafted examples on the evaluated
(defended) model in all cases.

Each threat model has a pydantic ``Config`` (validated when the spec is planned), a stable
``key`` (part of the cell key) and a ``label`` (shown in tables). One that does not apply
to a cell (``member`` on a defense that is not an ``Ensemble``, ``detector-aware`` without a
``Detector``) says why in ``not_applicable``; the cell is then recorded as not applicable
with that reason, never as a failure and never dropped.

Every threat model has ``eot`` (default: 10 draws when the defense declares a randomised
input transform, else 1): the attacked module's output is the mean prediction over the
draws and its gradient the mean of the draws' loss gradients (Athalye et al. 2018), so a
random forward pass is not mistaken for robustness. Every threat model has ``bpda`` (default true): non-differentiable input transforms the
defense declares (``advx.InputTransform``) are attacked with an identity backward pass
(Athalye et al. 2018), so a gradient attack measures the defense, not its missing
gradients. With ``bpda = false`` a gradient attack on such a defense fails its cell with an
error saying so.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .errors import ConfigError, suggest
from .protocols import Detector, Ensemble, randomized_parts

if TYPE_CHECKING:
    from .spec import PluginRef


class ThreatConfig(BaseModel):
    """Fields every threat model has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bpda: bool = Field(
        True,
        description="attack non-differentiable input transforms through an identity backward pass (BPDA)",
    )
    eot: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=(
            "expectation over transformation: average the loss gradient over this many draws of a randomised "
            "defense (default: 10 when the defense declares a randomised part, else 1)"
        ),
    )


@dataclass(frozen=True)
class AttackView:
    """The module an attack crafts on under a threat model.

    ``key`` identifies the module; when ``reusable`` the crafted examples do not depend on
    the evaluated defense, so every cell with the same key, attack and examples reuses them.
    """

    module: nn.Module
    key: Any
    reusable: bool = False


class ThreatModel(ABC):
    """Base of the threat models; subclasses set ``name``, ``Config`` and ``view``."""

    name: ClassVar[str]
    Config: ClassVar[type[ThreatConfig]] = ThreatConfig
    #: the attacker knows less than the white-box one: it must not do better (a sanity flag)
    less_knowledge: ClassVar[bool] = False
    #: a source model is part of the config (``transfer``)
    takes_source: ClassVar[bool] = False
    #: the attack crafts on a stand-in for the scored model (a substitute, a copy, one
    #: member): success on what it sees is not success, so the kernel sets
    #: ``Attack.surrogate`` and attacks return their strongest point, not their first success
    surrogate: ClassVar[bool] = False

    def __init__(self, config: ThreatConfig, source: PluginRef | None = None) -> None:
        self.config = config
        self.source = source

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def params(self) -> dict[str, Any]:
        """The config values that differ from the defaults (shown in the label)."""
        fields = type(self.config).model_fields
        return {
            k: v for k, v in self.config.model_dump(mode="json", exclude={"source"}).items() if v != fields[k].default
        }

    def key(self) -> Any:
        return [self.name, self.config.model_dump(mode="json", exclude={"source"}), self.source.key() if self.source else None]

    def label(self) -> str:
        p = self.params()
        return self.name + ("(" + ", ".join(f"{k}={v}" for k, v in p.items()) + ")" if p else "")

    def as_dict(self) -> dict[str, Any]:
        """The config as stored with each result row."""
        d: dict[str, Any] = {"name": self.name, **self.config.model_dump(mode="json", exclude={"source"})}
        if self.source is not None:
            d["source"] = self.source.as_dict()
        return d

    def not_applicable(self, target: nn.Module) -> str | None:
        """Why this threat model cannot be applied to ``target``, or ``None``."""
        return None

    @abstractmethod
    def view(self, ws: Any, cell: Any, target: nn.Module) -> AttackView:
        """The module the attack crafts on; ``ws`` trains or loads the models it needs."""

    def eot_draws(self, module: nn.Module) -> int:
        """How many draws EOT averages over for ``module`` (the config, or 10 if it declares randomness)."""
        if self.config.eot is not None:
            return self.config.eot
        return 10 if randomized_parts(module) else 1

    def attack_view(self, ws: Any, cell: Any, target: nn.Module) -> AttackView:
        """``view``, averaged over ``eot_draws`` draws when more than one."""
        v = self.view(ws, cell, target)
        k = self.eot_draws(v.module)
        if k == 1:
            return v
        return AttackView(EOTView(v.module, k).eval(), [v.key, "eot", k], v.reusable)


def _cell_key(cell: Any, *extra: Any) -> list[Any]:
    return ["defended", cell.dataset.key(), cell.model.key(), cell.defense.key(), *extra]


class WhiteBox(ThreatModel):
    """The attacker sees the whole defended model (gradients included); the default."""

    name: ClassVar[str] = "white-box"

    def view(self, ws, cell, target):
        return AttackView(target, _cell_key(cell))


class Undefended(ThreatModel):
    """The attacker sees the trained base model, not the defense."""

    name: ClassVar[str] = "undefended"
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True

    def view(self, ws, cell, target):
        base = ws.base_model(cell.dataset, cell.model, cell=cell)
        return AttackView(base, ["base", cell.dataset.key(), cell.model.key()], reusable=True)


class TransferConfig(ThreatConfig):
    source: Any = Field(description="the substitute model table, e.g. { name = \"mlp\", train = { seed = 1 } }")
    defended: bool = Field(False, description="apply the cell's defense to the substitute too")


class Transfer(ThreatModel):
    """Crafted on an independently trained substitute model (seed 004: model E -> model F)."""

    name: ClassVar[str] = "transfer"
    Config: ClassVar[type[ThreatConfig]] = TransferConfig
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True
    takes_source: ClassVar[bool] = True

    def label(self) -> str:
        assert self.source is not None
        base = f"transfer<-{self.source.label or self.source.describe()}"
        return base + ("(defended)" if self.config.defended else "")  # type: ignore[attr-defined]

    def view(self, ws, cell, target):
        src = self.source
        assert src is not None
        if self.config.defended:  # type: ignore[attr-defined]
            m = ws.defended_model(cell.dataset, src, cell.defense, cell=cell)
            return AttackView(m, ["defended", cell.dataset.key(), src.key(), cell.defense.key()], reusable=True)
        return AttackView(ws.base_model(cell.dataset, src, cell=cell), ["base", cell.dataset.key(), src.key()], reusable=True)


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
    Config: ClassVar[type[ThreatConfig]] = GrayBoxConfig
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True

    def not_applicable(self, target):
        if self.config.detector_alpha is not None and not isinstance(target, Detector):  # type: ignore[attr-defined]
            return "detector_alpha needs a detector (the defense's module does not implement advx.Detector)"
        return None

    def view(self, ws, cell, target):
        if ws.plugin(cell.model).pretrained:
            # a copy "trained with another seed" would be the same file: a white-box attack
            # labelled gray-box, whose number would read as robustness to a weaker attacker
            raise ConfigError(f'gray-box: model "{cell.model.name}" is loaded with its weights, so it has no copy trained with another seed')
        seed = self.config.seed  # type: ignore[attr-defined]
        if seed is None:
            seed = (cell.model.train.seed if cell.model.train is not None else 0) + 1
        m = ws.defended_model(cell.dataset, cell.model, cell.defense, seed=seed, cell=cell)
        alpha = self.config.detector_alpha  # type: ignore[attr-defined]
        if alpha is None:
            return AttackView(m, _cell_key(cell, seed), reusable=True)
        # the adaptive attacker of seed 004 eq. 6, on its own copy and that copy's detector
        return AttackView(DetectorAwareView(m, alpha).eval(), _cell_key(cell, seed, "detector-aware", alpha), reusable=True)


# -- ensembles ------------------------------------------------------------------------------------


class MemberConfig(ThreatConfig):
    index: int = Field(0, ge=0, description="which member the attacker crafts on (0-based)")


class Member(ThreatModel):
    """Seed 002 "Grad.1": crafted on one member of the ensemble, scored on the whole ensemble."""

    name: ClassVar[str] = "member"
    Config: ClassVar[type[ThreatConfig]] = MemberConfig
    less_knowledge: ClassVar[bool] = True
    surrogate: ClassVar[bool] = True

    def params(self) -> dict[str, Any]:
        return {"index": self.config.index, **super().params()}  # type: ignore[attr-defined]

    def not_applicable(self, target):
        if not isinstance(target, Ensemble):
            return "the defense is not an ensemble (its module does not implement advx.Ensemble)"
        index = self.config.index  # type: ignore[attr-defined]
        if index >= target.num_members:
            return f"member index {index} is out of range: the ensemble has {target.num_members} members"
        return None

    def view(self, ws, cell, target):
        assert isinstance(target, Ensemble)
        return AttackView(target.member(self.config.index).eval(), _cell_key(cell, "member", self.config.index))  # type: ignore[attr-defined]


class _MeanOfLossGradients(torch.autograd.Function):
    """Forward: ``log(mean probability)`` over stacked logits. Backward: the mean of their loss gradients.

    Used for an ensemble's members (seed 002's Grad.2) and for EOT's draws of a randomised
    defense: the mean over members (draws) of the gradient of the loss J evaluated at each
    member's own logits. The loss is the attack's, which the module cannot see; but the
    gradient that reaches the output tells it for cross-entropy, the J of the paper and of
    every CE-based attack (FGSM, BIM, PGD, iterative-l2): for CE on label y scaled by c
    (c < 0 for a targeted attack's -CE, 1/N for a mean reduction) the incoming gradient is
    ``c * (p_bar - e_y)``. Where it has that form, member m receives ``c * (p_m - e_y) / M``,
    exactly the gradient of ``c * CE(z_m, y) / M``. Where it does not (a margin or DLR
    loss), member m receives the incoming gradient through its own log-softmax, ``(g -
    p_m * sum(g)) / M``: the loss's gradient at the ensemble output, followed back through
    each member.
    """

    @staticmethod
    def forward(ctx, member_logits: Tensor) -> Tensor:  # type: ignore[override]
        logp = member_logits.log_softmax(-1)
        out = torch.logsumexp(logp, 0) - math.log(logp.shape[0])
        ctx.save_for_backward(logp, out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        logp, out = ctx.saved_tensors
        m = logp.shape[0]
        p, pbar = logp.exp(), out.exp()
        c, y, ok = _ce_pattern(g, pbar)
        onehot = torch.zeros_like(pbar).scatter_(1, y[:, None], 1.0)
        ce_grad = c[None, :, None] * (p - onehot[None])
        generic = g[None] - p * g.sum(-1, keepdim=True)[None]
        return torch.where(ok[None, :, None], ce_grad, generic) / m


def _ce_pattern(g: Tensor, pbar: Tensor, rtol: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, ``(c, y, ok)`` with ``g ≈ c * (pbar - e_y)`` where ``ok``."""
    best_c = torch.zeros(len(g), dtype=g.dtype, device=g.device)
    best_y = torch.zeros(len(g), dtype=torch.long, device=g.device)
    best_r = torch.full((len(g),), math.inf, dtype=g.dtype, device=g.device)
    for y in (g.argmin(1), g.argmax(1)):  # c > 0 (CE ascent), c < 0 (targeted -CE)
        py = pbar.gather(1, y[:, None]).squeeze(1)
        gy = g.gather(1, y[:, None]).squeeze(1)
        c = -gy / (1 - py).clamp(min=1e-12)
        onehot = torch.zeros_like(pbar).scatter_(1, y[:, None], 1.0)
        r = (g - c[:, None] * (pbar - onehot)).abs().amax(1)
        better = r < best_r
        best_c, best_y, best_r = torch.where(better, c, best_c), torch.where(better, y, best_y), torch.where(better, r, best_r)
    scale = g.abs().amax(1)
    ok = best_r <= rtol * scale + 1e-12
    return best_c, best_y, ok


class EOTView(nn.Module):
    """A randomised module as the EOT attacker sees it: the mean prediction over ``draws`` forward
    passes, with the mean of the draws' loss gradients."""

    def __init__(self, module: nn.Module, draws: int) -> None:
        super().__init__()
        self.module = module
        self.draws = draws

    def forward(self, x: Tensor) -> Tensor:
        return _MeanOfLossGradients.apply(torch.stack([self.module(x) for _ in range(self.draws)]))  # type: ignore[no-any-return]


class MemberMeanView(nn.Module):
    """The ensemble as the Grad.2 attacker sees it: same outputs, gradient = mean of members' loss gradients."""

    def __init__(self, ensemble: nn.Module) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: Tensor) -> Tensor:
        return _MeanOfLossGradients.apply(self.ensemble.member_logits(x))  # type: ignore[operator, no-any-return]


class MemberMean(ThreatModel):
    """Seed 002 "Grad.2": the gradient is the mean of the members' loss gradients (not that of the averaged prediction)."""

    name: ClassVar[str] = "member-mean"

    def not_applicable(self, target):
        if not isinstance(target, Ensemble):
            return "the defense is not an ensemble (its module does not implement advx.Ensemble)"
        return None

    def view(self, ws, cell, target):
        return AttackView(MemberMeanView(target).eval(), _cell_key(cell, "member-mean"))


# -- detectors ------------------------------------------------------------------------------------


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
    Config: ClassVar[type[ThreatConfig]] = DetectorAwareConfig

    def not_applicable(self, target):
        if not isinstance(target, Detector):
            return "the defense has no detector (its module does not implement advx.Detector)"
        return None

    def view(self, ws, cell, target):
        alpha = self.config.alpha  # type: ignore[attr-defined]
        return AttackView(DetectorAwareView(target, alpha).eval(), _cell_key(cell, "detector-aware", alpha))


THREATS: dict[str, type[ThreatModel]] = {
    cls.name: cls for cls in (WhiteBox, Undefended, Transfer, GrayBox, Member, MemberMean, DetectorAware)
}


def threat_class(name: str, where: str = "threats") -> type[ThreatModel]:
    """The threat model called ``name``; a one-line error with suggestions otherwise."""
    try:
        return THREATS[name]
    except KeyError:
        raise ConfigError(
            f"{where}: unknown threat model {name!r}{suggest(name, THREATS)}; known: {', '.join(THREATS)}"
        ) from None


def less_knowledge(name: str | None) -> bool:
    """Whether the threat model called ``name`` knows less than the white-box attacker."""
    cls = THREATS.get(name or "")
    return bool(cls and cls.less_knowledge)

