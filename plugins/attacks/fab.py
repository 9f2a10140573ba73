"""``fab`` (L-inf) and ``fab-l2``: the Fast Adaptive Boundary attack (Croce and Hein,
"Minimally distorted adversarial examples with a fast adaptive boundary attack", ICML
2020), untargeted or, with ``target_classes``, FAB-T as in AutoAttack's standard version.

A minimum-norm attack: it looks for the adversarial example closest to the input and
keeps, per example, the smallest adversarial iterate it has seen. At the iterate x_k
the classifier is linearised: for every class j != y the boundary f_j = z_j - z_y = 0 is
replaced by its tangent hyperplane, and the hyperplane nearest to x_k (distance
|f_j| / ||grad f_j||_*, the dual norm: L1 for L-inf, L2 for L2) is chosen. Both x_k and
the original input x are projected onto that hyperplane *inside the valid box* (the
least-norm point of the hyperplane within ``bounds``; where the hyperplane does not meet
the box, the box corner nearest to it), giving steps d_k and d_0. The next iterate is
the convex combination

    x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x + eta d_0)),  a = min(|d_k| / (|d_k| + |d_0|), alpha_max)

(``eta`` > 1 overshoots the linearised boundary; the bias towards x keeps the iterate
close to the input). Whenever x_{k+1} is adversarial it is recorded if it is the
smallest so far, and the iterate is pulled back towards x: x_{k+1} <- x + beta
(x_{k+1} - x), so the search continues from just inside the boundary and shrinks the
perturbation. The box-constrained projections are solved exactly and in closed form per
example: the least-norm step moves every coordinate towards the hyperplane by
min(lambda, its room to the bound) (L-inf) or min(lambda |w_i|, room) (L2), and one sort
and two cumulative sums give the level lambda at which the hyperplane is reached (no
bisection loop).

FAB-T (``target_classes`` = k > 0, AutoAttack's standard version uses 9): for each of
the k classes of highest clean logit after the top one (``target_selection = "logit"``, as
AutoAttack; ``"malt"``: the k nearest linearised boundaries, ``_common.target_ranking``),
in turn, the attack runs on the examples still unbroken with the single boundary z_t -
z_y (one backward per step instead of one per class), so each step moves towards the
target (AutoAttack's fab_pt.py: the same z_t - z_y); success is still untargeted (leaving y). With a targeted
label mode the kernel gives the target t: one run with the boundary between t and the
best other class, success when the prediction is t (``target_classes`` is then unused).

Budget: ``eps`` is the threat's budget. An example is returned at its smallest
adversarial iterate (its first within eps, with early exit) when that lies within eps, else as the clean input (AutoAttack's
rule); so the result is always inside the ball. Every evaluated iterate counts, the
points the gradients are taken at included, so a success the model showed inside the
budget is never lost. ``restarts`` > 1 reruns the examples not yet broken within eps
from a random point at half the budget (AutoAttack: uniform noise scaled to L-inf norm
eps/2, or a Gaussian direction of L2 norm eps/2, drawn per example with ``Attack.noise``
so that it does not depend on the batch; the first run starts at x). Examples the clean
input already breaks are not attacked (one forward). With ``early_exit`` (default;
``Attack.exits_early``) a fixed budget is the question: an example leaves the run once
an adversarial point within eps is found and is returned there, not at the smallest
one the remaining steps would find (the same examples are broken, for fewer passes;
``early_exit = false`` for the minimal perturbations).

Cost per step and unbroken example: two forwards (the linearisation point, with its
graph, and the new iterate) and C - 1 input-gradient backward passes for C classes
(untargeted; one graph, ``retain_graph``), or one (FAB-T and targeted modes). Without
early exit no host synchronisation inside the step loop (with it, one per step); one per
restart and per target class to select the unbroken examples. Defaults: the paper's and AutoAttack's (100 steps, alpha_max
0.1, eta 1.05, beta 0.9, one restart); eps 0.3 / 2.0 as ``apgd-ce`` / ``apgd-ce-l2``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from advx import Attack, AttackConfig, ExampleNoise, hookimpl

from ._common import TINY, TargetSelection, Exits, early_exit_field, is_success, per_example_view, target_ranking, target_selection_field

# The kernel's budget tolerance (advx.runtime.guards): relative and absolute.
_REL_TOL, _ABS_TOL = 1e-5, 1e-6


def flat_norm(d: Tensor, norm: str) -> Tensor:
    """Per-row norm of a flat ``(N, D)`` tensor: max |.| (L-inf) or L2."""
    return d.abs().amax(1) if norm == "linf" else torch.linalg.vector_norm(d, ord=2, dim=1)


def dual_norm(g: Tensor, norm: str) -> Tensor:
    """Per-row dual norm of a flat ``(N, D)`` tensor: L1 for L-inf, L2 for L2."""
    return g.abs().sum(1) if norm == "linf" else torch.linalg.vector_norm(g, ord=2, dim=1)


def _level(a: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """Per row, the ``lam >= 0`` with ``sum_i a_i min(lam, r_i) = c`` (``a, r >= 0``, ``c >= 0``),
    ``inf`` where even ``lam = max r`` falls short.

    The left side is piecewise linear and nondecreasing in ``lam`` with kinks at the ``r_i``:
    with ``r`` sorted, its value at the k-th kink is ``A_{k-1} + r_k S_k`` (``A``: cumulative
    ``a r``, ``S``: suffix sums of ``a``), the first kink at which it reaches ``c`` names the
    linear piece, and on that piece ``lam = (c - A_{k-1}) / S_k``.
    """
    rs, order = r.sort(dim=1)
    as_ = a.gather(1, order)
    ar = as_ * rs
    before = ar.cumsum(1).sub_(ar)  # A_{k-1}
    tail = as_.flip(1).cumsum(1).flip(1)  # S_k
    at_kink = before + rs * tail
    k = (at_kink < c[:, None]).sum(1, keepdim=True)
    feasible = k.squeeze(1) < r.shape[1]
    k = k.clamp_(max=r.shape[1] - 1)
    lam = (c - before.gather(1, k).squeeze(1)) / tail.gather(1, k).squeeze(1).clamp(min=TINY)
    return torch.where(feasible, lam.clamp_(min=0), torch.full_like(lam, math.inf))


def project_to_hyperplane(t: Tensor, w: Tensor, c: Tensor, norm: str, bounds: tuple[float, float]) -> Tensor:
    """The least-norm step ``d`` (L-inf or L2) with ``<w, t + d> = <w, t> - c`` and ``t + d`` in ``bounds``.

    ``t, w``: ``(N, D)``; ``c``: ``(N,)``, the value of the affine function at ``t`` (its zero
    set is the hyperplane). Each coordinate moves in the direction that brings the function
    towards zero, by ``min(lam, room)`` (L-inf) or ``min(lam |w_i|, room)`` (L2), ``room`` its
    distance to the bound on that side; ``lam`` from ``_level``. Where the hyperplane does
    not meet the box, every coordinate goes to its bound: the corner nearest to it.
    Coordinates with ``w_i = 0`` do not move.
    """
    lo, hi = bounds
    direction = torch.sign(w).mul_(-torch.sign(c)[:, None])
    room = torch.where(direction > 0, hi - t, t - lo).clamp_(min=0)
    aw = w.abs()
    if norm == "linf":
        lam = _level(aw, room, c.abs())
        return direction.mul_(torch.minimum(room, lam[:, None]))
    moving = aw > 0
    r = torch.where(moving, room / torch.where(moving, aw, 1.0), 0.0)
    lam = _level(aw * aw, r, c.abs())
    return direction.mul_(torch.minimum(r, lam[:, None]).mul_(aw))


def linearised_boundary(
    model: nn.Module, z: Tensor, shape: torch.Size, y: Tensor, norm: str, target: Tensor | None, away: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(f, g, logits)`` at the flat points ``z``: the value and input gradient of the boundary
    function of the nearest linearised boundary, and the logits of the same forward.

    ``target`` None: the boundaries ``z_j - z_y`` for every class j != y, the one of least
    ``|f| / ||g||_*`` chosen per example (C - 1 backwards on one graph). ``target`` given:
    the single boundary ``z_t - z_away`` (FAB-T: ``away`` = the true class), or ``z_t -
    max_{j != t} z_j`` where ``away`` is None (targeted label modes). ``z`` is not modified.
    """
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        logits = model(leaf.view(shape))
        if target is not None:
            z_t = logits.gather(1, target[:, None]).squeeze(1)
            if away is None:
                other = logits.scatter(1, target[:, None], float("-inf")).amax(1)
            else:
                other = logits.gather(1, away[:, None]).squeeze(1)
            f = z_t - other
            (g,) = torch.autograd.grad(f.sum(), leaf)
            return f.detach(), g, logits.detach()
        n, k = logits.shape
        idx = torch.arange(k - 1, device=z.device).expand(n, k - 1)
        others = idx + (idx >= y[:, None]).long()  # the classes != y, in order
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        best_f = best_g = best_dist = None
        for j in range(k - 1):
            f = logits.gather(1, others[:, j : j + 1]).squeeze(1) - z_y
            (g,) = torch.autograd.grad(f.sum(), leaf, retain_graph=j < k - 2)
            f = f.detach()
            dist = f.abs() / (dual_norm(g, norm) + TINY)
            if best_f is None:
                best_f, best_g, best_dist = f, g, dist
            else:
                better = dist < best_dist  # ties: the first class, as an argmin
                best_f = torch.where(better, f, best_f)
                best_g = torch.where(better[:, None], g, best_g)
                best_dist = torch.where(better, dist, best_dist)
        return best_f, best_g, logits.detach()


