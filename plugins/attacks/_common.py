"""Helpers shared by the built-in attacks: loss gradients, per-example norms, projections.

Private to ``advx.plugins.attacks`` (third-party attacks should copy what they need:
these signatures may change). Everything here works on whole batches, allocates as
little as it can (the hot loops of BIM/PGD call these once per step) and never
synchronises with the device: no ``.item()``, no Python ``if`` on a tensor, so a step
loop built from them queues kernels on a GPU without waiting.

Conventions: ``x`` has the batch on dimension 0 and any shape after it; per-example
scalars are returned with shape ``(N, 1, ..., 1)`` so that they broadcast against ``x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advx import input_gradient

# Below this, a gradient is treated as zero when normalising (a zero gradient would
# otherwise give 0/0 = NaN and poison the batch).
TINY = 1e-12


def per_example_view(v: Tensor, like: Tensor) -> Tensor:
    """``v`` of shape ``(N,)`` viewed as ``(N, 1, ..., 1)`` to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def l2_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm, shape ``(N, 1, ..., 1)``."""
    return per_example_view(torch.linalg.vector_norm(t.flatten(1), ord=2, dim=1), t)


def l2_normalize_(g: Tensor) -> Tensor:
    """Divide each example of ``g`` by its L2 norm, in place; zero rows stay zero."""
    return g.div_(l2_norm(g).clamp_(min=TINY))


def loss_grad(model: nn.Module, x: Tensor, y: Tensor, targeted: bool) -> tuple[Tensor, Tensor]:
    """``(grad, logits)``: the gradient of the summed cross-entropy at ``x``, signed to ascend.

    The sign is folded in here so callers always *add* the gradient: for an untargeted
    attack it is grad J(x, y) (move away from ``y``), for a targeted one -grad J(x, t)
    (move towards ``t``). ``reduction="sum"`` keeps each example's gradient independent
    of the batch size. ``torch.autograd.grad`` computes the input gradient only: the
    parameters' ``.grad`` are neither computed nor touched. ``x`` must require grad. The
    gradient is the caller's to modify in place (``advx.input_gradient``).
    """
    logits = model(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    return input_gradient(-loss if targeted else loss, x), logits


def linf_box(x: Tensor, eps: float, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """``(lower, upper)``: the intersection of the eps L-inf ball around ``x`` with ``bounds``.

    Computed once per batch so that the per-step projection is one ``clamp_`` with tensor
    bounds (ball and valid range at once) instead of four elementwise passes.
    """
    lo, hi = bounds
    return (x - eps).clamp_(min=lo), (x + eps).clamp_(max=hi)


def project_l2_(delta: Tensor, eps: float) -> Tensor:
    """Scale each example of ``delta`` down onto the eps L2 ball, in place (inside: unchanged).

    The factor is computed as ``min(1, eps / ||delta||)`` and then nudged below one by a
    relative 1e-6 where it scales, so that float rounding never leaves a projected
    example a hair outside the ball the kernel checks.
    """
    factor = (eps / l2_norm(delta).clamp_(min=TINY)).clamp_(max=1.0)
    factor = torch.where(factor < 1.0, factor * (1.0 - 1e-6), factor)
    return delta.mul_(factor)


def clip_to_bounds_l2_(x_adv: Tensor, x: Tensor, eps: float | None, bounds: tuple[float, float]) -> Tensor:
    """Project ``x_adv`` onto the eps L2 ball around ``x`` (if ``eps``) and ``bounds``, in place.

    Ball first, then box: clipping a point of the ball to a box that contains ``x`` moves
    every coordinate towards ``x``, so the result stays inside the ball.
    """
    if eps is not None:
        delta = project_l2_(x_adv.sub_(x), eps)
        x_adv = delta.add_(x)
    return x_adv.clamp_(*bounds)


def uniform_l2_ball(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """Points drawn uniformly from the eps L2 ball (by volume), one per example of ``x``.

    A Gaussian direction scaled to radius ``eps * u**(1/d)`` with ``u ~ U(0, 1)``; the
    ``1/d`` power is what makes the draw uniform in volume rather than concentrated at
    the centre (torchattacks draws the radius uniformly, which is not).
    """
    d = x[0].numel()
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    l2_normalize_(direction)
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype).pow_(1.0 / d)
    return direction.mul_(per_example_view(radius.mul_(eps), x))


def margin_to_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(logit of y, best logit of any other class)``, each of shape ``(N,)``."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true, other


class _KeepAdversarial:
    """No silent success for fixed-step loops: remembers, per example, the last iterate whose
    forward pass (the one that also gave its gradient) showed it adversarial.

    ``result(final)`` returns that iterate where one was seen, else ``final``. The final
    iterate itself is never evaluated (that would cost one more forward per call), so an
    example that was adversarial during the loop comes back at a verified adversarial
    point rather than at a final one that may have crossed back; examples never seen
    adversarial come back at the final iterate, as before. One ``torch.where`` and one
    ``argmax`` per step, no host synchronisation.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # off: ``result`` is the final iterate (a surrogate model)
        self.found: Tensor | None = None
        self.x: Tensor | None = None

    def see(self, x_adv: Tensor, logits: Tensor, y: Tensor, targeted: bool) -> None:
        if not self.enabled:
            return
        succ = is_success(logits.detach(), y, targeted)
        if self.found is None:
            self.found, self.x = succ, x_adv.clone()
        else:
            self.x = torch.where(per_example_view(succ, x_adv), x_adv, self.x)
            self.found = self.found | succ

    def result(self, final: Tensor) -> Tensor:
        if self.found is None:
            return final
        return torch.where(per_example_view(self.found, final), self.x, final)


