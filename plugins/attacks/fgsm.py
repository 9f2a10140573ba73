"""``fgsm``: the fast gradient sign method (Goodfellow et al. 2015).

x' = clip(x + eps * sign(grad_x J(x, y)))  (untargeted), or x - eps * sign(grad_x J(x, t))
towards a target t. One forward and one backward pass per example. Seeds 000-004;
published eps: 0.3 on MNIST, 0.03 on CIFAR-10.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from advx import Attack, AttackConfig, hookimpl


class FGSM(Attack):
    """Fast gradient sign method: one signed-gradient step of size eps (L-inf)."""

    name: ClassVar[str] = "fgsm"
    norm: ClassVar[str] = "linf"

    class Config(AttackConfig):
        eps: float = Field(0.3, gt=0, description="L-inf step and budget, in input units")

    def perturb(self, model, x, y, bounds, targeted=False):
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        step = grad.sign_().mul_(-self.config.eps if targeted else self.config.eps)
        return (x.detach() + step).clamp_(*bounds)


@hookimpl
def advx_register_attacks():
    return [FGSM]
