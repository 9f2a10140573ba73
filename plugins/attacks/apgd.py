"""``apgd-ce``, ``apgd-dlr`` (L-inf) and ``apgd-ce-l2``, ``apgd-dlr-l2``: Auto-PGD (Croce and
Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020).

PGD without a step size to tune: the step starts at 2 eps and is halved, per example, at
checkpoints (after 22% of the iterations, then at intervals shrinking by 3% of the budget
down to 6%) when the loss went up in fewer than ``rho`` of the steps since the last
checkpoint, or when the best loss has not moved since a checkpoint that did not halve;
after a halving the example restarts from its best point. Each step mixes the gradient
step with the previous move (momentum 0.75: x_{k+1} = x_k + 0.75 (z - x_k) + 0.25
(x_k - x_{k-1}), both projected). The loss is cross-entropy, in float64 (``apgd-ce``;
``_common.ce_loss`` says why) or the
difference of logits ratio (``apgd-dlr``: shift- and scale-invariant, for models whose
logits are rescaled; targeted label modes use the targeted DLR of the paper, see
``_common.dlr_loss``). Random start at a random point of the sphere of radius eps
(AutoAttack's), drawn per example (``Attack.noise``: the same for any batch size);
``restarts`` reruns the examples not yet broken from new starts. Examples the clean
input already breaks are not attacked (one forward), as AutoAttack. With ``early_exit``
(default; ``Attack.exits_early``) an example also leaves a run at the first iterate
that fools the model (one host synchronisation per step): the same examples are broken,
for fewer passes.

Every iterate is scored on the logits of the forward pass that also gives its gradient:
an example is returned at the last iterate that was adversarial (AutoAttack's choice;
the first, with early exit), else at the point of highest loss, so a success seen during
the iterations is never lost. Without early exit the checkpoint logic runs on the device
(per-example tensors, no host synchronisation in the loop); restarts synchronise once
each, to select the unbroken examples.

Cost: one clean forward, then at most ``steps + 1`` forward and ``steps`` backward passes
per unbroken example per restart (all of them without early exit): one
at the start and one per step, as AutoAttack, except that the last iterate's gradient,
which AutoAttack and the ports compute and never use, is not computed (same result, one
backward fewer). Defaults: 100 steps, 1 restart, rho 0.75 (the
paper's); eps 0.3 / 2.0 as ``pgd`` / ``pgd-l2`` (AutoAttack's CIFAR-10: 8/255 and 0.5).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from advx import Attack, AttackConfig, ExampleNoise, hookimpl, input_gradient

from ._common import (
    Exits,
    ce_loss,
    clip_to_bounds_l2_,
    early_exit_field,
    dlr_loss,
    is_success,
    l2_norm,
    l2_normalize_,
    linf_box,
    per_example_view,
    project_l2_,
)

Loss = Literal["ce", "dlr"]


def random_sphere_start(x: Tensor, eps: float, norm: str, noise: ExampleNoise, stream: object) -> Tensor:
    """A perturbation on the eps sphere (L-inf: uniform noise scaled to max |.| = eps; L2: a
    Gaussian direction scaled to norm eps), as AutoAttack starts; not yet clipped to bounds.
    Each example's from its own draws (``noise``, one per example; ``stream`` names the draw)."""
    if norm == "linf":
        t = noise.uniform(x.shape[1:], stream, dtype=x.dtype).mul_(2).sub_(1)
        scale = per_example_view(t.flatten(1).abs().amax(1), x)
        return t.mul_(eps).div_(scale)
    t = noise.normal(x.shape[1:], stream, dtype=x.dtype)
    return project_l2_(t.mul_(eps).div_(l2_norm(t).add_(1e-12)), eps)


