"""``iterative-l2``: the L2 basic iterative method of Metzen, Genewein, Fischer and Bischoff
("On Detecting Adversarial Perturbations", ICLR 2017), as used by seed 004.

x_{i+1} = project_eps(x_i + alpha * g / ||g||_2), g = grad_x J(x_i, y), starting at x
(no random start: that is ``pgd-l2``), projected onto the eps L2 ball around x and the
valid input range after each step. Seed 004: 10 iterations; eps 0.47 on CIFAR-10
(Table 7), 12.5 on ImageNet (Table 9). Neither paper states the L2 step for these
budgets, so the default step is 2.5 * eps / steps (Madry et al.'s rule), which lets the
iterate cross the ball 2.5 times and still end on its surface.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from advx import Attack, AttackConfig, hookimpl

from ._common import early_exit_field, iterate_l2


class IterativeL2(Attack):
    """Metzen's iterative L2 attack: steps of alpha * g/||g||2, projected on the eps L2 ball."""

    name: ClassVar[str] = "iterative-l2"
    norm: ClassVar[str] = "l2"
    iterative: ClassVar[bool] = True

    class Config(AttackConfig):
        eps: float = Field(0.47, gt=0, description="L2 budget in input units (seed 004: 0.47 CIFAR-10, 12.5 ImageNet)")
        alpha: float | None = Field(None, gt=0, description="step size; default 2.5 * eps / steps")
        steps: int = Field(10, ge=1, le=100000, description="number of iterations (seed 004: 10)")
        early_exit: bool = early_exit_field()

    @property
    def step_size(self) -> float:
        c = self.config
        return c.alpha if c.alpha is not None else 2.5 * c.eps / c.steps

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        x = x.detach()
        return iterate_l2(
            model, x, y, x.clone(), c.eps, self.step_size, c.steps, bounds, targeted, keep=not self.surrogate,
            early_exit=self.exits_early,
        ).detach_()


@hookimpl
def advx_register_attacks():
    return [IterativeL2]