def fab_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    start: Tensor,
    *,
    norm: str,
    eps: float,
    steps: int,
    bounds: tuple[float, float],
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    target: Tensor | None = None,
    away: Tensor | None = None,
    targeted: bool = False,
    early_exit: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One FAB run from ``start``. Returns ``(x_out, found, best_norm)``: per example the smallest
    adversarial point evaluated when its norm is at most ``eps`` (``found``), else ``x``;
    ``best_norm`` is the smallest adversarial norm seen (``inf`` where none).

    Success is ``pred != y`` unless ``targeted`` (then ``pred == y``). ``target``/``away``
    select the boundary as in ``linearised_boundary`` (untargeted: both None).
    ``early_exit`` (``Attack.exits_early``): an example leaves the run once an adversarial
    point within eps is found (strictly: no tolerance to settle later) and is returned at
    it, not at the smallest such point the whole schedule would find; every step is per
    example, so the others run as in the whole batch and the same examples are broken.
    """
    shape = x.shape
    n = len(x)
    x0 = x.detach().flatten(1)
    x1 = start.detach().flatten(1).clone()
    best = x0.clone()
    best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
    lo, hi = bounds
    exits = Exits(n, x.device) if early_exit else None
    x0_all, best_all, norm_all = x0, best, best_norm  # where the leaving examples' results go

    def record(point, logits):
        nonlocal best, best_norm
        dist = flat_norm(point - x0, norm)
        better = is_success(logits, y, targeted) & (dist < best_norm)
        best = torch.where(better[:, None], point, best)
        best_norm = torch.where(better, dist, best_norm)
        return better

    for _ in range(steps):
        m = len(x1)  # the examples in the run (fewer than n once some have left: early exit)
        shape_now = (m, *shape[1:])
        f, g, logits = linearised_boundary(model, x1, shape_now, y, norm, target, away)
        record(x1, logits)
        with torch.no_grad():
            # Both projections in one call: x1 (value f) and x0 (value f + <g, x0 - x1>).
            c0 = f + (g * (x0 - x1)).sum(1)
            d = project_to_hyperplane(torch.cat((x1, x0)), torch.cat((g, g)), torch.cat((f, c0)), norm, bounds)
            d1, d0 = d[:m], d[m:]
            a1 = flat_norm(d1, norm).clamp_(min=1e-8)
            a0 = flat_norm(d0, norm).clamp_(min=1e-8)
            alpha = (a1 / (a1 + a0)).clamp_(0.0, alpha_max)[:, None]
            x_new = (x1 + eta * d1).mul_(1 - alpha).add_((x0 + eta * d0).mul_(alpha)).clamp_(lo, hi)
            logits = model(x_new.view(shape_now))
            adv = is_success(logits, y, targeted)
            record(x_new, logits)
            # Adversarial: step back towards x, to continue from just inside the boundary.
            x1 = torch.where(adv[:, None], torch.lerp(x0, x_new, beta), x_new)
        if exits is not None:
            hit = best_norm <= eps
            parts = exits.split(hit)
            if parts is not None:
                gone, stay = parts
                best_all[gone], norm_all[gone] = best[hit], best_norm[hit]
                if not len(exits):
                    break
                x0, x1, best, best_norm, y = (t[stay] for t in (x0, x1, best, best_norm, y))
                target, away = (None if t is None else t[stay] for t in (target, away))
    if exits is not None:
        if len(exits):  # the examples that ran every step
            best_all[exits.rows], norm_all[exits.rows] = best, best_norm
        x0, best, best_norm = x0_all, best_all, norm_all
    # Accepted within the float tolerance of the kernel's budget check (which also decides
    # what its silent-success watch counts as inside the budget), then put exactly inside
    # the ball: a point within the tolerance moves by at most a relative 1e-5.
    found = best_norm <= eps * (1 + _REL_TOL) + _ABS_TOL
    if norm == "linf":
        best = torch.minimum(torch.maximum(best, x0 - eps), x0 + eps)
    else:
        over = (best_norm > eps) & found
        best = torch.where(over[:, None], torch.lerp(x0, best, (eps / best_norm.clamp(min=TINY))[:, None]), best)
    out = torch.where(found[:, None], best, x0)
    return out.view(shape), found, best_norm


def half_budget_start(x: Tensor, eps: float, norm: str, noise: ExampleNoise, stream: object, bounds: tuple[float, float]) -> Tensor:
    """AutoAttack's FAB restart point: x plus noise of norm eps / 2 (L-inf: uniform noise scaled
    to max |.| = eps / 2; L2: a Gaussian direction scaled to eps / 2), clipped to bounds; each
    example's from its own draws (``noise``, one per example; ``stream`` names the draw)."""
    if norm == "linf":
        t = noise.uniform(x.shape[1:], stream, dtype=x.dtype).mul_(2).sub_(1)
        scale = per_example_view(t.flatten(1).abs().amax(1), x)
    else:
        t = noise.normal(x.shape[1:], stream, dtype=x.dtype)
        scale = per_example_view(torch.linalg.vector_norm(t.flatten(1), ord=2, dim=1), x)
    return t.mul_(0.5 * eps).div_(scale.clamp_(min=TINY)).add_(x).clamp_(*bounds)


