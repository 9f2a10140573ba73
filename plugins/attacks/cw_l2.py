"""``cw-l2``: the Carlini-Wagner L2 attack (Carlini and Wagner, "Towards Evaluating the
Robustness of Neural Networks", IEEE S&P 2017).

Minimises ||x' - x||_2^2 + c * f(x') over x' = mid + half * tanh(w) (the tanh change of
variables keeps x' inside the valid range without clipping), with the margin loss
f = max(z_y - max_{i != y} z_i, -kappa) (untargeted: leave y) or
f = max(max_{i != t} z_i - z_t, -kappa) (targeted: reach t), optimised by Adam.
A per-example binary search over c: after each of ``binary_search_steps`` runs, c is
halved towards the last success or multiplied by 10 while no success is known.
Every iterate is scored on the logits of the forward pass that also gives its gradient,
and the smallest successful perturbation seen is returned (the clean input where none
was found).

Defaults are the authors' code's (lr 0.01, c0 1e-3, 9 search steps, kappa 0, abort
early) except ``steps``: 1000 rather than 10000 per search step, as Foolbox and ART
default to; raise it for the strongest results. Cost outside the model, per iteration:
about ten elementwise passes (sigmoid for tanh, hand-written gradients of the change of
variables and of the distance, Adam, the best-so-far), ~1.5 ms for a 256 x 784 batch on
one core against ~2.7 ms for the autograd version (and adv-lib's). Abort early checks the loss every
``steps // 10`` iterations and stops a search step that improved by less than 0.01%:
those checks are the only host-device synchronisations of the loop.

``eps`` (optional, L2): when set, only adversarial examples inside the eps ball are kept,
so the result passes the kernel's ball check; by default the attack is minimum-norm.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from advx import Attack, AttackConfig, hookimpl, input_gradient

from ._common import margin_to_other, per_example_view


class CarliniWagnerL2(Attack):
    """Carlini-Wagner L2: tanh-box Adam on ||d||^2 + c * margin, binary search over c."""

    name: ClassVar[str] = "cw-l2"
    norm: ClassVar[str] = "l2"
    iterative: ClassVar[bool] = True

    class Config(AttackConfig):
        eps: float | None = Field(
            None, gt=0, description="optional L2 budget: keep only adversarial examples inside it (default: unbounded)"
        )
        kappa: float = Field(0.0, ge=0, description="confidence: required logit margin of the wrong class (paper 0)")
        initial_const: float = Field(1e-3, gt=0, description="first trade-off constant c (paper 1e-3)")
        binary_search_steps: int = Field(9, ge=1, le=100, description="runs of the binary search over c (paper 9)")
        steps: int = Field(1000, ge=1, le=100000, description="Adam iterations per search step (paper code 10000)")
        lr: float = Field(0.01, gt=0, description="Adam learning rate (paper 0.01)")
        abort_early: bool = Field(True, description="stop a search step when the loss stops decreasing")

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        lo, hi = bounds
        x = x.detach()
        n = len(x)
        half, mid = (hi - lo) / 2.0, (hi + lo) / 2.0
        # w-space image of x; the clamp keeps atanh finite at the bounds (as the authors').
        w0 = torch.atanh(((x - mid) / half).clamp_(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((n,), c.initial_const, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, 1e10)
        best_l2 = torch.full_like(const, math.inf)
        best_adv = x.clone()
        limit = math.inf if c.eps is None else c.eps**2
        beta1, beta2 = 0.9, 0.999
        check_every = max(c.steps // 10, 1)
        w2 = 2.0 * w0
        lo_t = torch.tensor(lo, device=x.device, dtype=x.dtype)
        span_t = torch.tensor(hi - lo, device=x.device, dtype=x.dtype)

        for _ in range(c.binary_search_steps):
            delta = torch.zeros_like(x)  # the optimised variable: w = w0 + delta
            m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            prev = None
            for i in range(c.steps):
                # x' = mid + half tanh(w) computed as lo + (hi - lo) sigmoid(2w): the same
                # function, and on CPU sigmoid is several times faster than tanh. Only the
                # model's term goes through autograd; the change of variables and the distance
                # term are differentiated by hand (d x'/d delta = 2 (hi - lo) s (1 - s),
                # d ||x' - x||^2 / d x' = 2 (x' - x)), which saves the graph's elementwise nodes.
                sig = torch.sigmoid(torch.add(w2, delta, alpha=2.0))
                x_adv = torch.addcmul(lo_t, sig, span_t).requires_grad_(True)
                logits = model(x_adv)
                diff = x_adv.detach() - x
                l2sq = torch.linalg.vector_norm(diff.flatten(1), dim=1).square_()
                z_y, z_o = margin_to_other(logits, y)
                margin = z_o - z_y if targeted else z_y - z_o  # < -kappa means success
                hinge = const * (margin + c.kappa).clamp(min=0)
                g = input_gradient(hinge.sum(), x_adv)  # the chain rule is applied to it in place

                with torch.no_grad():
                    loss = l2sq.sum() + hinge.detach().sum()
                    success = margin.detach() < -c.kappa
                    found |= success
                    better = success & (l2sq < best_l2) & (l2sq <= limit)
                    best_l2 = torch.where(better, l2sq, best_l2)
                    best_adv = torch.where(per_example_view(better, x), x_adv.detach(), best_adv)
                    g.add_(diff, alpha=2.0).mul_(torch.addcmul(sig, sig, sig, value=-1.0)).mul_(2.0 * (hi - lo))

                    # Adam, elementwise, so every example is optimised independently.
                    step = i + 1
                    m1.mul_(beta1).add_(g, alpha=1 - beta1)
                    m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    # The clamp keeps sqrt off subnormal floats (second moments of vanishing
                    # gradients), on which CPUs are ~25x slower; sqrt(1e-30) is far below 1e-8.
                    denom = m2.clamp(min=1e-30).sqrt_().div_(math.sqrt(1 - beta2**step)).add_(1e-8)
                    delta.addcdiv_(m1, denom, value=-c.lr / (1 - beta1**step))

                if c.abort_early and (i + 1) % check_every == 0:
                    current = loss.detach()
                    if prev is not None and bool(current > prev * 0.9999):  # sync, every steps/10
                        break
                    prev = current

            # Binary search on c, per example, on the device.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        return best_adv.clamp_(lo, hi)


@hookimpl
def advx_register_attacks():
    return [CarliniWagnerL2]