def apgd_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    *,
    loss: Loss,
    targeted: bool,
    norm: str,
    eps: float,
    steps: int,
    bounds: tuple[float, float],
    rho: float = 0.75,
    momentum: float = 0.75,
    true: Tensor | None = None,
    prefer_found: bool = True,
    early_exit: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run from ``x_adv`` (inside the ball; taken over). Returns ``(x_out, found, best_loss)``:
    per example the last adversarial iterate where one was seen (``found``), else the iterate of
    highest loss. With ``true``, the loss is towards target ``y`` but success means leaving
    ``true`` (APGD-T: a targeted loss for an untargeted attack). ``prefer_found=False``
    returns the highest-loss iterate everywhere (a surrogate model, ``Attack.surrogate``).
    ``early_exit`` (``Attack.exits_early``): an example leaves the run at the first iterate
    seen adversarial and is returned there; step sizes, momentum and checkpoints are per
    example (the checkpoint schedule is the same for all), so the others run as they would
    in the whole batch."""
    n = len(x)
    k = max(int(0.22 * steps), 1)
    k_min, k_decr = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    lower = upper = None
    if norm == "linf":
        lower, upper = linf_box(x, eps, bounds)

        def project_(z):
            return z.clamp_(lower, upper)
    else:

        def project_(z):
            return clip_to_bounds_l2_(z, x, eps, bounds)

    def loss_of(logits):
        if loss == "ce":  # float64 (ce_loss): a saturated softmax keeps its gradient and its loss
            return ce_loss(logits, y, targeted)
        return dlr_loss(logits, y, targeted, true)

    def success_of(logits):
        return is_success(logits, true, False) if true is not None else is_success(logits, y, targeted)

    def grad_at(z, need_grad=True):
        if not need_grad:  # the last iterate: its loss and success count, its gradient would not
            with torch.no_grad():
                logits = model(z)
                return None, loss_of(logits), success_of(logits)
        z.requires_grad_(True)
        logits = model(z)
        per = loss_of(logits)
        g = input_gradient(per.sum(), z)  # stepped in place (sign_, l2_normalize_)
        z.detach_()
        return g, per.detach(), success_of(logits.detach())

    grad, cur, found = grad_at(x_adv)
    x_found = x_adv.clone()
    best_loss, x_best, grad_best = cur.clone(), x_adv.clone(), grad.clone()
    loss_steps = torch.zeros(steps, n, device=x.device, dtype=cur.dtype)
    step = per_example_view(torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype), x)
    x_old = x_adv.clone()
    best_at_check = best_loss.clone()
    reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
    since_check = 0
    exits = Exits(n, x.device) if early_exit else None
    if exits is not None:  # the results of the examples that leave, written as they leave
        res_x, res_loss = x_adv.clone(), best_loss.clone()
        res_found = torch.zeros(n, dtype=torch.bool, device=x.device)

    def leave(hit):
        """Take the examples ``hit`` marks out of the run (``exits``); False when none is left."""
        nonlocal x_adv, grad, cur, found, x_found, best_loss, x_best, grad_best, loss_steps, step, x_old
        nonlocal best_at_check, reduced_at_check, x, y, true, lower, upper
        parts = exits.split(hit)
        if parts is None:
            return True
        gone, stay = parts
        res_x[gone], res_loss[gone], res_found[gone] = x_adv[hit], best_loss[hit], True
        if not len(exits):
            return False
        (x_adv, grad, cur, found, x_found, best_loss, x_best, grad_best, step, x_old, best_at_check,
         reduced_at_check, x, y, true, lower, upper) = (
            None if t is None else t[stay]  # grad is None after the last step, true and the box may be
            for t in (x_adv, grad, cur, found, x_found, best_loss, x_best, grad_best, step, x_old, best_at_check,
                      reduced_at_check, x, y, true, lower, upper)
        )
        loss_steps = loss_steps[:, stay]
        return True

    if exits is not None and not leave(found):
        return res_x, res_found, res_loss
    for i in range(steps):
        a = momentum if i > 0 else 1.0
        with torch.no_grad():
            if norm == "linf":
                z = project_(torch.addcmul(x_adv, step, grad.sign_()))
            else:
                z = project_(torch.addcmul(x_adv, step, l2_normalize_(grad)))
            # z <- x + a (z - x) + (1 - a) (x - x_old), reusing buffers: x_old becomes x_adv.
            z.sub_(x_adv).mul_(a).add_(x_adv.sub(x_old), alpha=1.0 - a).add_(x_adv)
            x_old = x_adv
            x_adv = project_(z)
        last = i == steps - 1
        grad, cur, succ = grad_at(x_adv, need_grad=not last)
        x_found = torch.where(per_example_view(succ, x), x_adv, x_found)
        found |= succ
        loss_steps[i] = cur
        better = cur > best_loss
        bv = per_example_view(better, x)
        x_best = torch.where(bv, x_adv, x_best)
        best_loss = torch.where(better, cur, best_loss)
        if not last:
            grad_best = torch.where(bv, grad, grad_best)
        if exits is not None and not leave(succ):
            return res_x, res_found, res_loss
        if last:
            break
        since_check += 1
        if since_check == k:
            # Share of the last k steps that increased the loss (AutoAttack's index arithmetic,
            # wrapping to the zero-initialised last row on the first checkpoint).
            idx = torch.arange(i - k + 1, i + 1, device=x.device)
            ups = (loss_steps[idx % steps] > loss_steps[(idx - 1) % steps]).sum(0)
            halve = (ups <= k * rho) | (~reduced_at_check & (best_at_check >= best_loss))
            reduced_at_check, best_at_check = halve, best_loss.clone()
            hv = per_example_view(halve, x)
            step = torch.where(hv, step / 2, step)
            x_adv = torch.where(hv, x_best, x_adv)
            grad = torch.where(hv, grad_best, grad)
            since_check = 0
            k = max(k - k_decr, k_min)
    if exits is not None:  # the examples still in the run were never adversarial
        res_x[exits.rows], res_loss[exits.rows] = x_best, best_loss
        return res_x, res_found, res_loss
    if not prefer_found:
        return x_best, found, best_loss
    return torch.where(per_example_view(found, x), x_found, x_best), found, best_loss


class _APGDConfig(AttackConfig):
    steps: int = Field(100, ge=1, le=100000, description="iterations per restart (paper: 100)")
    restarts: int = Field(1, ge=1, le=1000, description="random restarts; each reruns the examples not yet broken")
    rho: float = Field(0.75, gt=0, le=1, description="checkpoint rule: halve the step unless the loss rose in this share of steps (paper 0.75)")
    momentum: float = Field(0.75, gt=0, le=1, description="weight of the new step against the previous move (paper 0.75; 1 = no momentum)")
    seed: int = Field(0, ge=0, description="seed of the random starts")
    early_exit: bool = early_exit_field()


class _APGDBase(Attack):
    """Restart logic shared by the four plugins; subclasses set the loss and the norm."""

    loss: ClassVar[Loss] = "ce"
    iterative: ClassVar[bool] = True

    @classmethod
    def min_classes(cls, config):
        # the DLR loss compares the three largest logits, the targeted one four (_common.dlr_loss)
        if cls.loss == "dlr":
            return 4 if config.targeted else 3
        return 2

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        x = x.detach()
        noise = self.noise(x, c.seed)
        # As AutoAttack: examples the clean input already breaks are returned as they are
        # (one forward), so a model of low clean accuracy costs only its correct examples.
        # On a surrogate (Attack.surrogate) every example is attacked, each run returns its
        # highest-loss point and restarts keep the higher loss: fooling it is not the goal.
        surrogate = self.surrogate
        with torch.no_grad():
            found = torch.zeros(len(x), dtype=torch.bool, device=x.device) if surrogate else is_success(model(x), y, targeted)
        out = x.clone()
        # float64: the CE loss's dtype (ce_loss); a float32 DLR score promotes to it in the where below
        best = torch.full((len(x),), -torch.inf, device=x.device, dtype=torch.float64)
        for r in range(c.restarts):
            # Each run takes the unbroken examples only: one host synchronisation each.
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs, ys = x[idx], y[idx]
            start = random_sphere_start(xs, c.eps, self.norm, noise[idx], ("apgd-start", r)).add_(xs).clamp_(*bounds)
            adv, ok, score = apgd_run(
                model, xs, ys, start, loss=self.loss, targeted=targeted, norm=self.norm, eps=c.eps,
                steps=c.steps, bounds=bounds, rho=c.rho, momentum=c.momentum, prefer_found=not surrogate,
                early_exit=self.exits_early,
            )
            keep = (ok & (not surrogate)) | (score > best[idx])
            out[idx] = torch.where(per_example_view(keep, xs), adv, out[idx])
            best[idx] = torch.where(keep, score, best[idx])
            if not surrogate:
                found[idx] = ok
        return out


class APGDCE(_APGDBase):
    """APGD on cross-entropy, L-inf."""

    name: ClassVar[str] = "apgd-ce"
    norm: ClassVar[str] = "linf"
    single_step: ClassVar[str | None] = "fgsm"

    class Config(_APGDConfig):
        eps: float = Field(0.3, gt=0, description="L-inf budget in input units (MNIST 0.3, CIFAR-10 8/255)")


class APGDCEL2(_APGDBase):
    """APGD on cross-entropy, L2."""

    name: ClassVar[str] = "apgd-ce-l2"
    norm: ClassVar[str] = "l2"

    class Config(_APGDConfig):
        eps: float = Field(2.0, gt=0, description="L2 budget in input units (MNIST 2.0, CIFAR-10 0.5)")


class APGDDLR(_APGDBase):
    """APGD on the difference of logits ratio, L-inf (targeted modes: targeted DLR)."""

    name: ClassVar[str] = "apgd-dlr"
    norm: ClassVar[str] = "linf"
    single_step: ClassVar[str | None] = "fgsm"
    loss: ClassVar[Loss] = "dlr"

    class Config(_APGDConfig):
        eps: float = Field(0.3, gt=0, description="L-inf budget in input units (MNIST 0.3, CIFAR-10 8/255)")


class APGDDLRL2(_APGDBase):
    """APGD on the difference of logits ratio, L2 (targeted modes: targeted DLR)."""

    name: ClassVar[str] = "apgd-dlr-l2"
    norm: ClassVar[str] = "l2"
    loss: ClassVar[Loss] = "dlr"

    class Config(_APGDConfig):
        eps: float = Field(2.0, gt=0, description="L2 budget in input units (MNIST 2.0, CIFAR-10 0.5)")


@hookimpl
def advx_register_attacks():
    return [APGDCE, APGDCEL2, APGDDLR, APGDDLRL2]
