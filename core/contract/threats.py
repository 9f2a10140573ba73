"""Threat models: what the attacker knows, as plugins with typed configs.

A threat model decides which module the attack crafts on (its *view*): the defended model
itself, the undefended base model, a substitute, one member of an ensemble, a module whose
gradient is the mean of the members' loss gradients, or the defended model with the
detector's evasion term on the gradient path. Attacks never know which: every attack works
under every threat model, and the kernel scores the crafted examples on the evaluated
(defended) model in all cases.

Threat models are plugins like attacks and defenses: a module returns ``ThreatModel``
subclasses from the ``advx_register_threats`` hook (the built-ins live in
``advx.plugins.threats``). Each has a pydantic ``Config`` (validated when the spec is
planned), a stable ``key`` (part of the cell key), a ``label`` (shown in tables) and
declares what it needs (``needs``: trained models beside the cell's own, e.g. a transfer
source or a gray-box copy) so that the kernel can plan, dry-run and pre-train them on any
executor without knowing the class. Its traits (``less_knowledge``, ``surrogate``) are
stored with every result row (``threat_traits``), so the sanity checks read the row. One
that does not apply to a cell (``member`` on a defense that is not an ``Ensemble``,
``detector-aware`` without a ``Detector``) says why in ``not_applicable``; the cell is then
recorded as not applicable with that reason, never as a failure and never dropped.

Every threat model has ``eot`` (default: 10 draws when the defense declares a randomised
input transform, else 1): the attacked module's output is the mean prediction over the
draws and its gradient the mean of the draws' loss gradients (Athalye et al. 2018), so a
random forward pass is not mistaken for robustness. Every threat model has ``bpda``
(default true): non-differentiable input transforms the defense declares
(``advx.InputTransform``) are attacked with an identity backward pass (Athalye et al.
2018), so a gradient attack measures the defense, not its missing gradients. With
``bpda = false`` a gradient attack on such a defense fails its cell with an error saying so.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from advx.contract.interfaces import Kind, Plugin, PluginConfig
from advx.contract.protocols import randomized_parts


class ThreatConfig(PluginConfig):
    """Fields every threat model has."""

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


@dataclass(frozen=True)
class Need:
    """A trained model a threat model's view needs besides the cell's own.

    ``model`` is a model reference of the spec (``cell.model``, ``cell.model.with_seed(s)``,
    a transfer ``source``); with ``defended`` the cell's defense is applied to it too.
    The kernel trains each need once per run whatever the executor, lists it in
    ``--dry-run``, and ships it to remote workers, from this declaration alone.
    """

    model: Any
    defended: bool = False
    what: str = ""


class ThreatModel(Plugin):
    """Base of the threat models; subclasses set ``name``, ``Config`` and ``view``."""

    kind: ClassVar[Kind] = "threat"
    Config: ClassVar[type[PluginConfig]] = ThreatConfig
    config: Any
    #: the attacker knows less than the white-box one: it must not do better (a sanity check)
    less_knowledge: ClassVar[bool] = False
    #: a source model is part of the config (``transfer``): the spec's ``source`` table is
    #: planned as a model (sweeps refused) and handed to the constructor
    takes_source: ClassVar[bool] = False
    #: the attack crafts on a stand-in for the scored model (a substitute, a copy, one
    #: member): success on what it sees is not success, so the kernel sets
    #: ``Attack.surrogate`` and attacks return their strongest point, not their first success
    surrogate: ClassVar[bool] = False

    def __init__(self, config: PluginConfig | None = None, source: Any = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.source = source

    @classmethod
    def traits(cls) -> dict[str, Any]:
        """What the threat model declares, stored with every row (the sanity checks read it)."""
        return {"less_knowledge": cls.less_knowledge, "surrogate": cls.surrogate}

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

    def needs(self, cell: Any) -> list[Need]:
        """The trained models ``view`` will ask the workspace for, besides the cell's own."""
        return []

    @abstractmethod
    def view(self, ws: Any, cell: Any, target: nn.Module) -> AttackView:
        """The module the attack crafts on; ``ws`` trains or loads the models it needs."""

    @staticmethod
    def defended_key(cell: Any, *extra: Any) -> list[Any]:
        """The view key of the cell's defended model (``extra`` tells apart views derived from it)."""
        return ["defended", cell.dataset.key(), cell.model.key(), cell.defense.key(), *extra]

    def eot_draws(self, module: nn.Module) -> int:
        """How many draws EOT averages over for ``module`` (the config, or 10 if it declares randomness)."""
        if self.config.eot is not None:
            return int(self.config.eot)
        return 10 if randomized_parts(module) else 1

    def attack_view(self, ws: Any, cell: Any, target: nn.Module) -> AttackView:
        """``view``, averaged over ``eot_draws`` draws when more than one."""
        v = self.view(ws, cell, target)
        k = self.eot_draws(v.module)
        if k == 1:
            return v
        return AttackView(EOTView(v.module, k).eval(), [v.key, "eot", k], v.reusable)


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


def mean_of_loss_gradients(member_logits: Tensor) -> Tensor:
    """``log(mean probability)`` over ``member_logits`` (M, batch, classes), whose gradient is
    the mean of the members' loss gradients (see ``_MeanOfLossGradients``): how seed 002's
    Grad.2 attacker and EOT see several outputs as one."""
    return _MeanOfLossGradients.apply(member_logits)  # type: ignore[no-any-return]


class EOTView(nn.Module):
    """A randomised module as the EOT attacker sees it: the mean prediction over ``draws`` forward
    passes, with the mean of the draws' loss gradients. Each call runs the module ``draws``
    times, which ``passes_per_call`` tells the kernel's pass counter (the cost columns count
    every draw)."""

    def __init__(self, module: nn.Module, draws: int) -> None:
        super().__init__()
        self.module = module
        self.draws = draws

    @property
    def passes_per_call(self) -> int:
        return self.draws

    def forward(self, x: Tensor) -> Tensor:
        return mean_of_loss_gradients(torch.stack([self.module(x) for _ in range(self.draws)]))
