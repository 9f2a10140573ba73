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

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pydantic import Field

from advx import ExampleNoise, input_gradient

def early_exit_field() -> Any:
    """The ``early_exit`` field of every iterative built-in attack's config (``Attack.exits_early``)."""
    return Field(
        True,
        description=(
            "an example leaves the batch once the attacked model is fooled (fewer passes, the same "
            "examples broken; on only where the attacked model is the scored one and deterministic); "
            "false: every example runs the whole schedule, for studies of the loss trajectory"
        ),
    )


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


def ce_loss(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Per-example cross-entropy of ``logits`` against ``y``, in float64, signed to ascend
    (negated for a targeted attack, as ``loss_grad``), shape ``(N,)``.

    float64 because the gradient of the cross-entropy with respect to the logits is
    ``p - onehot(y)``: where the network is confident, ``p_y`` rounds to exactly 1.0 in
    float32, the true class's term (the largest) vanishes and only the other classes' tiny
    terms are left, so a signed step points elsewhere: on seed 002's MNIST network, FGSM at
    eps 0.3 left 0.0941 accuracy through the float32 loss and 0.0177 through the exact one
    (``experiments/seed002-mnist-masking/saturation.py``). The loss itself rounds to 0 there
    too, so a float32 loss also hides whether a step raised it (APGD's step-size checkpoints
    compare those values). In float64 the term survives and flows back through the network in
    float32 (the logits' dtype); the cost is a loss over ``batch x classes`` numbers.
    """
    ce = F.cross_entropy(logits.double(), y, reduction="none")
    return -ce if targeted else ce


def loss_grad(model: nn.Module, x: Tensor, y: Tensor, targeted: bool) -> tuple[Tensor, Tensor]:
    """``(grad, logits)``: the gradient of the summed cross-entropy at ``x`` (``ce_loss``:
    float64), signed to ascend.

    The sign is folded in here so callers always *add* the gradient: for an untargeted
    attack it is grad J(x, y) (move away from ``y``), for a targeted one -grad J(x, t)
    (move towards ``t``). The sum keeps each example's gradient independent of the batch
    size. ``torch.autograd.grad`` computes the input gradient only: the parameters'
    ``.grad`` are neither computed nor touched. ``x`` must require grad. The gradient is
    the caller's to modify in place (``advx.input_gradient``).
    """
    logits = model(x)
    return input_gradient(ce_loss(logits, y, targeted).sum(), x), logits


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


def uniform_l2_ball(x: Tensor, eps: float, noise: ExampleNoise, stream: object = "l2-ball") -> Tensor:
    """Points drawn uniformly from the eps L2 ball (by volume), one per example of ``x``, from
    each example's own draws (``noise``, one per example; ``stream`` names the draw).

    A Gaussian direction scaled to radius ``eps * u**(1/d)`` with ``u ~ U(0, 1)``; the
    ``1/d`` power is what makes the draw uniform in volume rather than concentrated at
    the centre (torchattacks draws the radius uniformly, which is not).
    """
    d = x[0].numel()
    direction = noise.normal(x.shape[1:], (stream, "direction"), dtype=x.dtype)
    l2_normalize_(direction)
    radius = noise.uniform((), (stream, "radius"), dtype=x.dtype).pow_(1.0 / d)
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


class Exits:
    """Early exit: the examples still in the active batch of an iterative attack.

    ``rows`` are their positions in the batch the attack was given. ``split(hit)`` takes the
    active examples that ``hit`` marks (broken) out of the batch and returns ``(gone,
    stay)``: the batch positions of those leaving (where the caller writes their results)
    and the active positions of those staying (with which the caller restricts its
    per-example state), or ``None`` when none leaves. The loops call it once per step: one
    host synchronisation (``hit.any()``) per step is the price of a batch that shrinks, far
    below a forward and backward pass of any model worth attacking.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.rows = torch.arange(n, device=device)

    def split(self, hit: Tensor) -> tuple[Tensor, Tensor] | None:
        if not bool(hit.any()):
            return None
        gone = self.rows[hit]
        stay = (~hit).nonzero().squeeze(1)
        self.rows = self.rows[stay]
        return gone, stay

    def __len__(self) -> int:
        return len(self.rows)


def _fixed_steps(
    model: nn.Module,
    y: Tensor,
    x_adv: Tensor,
    steps: int,
    targeted: bool,
    keep: bool,
    early_exit: bool,
    aux: list[Tensor],
    step: Callable[[Tensor, Tensor, list[Tensor]], None],
) -> Tensor:
    """The loop shared by ``iterate_linf`` and ``iterate_l2``: ``steps`` times, one forward and one
    input-gradient backward at ``x_adv``, then ``step(x_adv, grad, aux)`` updates ``x_adv`` in
    place (``aux``: per-example tensors the step reads, such as the box or the clean input).

    With ``early_exit`` an example leaves the batch at the first iterate whose forward shows
    it adversarial and is returned there (``Exits``); the others run every step, on a batch
    that shrinks, exactly as they would in the full batch (every quantity is per example),
    so the examples broken are the same as without it and the passes fewer. Without it,
    every example runs every step and ``_KeepAdversarial`` remembers its adversarial
    iterates (``keep``).
    """
    kept = _KeepAdversarial(keep and not early_exit)
    exits = Exits(len(x_adv), x_adv.device) if early_exit else None
    out, cur = x_adv, x_adv
    for _ in range(steps):
        cur.requires_grad_(True)
        grad, logits = loss_grad(model, cur, y, targeted)
        cur.detach_()
        if exits is not None:
            hit = is_success(logits.detach(), y, targeted)
            parts = exits.split(hit)
            if parts is not None:
                gone, stay = parts
                out[gone] = cur[hit]  # the point that broke them (a no-op while ``out`` is ``cur``)
                if not len(exits):
                    return out
                cur, grad, y, *aux = (t[stay] for t in (cur, grad, y, *aux))
        else:
            kept.see(cur, logits, y, targeted)
        step(cur, grad, aux)
    if exits is None:
        return kept.result(cur)
    if cur is not out:  # the examples still active end at their last iterate
        out[exits.rows] = cur
    return out


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
    early_exit: bool = False,
) -> Tensor:
    """``steps`` signed-gradient steps of size ``alpha`` from ``x_adv``, projected on the ball.

    The loop body is one forward, one input-gradient backward and three in-place
    elementwise passes (sign, add, clamp to the precomputed box); ``x_adv`` is updated
    in place (the caller hands over a buffer it owns) and is the leaf of every step.
    Every evaluated iterate that is adversarial is remembered (``_KeepAdversarial``: one
    more elementwise pass per step), so a success seen during the loop is returned. With
    ``keep=False`` (``Attack.surrogate``: the model is a stand-in for the scored one) the
    final iterate is returned, as the algorithm is published. ``early_exit``
    (``Attack.exits_early``): see ``_fixed_steps``.
    """
    lower, upper = linf_box(x, eps, bounds)

    def step(cur: Tensor, grad: Tensor, aux: list[Tensor]) -> None:
        cur.add_(grad.sign_(), alpha=alpha).clamp_(aux[0], aux[1])

    return _fixed_steps(model, y, x_adv, steps, targeted, keep, early_exit, [lower, upper], step)


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
    early_exit: bool = False,
) -> Tensor:
    """``steps`` steps of ``alpha * g / ||g||_2`` from ``x_adv``, projected on the L2 ball and bounds.

    Same in-place discipline, ``keep`` and ``early_exit`` as ``iterate_linf``; a zero
    gradient gives a zero step.
    """

    def step(cur: Tensor, grad: Tensor, aux: list[Tensor]) -> None:
        cur.add_(l2_normalize_(grad), alpha=alpha)
        clip_to_bounds_l2_(cur, aux[0], eps, bounds)

    return _fixed_steps(model, y, x_adv, steps, targeted, keep, early_exit, [x], step)


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


