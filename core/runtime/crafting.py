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

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advx.contract.errors import AdvxError, ConfigError
from advx.runtime.guards import ABS_TOL, REL_TOL, check_budget
from advx.contract.interfaces import Attack
from advx.contract.labels import resolve_labels
from advx.contract.protocols import bpda as bpda_mode
from advx.contract.protocols import randomized_parts


@dataclass(frozen=True)
class Cost:
    """What crafting the examples of a cell cost (``None`` for a cell that reused another's)."""

    seconds: float
    forwards: int
    backwards: int


class PassCounter(nn.Module):
    """Wraps a model and counts the examples that go forward and backward through it.

    A backward pass is counted by a hook on the output tensor, so it counts exactly the
    gradient computations that reached the model, however the attack asked for them.

    A module that runs the model several times per call (EOT's view averages ``draws``
    forward passes) declares it with ``passes_per_call``; every one of them is counted, so
    an attack under 10 EOT draws costs 10 forward and backward passes per step, not one.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self.counting = True
        self.per_call = int(getattr(model, "passes_per_call", 1))

    def _count_backward(self, n: int) -> None:
        self.backwards += n

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if self.counting:
            n = x.shape[0]
            self.forwards += n * self.per_call
            if out.requires_grad:
                out.register_hook(lambda _g, n=n * self.per_call: self._count_backward(n))
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
            self.forwards += x.shape[0] * self.per_call
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
    info: dict[str, Tensor] | None = None  # per-example information the attack reported (Attack.batch_info)
    batch_size: int | None = None  # the batch size used (smaller than asked after an out-of-memory back-off)

    @property
    def seconds(self) -> float:
        return self.cost.seconds


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA or host memory) worth retrying smaller."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


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
    min_batch_size: int = 1,
    amp: str | None = None,
    channels_last: bool = False,
    surrogate: bool = False,
) -> Crafted:
    """Run ``attack`` on ``model`` over ``x`` in batches; check every batch; count passes.

    ``check_silent`` also counts the examples the attack fooled (inside the budget) at some
    iterate but returned not fooled, among those the clean input does not already fool (two
    uncounted, untimed forwards per batch: the clean input and the result).

    A batch that runs out of memory (CUDA, or the host) is retried at half the batch size,
    down to ``min_batch_size``; the rest of the cell runs at the smaller size, so the result
    equals a run started at that size (batch seeds follow batch positions). The size used
    is returned with the examples.

    ``amp`` (``"bf16"``/``"fp16"``) runs the attack under autocast and ``channels_last``
    feeds 4-D batches in that memory format (the model must have been converted too); both
    are speed options whose effect on the numbers is measured, not assumed
    (``benchmarks/kernels.py``). Scoring stays in float32.

    ``surrogate``: ``model`` stands in for the scored one (a transfer-style threat model);
    ``attack.surrogate`` is set for the call, and silent success is not watched (fooling
    the stand-in is not the goal, so returning a point that does not fool it is no loss).
    """
    mode = getattr(attack.config, "label_mode", "true")
    counter = PassCounter(model)
    gen = torch.Generator().manual_seed(seed)
    outs, targets = [], []
    targeted = False
    cuda = torch.device(device).type == "cuda"
    autocast = (
        torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp not in (None, "off")
        else contextlib.nullcontext()
    )
    # silent success is watched on deterministic modules (a random forward would fake it)
    watch = check_silent and not surrogate and not randomized_parts(model)
    silent, excluded = 0, 0.0
    infos: dict[str, list[Tensor]] = {}
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    def one_batch(start: int, size: int) -> None:
        nonlocal targeted, silent, excluded
        xb = x[start : start + size].to(device, non_blocking=True)
        if channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[start : start + size].to(device, non_blocking=True)
        counter.counting = False  # label resolution is bookkeeping, not the attack's cost
        labels, targeted = resolve_labels(counter, xb, yb, mode, num_classes, gen)
        counter.counting = True
        if targeted and not attack.supports_targeted:
            raise ConfigError(f'attack "{attack.name}" does not support targeted label mode {mode!r}')
        s = batch_seed(seed, start)
        attack.begin_batch(s)
        torch.manual_seed(s)  # attacks drawing from the global generator are per-batch deterministic too
        if watch:
            # examples the clean input already fools are not the attack's to lose: an attack that
            # moves one of them elsewhere (a single step that turns a wrong answer right) has no
            # iterate it failed to keep, and FGSM, whose one forward is at the clean input, none at all
            t_clean = time.perf_counter()
            counter.counting = False
            with torch.no_grad():
                pred0 = counter(xb).argmax(1)
            counter.counting = True
            already = pred0 == labels if targeted else pred0 != labels
            excluded += time.perf_counter() - t_clean
            counter.watch(xb, labels, targeted, attack.norm, attack.eps, bounds)
        attack.surrogate = surrogate
        try:
            with torch.enable_grad(), autocast:
                xa = attack.perturb(counter, xb.clone(), labels, bounds, targeted=targeted)
        finally:
            attack.surrogate = False
        xa = xa.to(xb.dtype)
        check_budget(attack.name, xb, xa, attack.norm, attack.eps, bounds)
        if watch:
            t_check = time.perf_counter()
            counter.unwatch()
            counter.counting = False
            with torch.no_grad():
                pred = counter(xa).argmax(1)
            counter.counting = True
            final = pred == labels if targeted else pred != labels
            silent += int((counter.ever_fooled & ~final & ~already).sum())
            excluded += time.perf_counter() - t_check
        outs.append(xa.detach().to("cpu", non_blocking=False))
        extra = attack.batch_info()
        if extra:
            for k, v in extra.items():
                infos.setdefault(k, []).append(torch.as_tensor(v).detach().cpu().flatten())
        targets.append(labels.cpu() if targeted else torch.full((len(xb),), -1, dtype=torch.long))

    size = batch_size
    with bpda_mode(model, bpda):
        start = 0
        while start < len(x):
            passes, rng = (counter.forwards, counter.backwards), gen.get_state()
            try:
                one_batch(start, size)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not is_out_of_memory(exc):
                    raise
                counter.forwards, counter.backwards = passes  # the failed attempt is not the attack's cost
                gen.set_state(rng)  # the retry draws the same random targets
                counter.unwatch()
                counter.counting = True
                if cuda:
                    torch.cuda.empty_cache()
                if size // 2 < min_batch_size:
                    raise AdvxError(
                        f'attack "{attack.name}" ran out of memory even at batch size {size} (the floor is '
                        f"{min_batch_size}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    ) from None
                size //= 2  # the rest of the cell runs at the smaller size: seeds follow batch positions
                continue
            start += size
            if on_batch is not None:
                on_batch(min(start, len(x)), len(x))
    if cuda:
        torch.cuda.synchronize(device)
    cost = Cost(time.perf_counter() - t0 - excluded, counter.forwards, counter.backwards)
    info = {k: torch.cat(v) for k, v in infos.items()} or None
    return Crafted(
        torch.cat(outs), torch.cat(targets), targeted, cost, silent_success=silent if watch else None, info=info, batch_size=size
    )
