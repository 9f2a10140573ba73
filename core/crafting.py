"""Crafting: running an attack over a set of examples, batch by batch, under the kernel's eye.

For every batch the kernel resolves the label mode into labels (``labels``), gives the
attack a seed for the batch (``Attack.begin_batch``, derived from the cell's seed and the
batch position, so random starts differ per batch but never depend on what ran before),
hands it a copy of the clean batch (a plugin that writes into its input cannot change
what is scored), checks the result against the budget (``guards.check_budget``) and
counts every forward and backward pass through the model (``PassCounter``): the cost is
measured by the kernel, never reported by the plugin. Non-differentiable input transforms
are attacked through BPDA when the threat model allows it (``protocols.bpda``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .guards import ABS_TOL, REL_TOL, check_budget
from .interfaces import Attack
from .labels import resolve_labels
from .metrics import Cost
from .protocols import bpda as bpda_mode
from .protocols import randomized_parts


class PassCounter(nn.Module):
    """Wraps a model and counts the examples that go forward and backward through it.

    A backward pass is counted by a hook on the output tensor, so it counts exactly the
    gradient computations that reached the model, however the attack asked for them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self.counting = True

    def _count_backward(self, n: int) -> None:
        self.backwards += n

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if self.counting:
            n = x.shape[0]
            self.forwards += n
            if out.requires_grad:
                out.register_hook(lambda _g, n=n: self._count_backward(n))
            if self._watch is not None and n == len(self._watch[1]):
                self._see(x, out)
        return out

    # -- silent success: what the attack had found at some iterate ----------------------------

    _watch: tuple | None = None

    def watch(self, x: Tensor, labels: Tensor, targeted: bool, norm: str, eps: float | None, bounds: tuple[float, float]) -> None:
        """Record, for every forward of this whole batch, which examples are fooled inside the budget.

        Device-side only (no synchronisation). Forwards on other batch sizes (an attack
        working on a subset) are not watched.
        """
        self._watch = (x, labels, targeted, norm, eps, bounds)
        self.ever_fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def unwatch(self) -> None:
        self._watch = None

    @torch.no_grad()
    def _see(self, x: Tensor, out: Tensor) -> None:
        x0, labels, targeted, norm, eps, (lo, hi) = self._watch  # type: ignore[misc]
        pred = out.argmax(1)
        hit = pred == labels if targeted else pred != labels
        xd = x.detach()
        inside = (xd.flatten(1).amin(1) >= lo - ABS_TOL) & (xd.flatten(1).amax(1) <= hi + ABS_TOL)
        if eps is not None:
            d = (xd - x0).flatten(1)
            dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
            inside &= dist <= eps * (1 + REL_TOL) + ABS_TOL
        self.ever_fooled |= hit & inside

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        if self.counting:
            self.forwards += x.shape[0]
        return self.model.hidden_states(x)  # type: ignore[operator]

    def reset(self) -> None:
        self.forwards = self.backwards = 0


@dataclass
class Crafted:
    """Adversarial examples crafted on a source module, reusable for any target model."""

    x_adv: Tensor  # on the CPU
    target: Tensor  # the labels the attack used (targets when targeted, else -1)
    targeted: bool
    cost: Cost
    origin: str | None = None  # key of the cell that crafted them (set by the engine)
    silent_success: int | None = None  # fooled at some iterate inside the budget, returned not fooled

    @property
    def seconds(self) -> float:
        return self.cost.seconds


def batch_seed(seed: int, start: int) -> int:
    """The seed of the batch that starts at example ``start`` of a cell seeded ``seed``."""
    digest = hashlib.sha256(f"{seed}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def craft(
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    bounds: tuple[float, float],
    num_classes: int,
    device: torch.device,
    batch_size: int,
    seed: int = 0,
    on_batch: Callable[[int, int], None] | None = None,
    bpda: bool = True,
    check_silent: bool = False,
) -> Crafted:
    """Run ``attack`` on ``model`` over ``x`` in batches; check every batch; count passes.

    ``check_silent`` also counts the examples the attack fooled (inside the budget) at some
    iterate but returned not fooled (one uncounted, untimed forward per batch).
    """
    mode = getattr(attack.config, "label_mode", "true")
    counter = PassCounter(model)
    gen = torch.Generator().manual_seed(seed)
    outs, targets = [], []
    targeted = False
    cuda = torch.device(device).type == "cuda"
    # silent success is watched on deterministic modules (a random forward would fake it)
    watch = check_silent and not randomized_parts(model)
    silent, excluded = 0, 0.0
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with bpda_mode(model, bpda):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True)
            counter.counting = False  # label resolution is bookkeeping, not the attack's cost
            labels, targeted = resolve_labels(counter, xb, yb, mode, num_classes, gen)
            counter.counting = True
            if targeted and not attack.supports_targeted:
                raise ConfigError(f'attack "{attack.name}" does not support targeted label mode {mode!r}')
            s = batch_seed(seed, start)
            attack.begin_batch(s)
            torch.manual_seed(s)  # attacks drawing from the global generator are per-batch deterministic too
            if watch:
                counter.watch(xb, labels, targeted, attack.norm, attack.eps, bounds)
            with torch.enable_grad():
                xa = attack.perturb(counter, xb.clone(), labels, bounds, targeted=targeted)
            check_budget(attack.name, xb, xa, attack.norm, attack.eps, bounds)
            if watch:
                t_check = time.perf_counter()
                counter.unwatch()
                counter.counting = False
                with torch.no_grad():
                    pred = counter(xa).argmax(1)
                counter.counting = True
                final = pred == labels if targeted else pred != labels
                silent += int((counter.ever_fooled & ~final).sum())
                excluded += time.perf_counter() - t_check
            outs.append(xa.detach().to("cpu", non_blocking=False))
            targets.append(labels.cpu() if targeted else torch.full((len(xb),), -1, dtype=torch.long))
            if on_batch is not None:
                on_batch(min(start + batch_size, len(x)), len(x))
    if cuda:
        torch.cuda.synchronize(device)
    cost = Cost(time.perf_counter() - t0 - excluded, counter.forwards, counter.backwards)
    return Crafted(torch.cat(outs), torch.cat(targets), targeted, cost, silent_success=silent if watch else None)
