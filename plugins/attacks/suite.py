"""``suite`` (L-inf) and ``suite-l2``: a list of attacks run one after the other per example,
keeping the first success, as the standard version of AutoAttack (Croce and Hein,
"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020): APGD-CE, APGD-T, FAB-T, Square (the default list).

Each member runs only on the examples that every earlier member (and the clean input)
left unbroken, so the suite costs little more than its strongest member where that one
succeeds, and its robust accuracy is the per-example worst case over the members.
Inside each member, with ``early_exit`` (default; ``Attack.exits_early``), an example
also leaves the member's batch at the first iterate that fools the model (APGD's steps,
FAB's steps, Square's queries). Random starts and Square's search are drawn per example
(``Attack.noise``), each member and target from its own stream, so the suite's result
does not depend on the batch size.

**Targets** of ``apgd-t`` and ``fab-t`` (``target_selection``, ``_common.target_ranking``):
``"logit"`` (default), the classes of highest clean logit after the top one, as AutoAttack;
``"malt"``, the classes whose linearised boundary is nearest (logit gap over the dual norm
of its gradient, among the 20 highest logits; MALT, Melamed et al., NeurIPS 2024, which
matched AutoAttack with fewer, better chosen targets). ``target_classes`` is how many
(AutoAttack: 9): the targeted members' cost on the examples that survive is proportional
to it.

Members (``attacks``, in order):

* ``apgd-ce``: APGD on cross-entropy (``apgd.py``), ``steps`` iterations, one start;
* ``apgd-t``: APGD on the targeted DLR loss towards each of ``target_classes`` targets, in
  turn (AutoAttack's APGD-T: a targeted loss, untargeted success); with a targeted label
  mode, one run towards the given target;
* ``fab-t``: FAB-T (``fab.py``, or ``fab-l2``): the minimum-norm Fast Adaptive Boundary
  attack towards each of ``target_classes`` targets, in turn, ``steps`` iterations, one run from the input (AutoAttack's standard
  settings: alpha_max 0.1, eta 1.05, beta 0.9); with a targeted label mode, one run
  towards the given target. Examples it brings inside eps count; the others are left
  to the next member;
* ``apgd-dlr``: APGD on the untargeted DLR loss, the scale-invariant second loss of
  AutoAttack's other versions; not in the default list (it stood in for FAB-T before FAB
  was implemented here, and remains selectable, e.g. ``["apgd-ce", "apgd-t", "apgd-dlr",
  "square"]`` as earlier runs);
* ``square``: the gradient-free Square Attack (``square.py``), ``queries`` queries; with
  ``square_hopeless_after`` > 0 an example whose margin is not closing fast enough leaves
  the search early (``square.py``: ``hopeless_after``).

**Which member broke each example:** after every call, ``self.broken_by`` is a long
tensor of shape ``(N,)`` on the batch's device: the index in ``attacks`` of the member
whose output is returned for that example, ``-1`` where none succeeded, ``-2`` where
the clean input already succeeded (not attacked). ``member_names`` gives the names. The
kernel stores it with the cell (``metrics.attack_info.broken_by``, in example order)
through ``batch_info``; the indices refer to the cell's ``attack_config.attacks``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from advx import Attack, AttackConfig, hookimpl

from ._common import TargetSelection, early_exit_field, is_success, target_ranking, target_selection_field
from .apgd import apgd_run, random_sphere_start
from .fab import FAB, FABL2
from .square import Square, SquareL2, hopeless_after_field

Member = Literal["apgd-ce", "apgd-t", "fab-t", "apgd-dlr", "square"]
STANDARD: list[str] = ["apgd-ce", "apgd-t", "fab-t", "square"]


class _SuiteConfig(AttackConfig):
    attacks: list[Member] = Field(
        default_factory=lambda: list(STANDARD), min_length=1,
        description="members in order; each runs on what the earlier left unbroken (default: AutoAttack's standard list)",
    )
    steps: int = Field(100, ge=1, le=100000, description="iterations of each APGD and FAB run (AutoAttack: 100)")
    target_classes: int = Field(9, ge=1, le=1000, description="apgd-t and fab-t: number of targets tried, best first (AutoAttack: 9)")
    target_selection: TargetSelection = target_selection_field()
    queries: int = Field(5000, ge=1, le=1000000, description="square: query budget per example (AutoAttack: 5000)")
    square_hopeless_after: float = hopeless_after_field("square's hopeless_after: ")
    seed: int = Field(0, ge=0, description="seed of the random starts and of Square's search")
    early_exit: bool = early_exit_field()


class _SuiteBase(Attack):
    iterative: ClassVar[bool] = True
    square_cls: ClassVar[type[Attack]] = Square
    fab_cls: ClassVar[type[Attack]] = FAB

    @classmethod
    def min_classes(cls, config):
        # apgd-t runs the targeted DLR loss (four largest logits) in every label mode, apgd-dlr
        # the untargeted one (three) or, in a targeted mode, the targeted one (_common.dlr_loss)
        need = {"apgd-t": 4, "apgd-dlr": 4 if config.targeted else 3}
        return max(need.get(m, 2) for m in config.attacks)

    @property
    def member_names(self) -> list[str]:
        return list(self.config.attacks)

    def batch_info(self):
        return {"broken_by": self.broken_by}

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        x = x.detach()
        n = len(x)
        noise = self.noise(x, c.seed)
        out = x.clone()
        with torch.no_grad():
            clean_logits = model(x)
        done = is_success(clean_logits, y, targeted)
        broken_by = torch.full((n,), -1, dtype=torch.long, device=x.device)
        broken_by[done] = -2
        for m, member in enumerate(c.attacks):
            idx = (~done).nonzero().squeeze(1)  # one host synchronisation per member
            if idx.numel() == 0:
                break
            adv = self._run(member, model, x[idx], y[idx], clean_logits[idx], bounds, targeted, noise[idx])
            with torch.no_grad():
                ok = is_success(model(adv), y[idx], targeted)
            hit = idx[ok]
            out[hit] = adv[ok]
            done[hit] = True
            broken_by[hit] = m
        self.broken_by = broken_by
        return out

    def _apgd(self, model, x, y, bounds, noise, stream, loss, targeted, true=None):
        c = self.config
        start = random_sphere_start(x, c.eps, self.norm, noise, stream).add_(x).clamp_(*bounds)
        adv, _, _ = apgd_run(
            model, x, y, start, loss=loss, targeted=targeted, norm=self.norm, eps=c.eps, steps=c.steps,
            bounds=bounds, true=true, early_exit=self.exits_early,
        )
        return adv

    def _member(self, cls, params, noise):
        """The suite's ``fab-t`` or ``square`` member as an attack of its own, seeing what the suite
        sees: the examples' draws (``noise``), the stand-in and random-module flags, the switch."""
        c = self.config
        member = cls(cls.validate_config({"eps": c.eps, "seed": c.seed, "early_exit": c.early_exit, **params}))
        member.begin_batch(getattr(self, "_batch_seed", None) or 0, noise)
        member.surrogate, member.random_view = self.surrogate, self.random_view
        return member

    def _run(self, member, model, x, y, clean_logits, bounds, targeted, noise):
        c = self.config
        if member == "apgd-ce":
            return self._apgd(model, x, y, bounds, noise, ("apgd-start", 0), "ce", targeted)
        if member == "apgd-dlr":
            return self._apgd(model, x, y, bounds, noise, ("apgd-start", 0), "dlr", targeted)
        if member == "apgd-t":
            if targeted:
                return self._apgd(model, x, y, bounds, noise, ("apgd-t-start", 0), "dlr", True)
            ranked = target_ranking(model, x, y, clean_logits, c.target_classes, c.target_selection, self.norm)
            out, left = x.clone(), torch.arange(len(x), device=x.device)
            for t in range(ranked.shape[1]):
                target = ranked[left, t]
                adv = self._apgd(model, x[left], target, bounds, noise[left], ("apgd-t-start", t), "dlr", True, true=y[left])
                out[left] = adv
                with torch.no_grad():
                    ok = is_success(model(adv), y[left], False)
                left = left[~ok]
                if left.numel() == 0:
                    break
            return out
        if member == "fab-t":
            params = {"steps": c.steps, "target_classes": c.target_classes, "target_selection": c.target_selection}
            fab = self._member(self.fab_cls, params, noise)
            return fab.perturb(model, x, y, bounds, targeted)
        square = self._member(self.square_cls, {"queries": c.queries, "hopeless_after": c.square_hopeless_after}, noise)
        return square.perturb(model, x, y, bounds, targeted)


class Suite(_SuiteBase):
    """AutoAttack-style suite, L-inf: apgd-ce, apgd-t, fab-t, square; first success kept."""

    name: ClassVar[str] = "suite"
    norm: ClassVar[str] = "linf"
    single_step: ClassVar[str | None] = "fgsm"

    class Config(_SuiteConfig):
        eps: float = Field(0.3, gt=0, description="L-inf budget in input units (MNIST 0.3, CIFAR-10 8/255)")


class SuiteL2(_SuiteBase):
    """AutoAttack-style suite, L2: the same members with L2 APGD, fab-l2 and square-l2."""

    name: ClassVar[str] = "suite-l2"
    norm: ClassVar[str] = "l2"
    square_cls: ClassVar[type[Attack]] = SquareL2
    fab_cls: ClassVar[type[Attack]] = FABL2

    class Config(_SuiteConfig):
        eps: float = Field(2.0, gt=0, description="L2 budget in input units (MNIST 2.0, CIFAR-10 0.5)")


@hookimpl
def advx_register_attacks():
    return [Suite, SuiteL2]
