"""``pgd`` and ``pgd-l2``: projected gradient descent with a random start (Madry, Makelov,
Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018).

Start at a uniformly random point of the eps-ball, then take ``steps`` gradient steps of
size ``alpha`` (signed for L-inf, L2-normalised for L2), projecting onto the ball and the
valid range after each. ``restarts`` runs it from several random starts and keeps, per
example, a successful result if any run found one, else the one of highest loss.

Two plugins from one implementation because the kernel reads an attack's norm from the
class (``Attack.norm`` is a ClassVar) to check every returned batch: ``pgd`` is L-inf,
``pgd-l2`` is L2. Defaults follow Madry et al.'s MNIST evaluation (eps 0.3, step 0.01,
40 steps; their CIFAR-10 setting is eps 8/255, step 2/255, 7-20 steps).

The random start is drawn per example (``Attack.noise``): from ``seed`` and, inside the
kernel, the cell's seed and the example's index in the dataset, so an example starts
from the same point whatever batch it is in (a result does not depend on the batch size
or a split into shards), every example from its own, and the same cell gives the same
result whatever ran before (it can be re-run or resumed alone). Restart ``r`` is its own
draw. With ``early_exit`` (``Attack.exits_early``) an example leaves the batch at the
first iterate that fools the model, and later restarts run only on the examples not yet
broken: the same examples are broken, for fewer passes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator

from advx import Attack, AttackConfig, hookimpl

from ._common import ce_loss, early_exit_field, iterate_l2, iterate_linf, per_example_view, uniform_l2_ball


class _PGDConfig(AttackConfig):
    steps: int = Field(40, ge=1, le=100000, description="gradient steps per run (Madry MNIST: 40 to train, 100 to evaluate)")
    random_start: bool = Field(True, description="start from a uniform random point of the eps-ball (false: from x, i.e. BIM)")
    restarts: int = Field(1, ge=1, le=1000, description="independent random starts; per example the best is kept")
    seed: int = Field(0, ge=0, description="seed of the random starts")
    early_exit: bool = early_exit_field()

    @model_validator(mode="after")
    def _restarts_need_randomness(self):
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 needs random_start = true (deterministic restarts repeat the same run)")
        return self


class _PGDBase(Attack):
    """Shared run/restart logic; subclasses set the norm, the start and the step loop."""

    def _start(self, x, noise, restart):
        raise NotImplementedError

    def _iterate(self, model, x, y, x_adv, bounds, targeted):
        raise NotImplementedError

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        x = x.detach()
        noise = self.noise(x, c.seed) if c.random_start else None
        best, best_score = x.clone(), torch.full((len(x),), -torch.inf, device=x.device, dtype=torch.float64)
        todo = torch.arange(len(x), device=x.device)  # the examples the next restart runs on
        for r in range(c.restarts):
            xs, ys = (x, y) if r == 0 else (x[todo], y[todo])
            x_adv = self._start(xs, noise[todo], r).add_(xs).clamp_(*bounds) if c.random_start else xs.clone()
            x_adv = self._iterate(model, xs, ys, x_adv, bounds, targeted).detach_()
            if c.restarts == 1:
                return x_adv
            # One extra forward per restart to rank the runs. no_grad rather than
            # inference_mode: the kept examples are returned, and an inference tensor
            # would fail if the caller ever fed it through autograd.
            with torch.no_grad():
                logits = model(x_adv)
                hit = logits.argmax(1) == ys
                success = hit if targeted else ~hit
                # on a surrogate (Attack.surrogate) fooling it is not the goal: rank by loss only;
                # the loss in float64 (ce_loss): in float32 a saturated example's runs all tie at 0
                score = torch.where(success & (not self.surrogate), torch.inf, ce_loss(logits, ys, targeted))
                better = (score > best_score[todo]) | (r == 0)
                best[todo] = torch.where(per_example_view(better, xs), x_adv, best[todo])
                best_score[todo] = torch.maximum(score, best_score[todo])
            if self.exits_early:  # a broken example needs no further restart (one synchronisation)
                todo = todo[~success]
                if not len(todo):
                    break
        return best


class PGD(_PGDBase):
    """Madry PGD, L-inf: random start in the eps-cube, signed steps of size alpha, projection."""

    name: ClassVar[str] = "pgd"
    norm: ClassVar[str] = "linf"
    iterative: ClassVar[bool] = True
    single_step: ClassVar[str | None] = "fgsm"

    class Config(_PGDConfig):
        eps: float = Field(0.3, gt=0, description="L-inf budget in input units (Madry MNIST 0.3, CIFAR-10 8/255)")
        alpha: float = Field(0.01, gt=0, description="step size (Madry MNIST 0.01, CIFAR-10 2/255)")

    def _start(self, x, noise, restart):
        u = noise.uniform(x.shape[1:], ("pgd-start", restart), dtype=x.dtype)
        return u.mul_(2 * self.config.eps).sub_(self.config.eps)

    def _iterate(self, model, x, y, x_adv, bounds, targeted):
        c = self.config
        return iterate_linf(
            model, x, y, x_adv, c.eps, c.alpha, c.steps, bounds, targeted, keep=not self.surrogate, early_exit=self.exits_early
        )


class PGDL2(_PGDBase):
    """Madry PGD, L2: random start uniform in the eps L2 ball, normalised-gradient steps, projection."""

    name: ClassVar[str] = "pgd-l2"
    norm: ClassVar[str] = "l2"
    iterative: ClassVar[bool] = True

    class Config(_PGDConfig):
        eps: float = Field(2.0, gt=0, description="L2 budget in input units (MNIST 2.0, CIFAR-10 0.5 are usual)")
        alpha: float | None = Field(
            None, gt=0, description="step size; default 2.5 * eps / steps (Madry et al.'s rule of thumb)"
        )

    @property
    def step_size(self) -> float:
        c = self.config
        return c.alpha if c.alpha is not None else 2.5 * c.eps / c.steps

    def _start(self, x, noise, restart):
        return uniform_l2_ball(x, self.config.eps, noise, ("pgd-start", restart))

    def _iterate(self, model, x, y, x_adv, bounds, targeted):
        c = self.config
        return iterate_l2(
            model, x, y, x_adv, c.eps, self.step_size, c.steps, bounds, targeted, keep=not self.surrogate,
            early_exit=self.exits_early,
        )


@hookimpl
def advx_register_attacks():
    return [PGD, PGDL2]
