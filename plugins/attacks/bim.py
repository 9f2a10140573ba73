"""``bim``: the basic iterative method (Kurakin et al. 2017), iterative FGSM.

``steps`` signed-gradient steps of size ``alpha``, each followed by a projection onto the
eps L-inf ball around x and the valid input range. Published (seeds 001, 002):
MNIST eps 0.2, alpha 0.025, 8 steps; CIFAR-10 eps 0.02, alpha 0.0025, 8 steps.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from advx import Attack, AttackConfig, hookimpl


class BIM(Attack):
    """Basic iterative method: n FGSM steps of size alpha, projected on the eps L-inf ball."""

    name: ClassVar[str] = "bim"
    norm: ClassVar[str] = "linf"

    class Config(AttackConfig):
        eps: float = Field(0.2, gt=0, description="L-inf budget, in input units")
        alpha: float = Field(0.025, gt=0, description="step size of each iteration")
        steps: int = Field(8, ge=1, le=100000, description="number of iterations")

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        lo, hi = bounds
        x = x.detach()
        lower = (x - c.eps).clamp_(min=lo)
        upper = (x + c.eps).clamp_(max=hi)
        alpha = -c.alpha if targeted else c.alpha
        x_adv = x.clone()
        for _ in range(c.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.minimum(torch.maximum(x_adv.detach().add_(grad.sign_(), alpha=alpha), lower), upper)
        return x_adv


@hookimpl
def advx_register_attacks():
    return [BIM]
