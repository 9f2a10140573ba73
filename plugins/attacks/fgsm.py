"""``fgsm``: the fast gradient sign method (Goodfellow et al., "Explaining and Harnessing
Adversarial Examples", ICLR 2015).

x' = clip(x + eps * sign(grad_x J(x, y)))  (untargeted), or x - eps * sign(grad_x J(x, t))
towards a target t. One forward and one backward pass per example. Seeds 000-004;
published eps: 0.3 on MNIST, 0.03 on CIFAR-10.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from advx import Attack, AttackConfig, hookimpl

from ._common import loss_grad


class FGSM(Attack):
    """Fast gradient sign method: one signed-gradient step of size eps (L-inf)."""

    name: ClassVar[str] = "fgsm"
    norm: ClassVar[str] = "linf"

    class Config(AttackConfig):
        eps: float = Field(0.3, gt=0, description="L-inf step and budget, in input units (MNIST 0.3, CIFAR-10 0.03)")

    def perturb(self, model, x, y, bounds, targeted=False):
        # A fresh leaf: detach() alone would share storage with the caller's batch, and an
        # in-place step on it would overwrite the clean images the kernel still needs.
        x_req = x.detach().clone().requires_grad_(True)
        grad, _ = loss_grad(model, x_req, y, targeted)
        # x_req's storage is ours: step and clip in place, no further allocation.
        return x_req.detach_().add_(grad.sign_(), alpha=self.config.eps).clamp_(*bounds)


@hookimpl
def advx_register_attacks():
    return [FGSM]