class _FABConfig(AttackConfig):
    steps: int = Field(100, ge=1, le=100000, description="iterations per run (paper and AutoAttack: 100)")
    restarts: int = Field(1, ge=1, le=1000, description="runs; after the first (from x) each reruns the unbroken examples from a random point at eps/2")
    alpha_max: float = Field(0.1, ge=0, le=1, description="largest weight of the projection of the original input in each step (paper 0.1)")
    eta: float = Field(1.05, ge=1, le=10, description="overshoot of the projections onto the linearised boundary (paper 1.05)")
    beta: float = Field(0.9, gt=0, le=1, description="backward step: an adversarial iterate is pulled to x + beta (x_k - x) (paper 0.9)")
    target_classes: int = Field(
        0, ge=0, le=1000,
        description="0: untargeted FAB; k > 0: FAB-T towards each of the k classes of highest clean logit after the top one (AutoAttack: 9)",
    )
    target_selection: TargetSelection = target_selection_field()
    seed: int = Field(0, ge=0, description="seed of the random restarts")
    early_exit: bool = early_exit_field()


class _FABBase(Attack):
    iterative: ClassVar[bool] = True

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        x = x.detach()
        noise = self.noise(x, c.seed)
        with torch.no_grad():
            logits = model(x)
        found = is_success(logits, y, targeted)  # the clean input already succeeds: not attacked
        out = x.clone()
        if targeted:
            plans = [(y, None)]  # towards the kernel's target from the best other class
        elif c.target_classes == 0:
            plans = [(None, None)]
        else:  # ranked on the examples to attack only (MALT's ranking costs a backward per candidate)
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                return out
            k = min(c.target_classes, logits.shape[1] - 1)
            targets = torch.zeros(len(x), k, dtype=torch.long, device=x.device)
            targets[idx] = target_ranking(model, x[idx], y[idx], logits[idx], k, c.target_selection, self.norm)
            plans = [(targets[:, t], y) for t in range(k)]
        for t, (target, away) in enumerate(plans):
            for r in range(c.restarts):
                idx = (~found).nonzero().squeeze(1)  # one host synchronisation per run
                if idx.numel() == 0:
                    return out
                xs = x[idx]
                start = xs if r == 0 else half_budget_start(xs, c.eps, self.norm, noise[idx], ("fab-start", t, r), bounds)
                adv, ok, _ = fab_run(
                    model, xs, y[idx], start, norm=self.norm, eps=c.eps, steps=c.steps, bounds=bounds,
                    alpha_max=c.alpha_max, eta=c.eta, beta=c.beta,
                    target=None if target is None else target[idx], away=None if away is None else away[idx],
                    targeted=targeted, early_exit=self.exits_early,
                )
                out[idx] = torch.where(per_example_view(ok, xs), adv, xs)
                found[idx] = ok
        return out


class FAB(_FABBase):
    """FAB, L-inf: minimum-norm steps to the nearest linearised boundary (FAB-T with target_classes)."""

    name: ClassVar[str] = "fab"
    norm: ClassVar[str] = "linf"
    single_step: ClassVar[str | None] = "fgsm"

    class Config(_FABConfig):
        eps: float = Field(0.3, gt=0, description="L-inf budget in input units (MNIST 0.3, CIFAR-10 8/255)")


class FABL2(_FABBase):
    """FAB, L2: minimum-norm steps to the nearest linearised boundary (FAB-T with target_classes)."""

    name: ClassVar[str] = "fab-l2"
    norm: ClassVar[str] = "l2"

    class Config(_FABConfig):
        eps: float = Field(2.0, gt=0, description="L2 budget in input units (MNIST 2.0, CIFAR-10 0.5)")


@hookimpl
def advx_register_attacks():
    return [FAB, FABL2]
