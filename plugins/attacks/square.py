"""``square`` (L-inf) and ``square-l2``: the Square Attack (Andriushchenko, Croce, Flammarion
and Hein, "Square Attack: a query-efficient black-box adversarial attack via random
search", ECCV 2020).

Gradient-free (``requires = frozenset()``): it only reads the model's logits, so it is the
attack of an evaluation that is not fooled by masked or obfuscated gradients. Random
search on the margin loss z_y - max_{i != y} z_i (targeted: max_{i != t} z_i - z_t): each
query changes the current best point inside a random square window of side
s = round(sqrt(p * pixels)) and keeps the change where it lowered the loss; p follows
the paper's schedule from ``p_init`` (halved at 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 of 10000 queries, rescaled to ``queries``).

* L-inf: the start is vertical stripes of +-eps (one sign per column and channel); a
  query sets the window to x +- eps, one sign per channel, on the eps-cube's vertices.
* L2: the start is a grid of the paper's "eta" squares (centred bumps of alternating
  sign) scaled to norm eps; a query moves mass from a second window into the first
  (new eta bump plus the old content, renormalised) so the perturbation stays on the
  eps sphere.

Unlike AutoAttack's and torchattacks' PyTorch ports, which draw one window position and
one sign vector per query for the whole batch, every example draws its own (as the
paper's code), from its own numbers (``Attack.noise``: keyed by the example, named by
the query), so examples are searched independently and the result of one does not
depend on which others share its batch, nor on the batch size. With ``early_exit``
(default; ``Attack.exits_early``) examples leave the search as soon as they are
adversarial (the loop works on the unbroken ones: one host synchronisation per query)
and the first adversarial point found is returned, else the best point; without it (or
on a stand-in, ``Attack.surrogate``) every example spends every query and the point of
lowest margin is returned.

**Hopeless examples** (``hopeless_after`` h > 0, with early exit only; 0, AutoAttack's
behaviour, by default): from query h * queries on, an example whose margin m_i, decreasing
at its average rate so far (m_0 - m_i) / i, would not reach zero within the queries left
also leaves the search (Adaptive Auto Attack's observation, CVPR 2022: examples that make
little progress early rarely break later). The rule reads Square's own progress, not a
gradient, so a model that masks its gradients does not switch it on; the paper's schedule
shrinks the windows as the queries go, so progress slows and the extrapolation is on the
generous side. It can leave unbroken an example the whole budget would have broken:
``benchmarks/results/square-hopeless-cpu.md`` follows 5000 queries per example on six sets;
at h = 0.1 the rule spends 0.56-0.78 of the queries and loses 1 break of 191 (adversarially
trained MNIST at eps 0.2, Square alone), none of 5 on the examples the suite's gradient
members left. Extrapolating from the recent rate instead saves more and loses up to a
fifth of the breaks: Square's progress comes in rare large steps, so it is not used.

Cost: ``queries`` forward passes at most per example (plus one for the start), no
backward pass. Inputs are images ``(C, H, W)``; other shapes are searched as one-row
images. Defaults: 5000 queries, p_init 0.8 (L-inf) / 0.1 (L2): AutoAttack's.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from advx import Attack, AttackConfig, hookimpl

from ._common import early_exit_field, l2_norm, margin_to_other, per_example_view, project_l2_

# The paper's schedule: p is halved after these shares of 10000 queries.
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def hopeless_after_field(prefix: str = ""):
    """The ``hopeless_after`` field of both Square configs (and, ``prefix``-ed, the suite's
    ``square_hopeless_after``: one definition of its bounds and meaning)."""
    return Field(
        0.0, ge=0, lt=1,
        description=(
            f"{prefix}with early_exit: from this share of the queries on, an example leaves the search once its margin, "
            "decreasing at its average rate so far, would not reach zero within the queries left (0: never, AutoAttack)"
        ),
    )


def p_at(i: int, queries: int, p_init: float) -> float:
    """The share of pixels changed at query ``i`` of ``queries`` (the paper's schedule, rescaled)."""
    it = int(i / queries * 10000)
    return p_init / 2 ** sum(it > t for t in _SCHEDULE)


def margin(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Margin loss to minimise: <= 0 means success."""
    z_y, other = margin_to_other(logits, y)
    return other - z_y if targeted else z_y - other


def eta(s: int, device, dtype) -> Tensor:
    """The L2 attack's ``s x s`` update: two nested-square bumps of opposite sign, unit norm."""

    def rect(h, w):
        d = torch.zeros(h, w, device=device, dtype=dtype)
        ch, cw = h // 2, w // 2
        for k in range(max(ch, cw) + 1):
            d[max(ch - k, 0) : min(ch + k + 1, h), max(cw - k, 0) : min(cw + k + 1, w)] += 1.0 / (k + 1) ** 2
        return d / d.norm()

    out = torch.cat([rect(s // 2, s), -rect(s - s // 2, s)]) if s > 1 else torch.ones(1, 1, device=device, dtype=dtype)
    return out / out.norm()


def bump(sh: int, sw: int, device, dtype) -> Tensor:
    """The L2 update of an ``sh x sw`` window: ``eta`` when square, else a +/- half split."""
    if sh == sw:
        return eta(sh, device, dtype)
    out = torch.ones(sh, sw, device=device, dtype=dtype)
    if sw > 1:
        out[:, sw // 2 :] = -1.0
    return out / out.norm()


def window_index(n: int, c: int, sh: int, sw: int, top: Tensor, left: Tensor):
    """Advanced-indexing tuple selecting, per example, the ``c x sh x sw`` window at (top, left)."""
    rows = (top[:, None] + torch.arange(sh, device=top.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(sw, device=top.device))[:, None, None, :]
    ex = torch.arange(n, device=top.device)[:, None, None, None]
    ch = torch.arange(c, device=top.device)[None, :, None, None]
    return ex, ch, rows, cols


class _SquareBase(Attack):
    iterative: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset()

    #: queries whose random words are drawn at once (``ExampleNoise.bits_many``: the same numbers)
    block: ClassVar[int] = 100
    #: a list to receive every example's best margin after each query (``(N,)`` per entry, the
    #: start first), without early exit only: a study of the search's progress, e.g. of when
    #: examples break and of a ``hopeless_after`` rule (``benchmarks/square_hopeless.py``)
    margins: list[Tensor] | None = None

    def perturb(self, model, x, y, bounds, targeted=False):
        c = self.config
        x = x.detach()
        shape = x.shape
        x4 = x.reshape(len(x), 1, 1, -1) if x.dim() != 4 else x
        noise = self.noise(x, c.seed)
        early = self.exits_early
        # the query from which a search that cannot close its margin stops (early exit only)
        hopeless_from = max(1, int(c.hopeless_after * c.queries)) if early and c.hopeless_after > 0 else None
        n_words = self._words(x4.shape[1])
        with torch.no_grad():
            best = self._start(x4, noise, bounds)
            loss = margin(model(best.view(shape)), y, targeted)
            # The search runs on the examples still active, held compacted (their inputs, best
            # points, margins, labels, draws): they are gathered again and the leavers' points
            # written back only when an example leaves, not at every query.
            act = torch.arange(len(x), device=x.device)
            xa, ba, la, ya, na, fa = x4, best.clone(), loss.clone(), y, noise, loss.clone()
            words = None
            trace = self.margins if not early else None
            if trace is not None:
                trace.append(la.clone())
            for i in range(c.queries):
                if early:
                    live = la > 0
                    if hopeless_from is not None and i >= hopeless_from:
                        # at the average rate of decrease so far, the queries left would not
                        # bring the margin to zero: loss > (first - loss) / i * (queries - i)
                        live &= la * i <= (fa - la) * (c.queries - i)
                    if not bool(live.all()):  # the one host synchronisation per query
                        best[act] = ba
                        keep = live.nonzero().squeeze(1)
                        act, xa, ba, la, ya, na, fa = act[keep], xa[keep], ba[keep], la[keep], ya[keep], na[keep], fa[keep]
                        words = None if words is None else words[keep]
                        if act.numel() == 0:
                            break
                if i % self.block == 0 or words is None:
                    b0 = i - i % self.block
                    streams = [("square-query", q) for q in range(b0, min(b0 + self.block, c.queries))]
                    words = na.bits_many((n_words,), streams)
                cand = self._query(xa, ba, words[:, i % self.block], p_at(i, c.queries, c.p_init), bounds)
                new = margin(model(cand.view(len(act), *shape[1:])), ya, targeted)
                better = new < la
                ba = torch.where(per_example_view(better, ba), cand, ba)
                la = torch.where(better, new, la)
                if trace is not None:
                    trace.append(la.clone())
            best[act] = ba
        return best.view(shape)

    def _window(self, p, x, words, minimum=1, odd=False):
        """A random window per example, placed by two of its random ``words`` (``(N, 2)``, 32-bit
        integers): its indexing tuple and its (sh, sw)."""
        n, ch, h, w = x.shape
        s = max(int(round(math.sqrt(p * h * w))), minimum)
        if odd and s % 2 == 0:
            s += 1
        sh, sw = min(s, h), min(s, w)
        top, left = words[:, 0] % (h - sh + 1), words[:, 1] % (w - sw + 1)
        return window_index(n, ch, sh, sw, top, left), (sh, sw)


def _signs(words: Tensor, like: Tensor) -> Tensor:
    """``-1``/``+1`` from the top bit of each of ``words`` (32-bit integers), in ``like``'s dtype."""
    return (words >> 31).to(like.dtype).mul_(2).sub_(1)


class Square(_SquareBase):
    """Square Attack, L-inf: random square windows set to the eps-cube's vertices."""

    name: ClassVar[str] = "square"
    norm: ClassVar[str] = "linf"

    class Config(AttackConfig):
        eps: float = Field(0.3, gt=0, description="L-inf budget in input units (MNIST 0.3, CIFAR-10 8/255)")
        queries: int = Field(5000, ge=1, le=1000000, description="query budget per example (AutoAttack: 5000)")
        p_init: float = Field(0.8, gt=0, le=1, description="initial share of pixels changed per query (paper L-inf: 0.05-0.3; AutoAttack 0.8)")
        seed: int = Field(0, ge=0, description="seed of the random search")
        early_exit: bool = early_exit_field()
        hopeless_after: float = hopeless_after_field()

    def _start(self, x4, noise, bounds):
        eps = self.config.eps
        ch, _, w = x4.shape[1:]
        return (x4 + eps * _signs(noise.bits((ch, 1, w), "square-start"), x4)).clamp_(*bounds)

    @staticmethod
    def _words(ch: int) -> int:
        return 2 + ch  # the window's place, then one sign per channel

    def _query(self, x, best, words, p, bounds):
        eps = self.config.eps
        n, ch = x.shape[:2]
        idx, _ = self._window(p, x, words)
        cand = best.clone()
        cand[idx] = (x[idx] + eps * _signs(words[:, 2:].reshape(n, ch, 1, 1), x)).clamp_(*bounds)
        return cand


class SquareL2(_SquareBase):
    """Square Attack, L2: mass moved between random windows on the eps sphere."""

    name: ClassVar[str] = "square-l2"
    norm: ClassVar[str] = "l2"

    class Config(AttackConfig):
        eps: float = Field(2.0, gt=0, description="L2 budget in input units (MNIST 2.0, CIFAR-10 0.5)")
        queries: int = Field(5000, ge=1, le=1000000, description="query budget per example (AutoAttack: 5000)")
        p_init: float = Field(0.1, gt=0, le=1, description="initial share of pixels changed per query (paper L2 and AutoAttack: 0.1)")
        seed: int = Field(0, ge=0, description="seed of the random search")
        early_exit: bool = early_exit_field()
        hopeless_after: float = hopeless_after_field()

    def _finish(self, x, delta, bounds):
        eps = self.config.eps
        delta = project_l2_(delta.mul_(eps / l2_norm(delta).clamp_(min=1e-12)), eps)
        return delta.add_(x).clamp_(*bounds)

    def _start(self, x4, noise, bounds):
        n, ch, h, w = x4.shape
        sh, sw = max(h // 5, 1), max(w // 5, 1)
        sh = sw = min(sh, sw) if h > 1 else sh
        b = bump(sh, sw, x4.device, x4.dtype)
        delta = torch.zeros_like(x4)
        rows, cols = range((h % sh) // 2, h - sh + 1, sh), range((w % sw) // 2, w - sw + 1, sw)
        signs = _signs(noise.bits((len(rows), len(cols), ch), "square-start"), x4)  # one per tile and channel
        for a, r in enumerate(rows):
            for c, col in enumerate(cols):
                delta[:, :, r : r + sh, col : col + sw] += b * signs[:, a, c].view(n, ch, 1, 1)
        return self._finish(x4, delta, bounds)

    @staticmethod
    def _words(ch: int) -> int:
        return 5 + ch  # two windows' places, the bump's orientation, one sign per channel

    def _query(self, x, best, words, p, bounds):
        eps = self.config.eps
        n, ch = x.shape[:2]
        i1, (sh, sw) = self._window(p, x, words[:, 0:2], minimum=3, odd=True)
        i2, _ = self._window(p, x, words[:, 2:4], minimum=3, odd=True)
        delta = best - x
        mask = torch.zeros_like(x)
        mask[i1] = 1.0
        mask[i2] = 1.0
        norm_image = l2_norm(delta)
        norm_windows = l2_norm(delta * mask)
        old = delta[i1]
        old_norm = old.square().sum((-2, -1), keepdim=True).sqrt()
        b = bump(sh, sw, x.device, x.dtype)
        if sh == sw:  # the bump's orientation, per example
            flip = (words[:, 4] >> 31) == 1
            b = torch.where(per_example_view(flip, x), b.t(), b)
        new = b * _signs(words[:, 5:].reshape(n, ch, 1, 1), x) + old / (old_norm + 1e-12)
        room = ((eps**2 - norm_image.square()).clamp_(min=0) / ch + norm_windows.square()).sqrt()
        new = new / new.square().sum((-2, -1), keepdim=True).sqrt().add_(1e-12) * room
        delta[i2] = 0.0
        delta[i1] = new
        return self._finish(x, delta, bounds)


@hookimpl
def advx_register_attacks():
    return [Square, SquareL2]