TargetSelection = Literal["logit", "malt"]
MALT_CANDIDATES = 20


def target_selection_field() -> Any:
    """The ``target_selection`` field of the attacks that try several targets (FAB-T, the suite)."""
    return Field(
        "logit",
        description=(
            "how the targets are ranked: 'logit', the classes of highest clean logit after the top one "
            "(AutoAttack); 'malt', the smallest logit gap to the true class divided by the dual norm of the "
            f"gradient of that gap, among the {MALT_CANDIDATES} highest-logit classes (MALT, Melamed et al. 2024)"
        ),
    )


def target_ranking(
    model: nn.Module, x: Tensor, y: Tensor, logits: Tensor, k: int, how: TargetSelection, norm: str
) -> Tensor:
    """``(N, k')`` target classes per example, best first, ``k' = min(k, C - 1)``.

    ``"logit"``: the classes of highest clean logit after the top one (AutoAttack's APGD-T and
    FAB-T; ``logits`` are the clean logits of ``x``). ``"malt"`` (MALT, Melamed, Yehudai and
    Shamir, NeurIPS 2024): among the ``MALT_CANDIDATES`` classes of highest logit other than
    ``y``, the ``k`` with the smallest (z_y - z_c) / ||grad (z_y - z_c)||_* at ``x`` (dual norm:
    L1 for L-inf, L2 for L2): the distance to each linearised boundary, which ranks a target
    by how close it is rather than by its logit alone, so fewer targets find the examples a
    longer list would. Costs one forward with its graph and one input-gradient backward per
    candidate (``retain_graph``), once per call.
    """
    n, num = logits.shape
    k = min(k, num - 1)
    if how == "logit":
        return logits.argsort(dim=1, descending=True)[:, 1 : k + 1]
    cands = logits.scatter(1, y[:, None], float("-inf")).topk(min(MALT_CANDIDATES, num - 1), dim=1).indices
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        z = model(leaf)
        z_y = z.gather(1, y[:, None]).squeeze(1)
        scores = []
        for j in range(cands.shape[1]):
            gap = z_y - z.gather(1, cands[:, j : j + 1]).squeeze(1)
            (g,) = torch.autograd.grad(gap.sum(), leaf, retain_graph=j < cands.shape[1] - 1)
            g = g.flatten(1)
            dual = g.abs().sum(1) if norm == "linf" else torch.linalg.vector_norm(g, ord=2, dim=1)
            scores.append(gap.detach() / (dual + TINY))
    order = torch.stack(scores, 1).argsort(dim=1)[:, :k]
    return cands.gather(1, order)
