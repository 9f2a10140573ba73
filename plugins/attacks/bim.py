"""``bim``: the basic iterative method (Kurakin, Goodfellow and Bengio, "Adversarial
examples in the physical world", ICLR workshop 2017), iterative FGSM.

``steps`` signed-gradient steps of size ``alpha``, each followed by a projection onto the
eps L-inf ball around x and the valid input range. Published (seeds 001, 002):
MNIST eps 0.2, alpha 0.025, 8 steps; CIFAR-10 eps 0.02, alpha 0.0025, 8 steps. Seed 004
uses 10 iterations. BIM is PGD without the random start (``pgd`` adds it).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from advx import Attack, AttackConfig, hookimpl

from ._common import early_exit_field, iterate_linf


class BIM(Attack):
    """Basic iterative method: n FGSM steps of size alpha, projected on the eps L-inf ball."""

    name: ClassVar[str] = "bim"
    norm: ClassVar[str] = "linf"
    iterative: ClassVar[bool] = True
    single_step: ClassVar[str | None] = "fgsm"

    class Config(AttackConfig):
        eps: float = Field(0.2, gt=0, description="L-inf budget, in input units (MNIST 0.2, CIFAR-10 0.02)")
        alpha: float = Field(0.025, gt=0, description="step size of each iteration (MNIST 0.025, CIFAR-10 0.0025)")
        steps: int = Field(8, ge=1, le=100000, description="number of iterations (seeds 001/002: 8; seed 004: 10)")
        early_exit: bool = early_exit_field()

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        x = x.detach()
        return iterate_linf(
            model, x, y, x.clone(), c.eps, c.alpha, c.steps, bounds, targeted, keep=not self.surrogate, early_exit=self.exits_early
        ).detach_()


@hookimpl
def advx_register_attacks():
    return [BIM]