def iterate_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    bounds: tuple[float, float],
    targeted: bool,
    keep: bool = True,
) -> Tensor:
    """``steps`` signed-gradient steps of size ``alpha`` from ``x_adv``, projected on the ball.

    The loop body is one forward, one input-gradient backward and three in-place
    elementwise passes (sign, add, clamp to the precomputed box); ``x_adv`` is updated
    in place (the caller hands over a buffer it owns) and is the leaf of every step.
    Every evaluated iterate that is adversarial is remembered (``_KeepAdversarial``: one
    more elementwise pass per step), so a success seen during the loop is returned. With
    ``keep=False`` (``Attack.surrogate``: the model is a stand-in for the scored one) the
    final iterate is returned, as the algorithm is published.
    """
    lower, upper = linf_box(x, eps, bounds)
    kept = _KeepAdversarial(keep)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, logits = loss_grad(model, x_adv, y, targeted)
        kept.see(x_adv.detach_(), logits, y, targeted)
        x_adv.add_(grad.sign_(), alpha=alpha).clamp_(lower, upper)
    return kept.result(x_adv)


def iterate_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    bounds: tuple[float, float],
    targeted: bool,
    keep: bool = True,
) -> Tensor:
    """``steps`` steps of ``alpha * g / ||g||_2`` from ``x_adv``, projected on the L2 ball and bounds.

    Same in-place discipline and ``keep`` as ``iterate_linf``; a zero gradient gives a zero step.
    """
    kept = _KeepAdversarial(keep)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, logits = loss_grad(model, x_adv, y, targeted)
        kept.see(x_adv.detach_(), logits, y, targeted)
        x_adv.add_(l2_normalize_(grad), alpha=alpha)
        clip_to_bounds_l2_(x_adv, x, eps, bounds)
    return kept.result(x_adv)


def dlr_loss(logits: Tensor, y: Tensor, targeted: bool = False, true: Tensor | None = None) -> Tensor:
    """Per-example difference-of-logits-ratio loss (Croce and Hein 2020), to be *maximised*.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` with ``z_pi`` the sorted
    logits; shift- and scale-invariant, so it keeps a useful gradient where the model's
    logits are rescaled (the failure of cross-entropy that APGD-DLR answers). Targeted
    towards ``y``: ``-(z_true - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; the paper's
    ``z_true`` is the ground-truth logit, which the kernel does not hand a targeted attack,
    so when ``true`` is ``None`` the best non-target logit stands in for it (equal to the
    ground truth's as long as the model classifies the input correctly). Needs at least
    3 (untargeted) or 4 (targeted) classes.
    """
    need = 4 if targeted else 3
    if logits.shape[1] < need:
        raise ValueError(f"the {'targeted ' if targeted else ''}DLR loss needs at least {need} classes, the model has {logits.shape[1]}")
    top = logits.topk(need, dim=1).values
    if not targeted:
        z_y, other = margin_to_other(logits, y)
        return (other - z_y) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = logits.gather(1, y[:, None]).squeeze(1)
    z_true = margin_to_other(logits, y)[1] if true is None else logits.gather(1, true[:, None]).squeeze(1)
    return (z_t - z_true) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def is_success(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Per-example success of the prediction of ``logits``: ``!= y`` untargeted, ``== y`` targeted."""
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y
