"""Crafting: running an attack over a set of examples, batch by batch, under the kernel's eye.

For every batch the kernel resolves the label mode into labels (``labels``), gives the
attack a seed for the batch (``Attack.begin_batch``, derived from the cell's seed and the
batch position, so draws from ``Attack.generator`` differ per batch but never depend on
what ran before) and the batch's examples keyed by the cell's seed and their indices in
the dataset (``ExampleNoise``: the draws of ``Attack.noise``, and the random-target label
mode's, depend on the example alone, so a result is the same for any batch size and any
split into shards), tells it whether the module it sees is random (``Attack.random_view``:
no early exit on a success one draw shows), hands it a copy of the clean batch (a plugin
that writes into its input cannot change what is scored), checks the result against the budget (``guards.check_budget``) and
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
from advx.contract.noise import ExampleNoise
from advx.contract.protocols import bpda as bpda_mode
from advx.contract.protocols import randomized_parts


def channels_last(x: Tensor) -> Tensor:
    """A 4-D batch in channels-last strides (other shapes as they are).

    The convolution and pooling kernels choose their memory format from the input's
    strides. ``contiguous(memory_format=torch.channels_last)`` leaves a one-channel batch as
    it is (its memory is already in channels-last order, so PyTorch sees nothing to do),
    with its NCHW strides, and the CPU kernels then take their NCHW path: mnist-cnn's
    forward pass ran 2.1x slower on MNIST and 4.3x on the digits that way (forward and
    backward: 0.91-1.27x; Square, forward passes only, 1.5-1.8x;
    ``benchmarks/results/channels-last-cpu.md``). A one-channel batch is given channels-last
    strides over the same memory (a view: no copy, gradients flow through).
    """
    if x.dim() != 4:
        return x
    if x.shape[1] != 1:
        return x.contiguous(memory_format=torch.channels_last)
    x = x.contiguous()
    _, _, h, w = x.shape
    return x.as_strided(x.shape, (h * w, 1, w, 1))


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

    With ``channels_last`` every input reaches the model in channels-last strides
    (``channels_last``): the attack's own tensors (a candidate, an iterate, a ``torch.where``
    of two) come back in the default format whatever format its input had, so converting
    the batch once is not enough for the model to run in the format it was converted to.
    """

    def __init__(self, model: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        # in the mode of the model it wraps: a caller that saves the mode, switches and puts it
        # back (torchattacks does) would otherwise put the model in training mode (dropout on)
        self.train(model.training)
        self.forwards = 0
        self.backwards = 0
        self.counting = True
        self.per_call = int(getattr(model, "passes_per_call", 1))

    def _count_backward(self, n: int) -> None:
        self.backwards += n

    #: called as ``observer(x, logits)`` after every counted forward (``SilentSuccessWatch``)
    observer: Callable[[Tensor, Tensor], None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(channels_last(x) if self.channels_last else x)
        if self.counting:
            n = x.shape[0]
            self.forwards += n * self.per_call
            if out.requires_grad:
                out.register_hook(lambda _g, n=n * self.per_call: self._count_backward(n))
            if self.observer is not None:
                self.observer(x, out)
        return out

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        if self.counting:
            self.forwards += x.shape[0] * self.per_call
        return self.model.hidden_states(channels_last(x) if self.channels_last else x)  # type: ignore[operator]

    def reset(self) -> None:
        self.forwards = self.backwards = 0


class SilentSuccessWatch:
    """Silent success: the examples an attack had fooled inside its budget at some iterate but
    returned not fooled (it should have kept that iterate), among those the clean input does
    not already fool.

    ``start`` attaches the watch to a ``PassCounter`` for one batch: every counted forward of
    that whole batch records, on the device (no synchronisation), which examples it shows
    fooled inside the budget; forwards on other batch sizes (an attack working on a subset)
    are not watched. ``finish(x_adv)`` detaches it and compares with what the attack
    returned (two uncounted forwards, the clean input's and the result's, whose time is added
    to ``seconds`` so that the caller can keep it out of the attack's time); it returns the
    batch's count.
    """

    def __init__(self, counter: PassCounter, norm: str, eps: float | None, bounds: tuple[float, float]) -> None:
        self.counter, self.norm, self.eps, self.bounds = counter, norm, eps, bounds
        self.seconds = 0.0
        self.ever_fooled: Tensor | None = None

    def start(self, x: Tensor, labels: Tensor, targeted: bool) -> None:
        self.x0, self.labels, self.targeted = x, labels, targeted
        self.ever_fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        # examples the clean input already fools are not the attack's to lose: an attack that
        # moves one of them elsewhere (a single step that turns a wrong answer right) has no
        # iterate it failed to keep, and FGSM, whose one forward is at the clean input, none at all
        t0 = time.perf_counter()
        counting, self.counter.counting = self.counter.counting, False
        try:
            with torch.no_grad():
                self.already = is_fooled(self.counter(x), labels, targeted)
        finally:
            self.counter.counting = counting
        self.seconds += time.perf_counter() - t0
        self.counter.observer = self._see

    def stop(self) -> None:
        self.counter.observer = None

    @torch.no_grad()
    def _see(self, x: Tensor, out: Tensor) -> None:
        if len(x) != len(self.x0):
            return
        lo, hi = self.bounds
        hit = is_fooled(out, self.labels, self.targeted)
        xd = x.detach()
        inside = (xd.flatten(1).amin(1) >= lo - ABS_TOL) & (xd.flatten(1).amax(1) <= hi + ABS_TOL)
        if self.eps is not None:
            d = (xd - self.x0).flatten(1)
            dist = d.abs().amax(1) if self.norm == "linf" else d.norm(dim=1)
            inside &= dist <= self.eps * (1 + REL_TOL) + ABS_TOL
        self.ever_fooled |= hit & inside

    def finish(self, x_adv: Tensor) -> int:
        t0 = time.perf_counter()
        self.stop()
        counting, self.counter.counting = self.counter.counting, False
        try:
            with torch.no_grad():
                final = is_fooled(self.counter(x_adv), self.labels, self.targeted)
        finally:
            self.counter.counting = counting
        silent = int((self.ever_fooled & ~final & ~self.already).sum())  # type: ignore[operator]
        self.seconds += time.perf_counter() - t0
        return silent


def is_fooled(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Per example: the prediction is the target (targeted) or not the label (untargeted)."""
    pred = logits.argmax(1)
    return pred == labels if targeted else pred != labels


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
    index: Tensor | None = None  # the examples' indices the per-example draws were keyed by

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


def in_batches_with_backoff(
    total: int,
    batch_size: int,
    min_batch_size: int,
    run: Callable[[int, int], None],
    snapshot: Callable[[], Callable[[], None]],
    what: str,
    cuda: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """``run(start, size)`` over ``total`` examples in batches; return the batch size used.

    A batch that runs out of memory (CUDA, or the host) is retried at half the size, down to
    ``min_batch_size``, after undoing what the failed attempt changed (``snapshot()``, taken
    before every batch, returns the function that restores it); the rest runs at the
    smaller size, so batch positions, and the seeds that follow them, are those of a run
    started at that size. Below the floor, an ``AdvxError`` naming ``what``.
    """
    size, start = batch_size, 0
    while start < total:
        restore = snapshot()
        try:
            run(start, size)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_out_of_memory(exc):
                raise
            restore()
            if cuda:
                torch.cuda.empty_cache()
            if size // 2 < min_batch_size:
                raise AdvxError(
                    f"{what} ran out of memory even at batch size {size} (the floor is "
                    f"{min_batch_size}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from None
            size //= 2
            continue
        start += size
        if on_batch is not None:
            on_batch(min(start, total), total)
    return size


@dataclass(frozen=True)
class CraftOptions:
    """How ``craft`` runs an attack over a set of examples.

    ``bounds``, ``num_classes``: the data's valid range and class count. ``device``,
    ``batch_size``, ``seed`` (batch seeds derive from it and the batch position).
    ``on_batch(done, total)``: progress. ``bpda``: attack non-differentiable input
    transforms through an identity backward pass. ``check_silent``: count the examples
    the attack fooled (inside the budget) at some iterate but returned not fooled (one
    uncounted, untimed forward per batch). ``min_batch_size``: the floor of the
    out-of-memory back-off. ``amp`` (``"bf16"``/``"fp16"``) runs the attack under autocast
    and ``channels_last`` feeds every 4-D input of the model in that memory format (``PassCounter``; the model must have been
    converted too); both are speed options whose effect on the numbers is measured, not
    assumed (``benchmarks/kernels.py``); scoring stays in float32. ``surrogate``: the model
    stands in for the scored one (a transfer-style threat model); ``attack.surrogate`` is
    set for the call, and silent success is not watched (fooling the stand-in is not the
    goal, so returning a point that does not fool it is no loss). ``first``: the position in
    their cell of the first of these examples (a shard's start): batch seeds follow a batch's
    position in the cell, so a cell split into shards of whole batches crafts as it would whole.
    """

    bounds: tuple[float, float]
    num_classes: int
    device: torch.device | str = "cpu"
    batch_size: int = 256
    seed: int = 0
    on_batch: Callable[[int, int], None] | None = None
    bpda: bool = True
    check_silent: bool = False
    min_batch_size: int = 1
    amp: str | None = None
    channels_last: bool = False
    surrogate: bool = False
    first: int = 0


def craft(
    model: nn.Module, attack: Attack, x: Tensor, y: Tensor, options: CraftOptions, index: Tensor | None = None
) -> Crafted:
    """Run ``attack`` on ``model`` over ``x`` in batches; check every batch; count passes.

    ``index``: the examples' indices in their dataset, which key their random draws with the
    cell's seed (default: their positions ``0..N-1`` in ``x``). A batch that runs out of
    memory is retried smaller (``in_batches_with_backoff``); the size used is returned with
    the examples. See ``CraftOptions`` for the rest.
    """
    o = options
    device = torch.device(o.device)
    mode = getattr(attack.config, "label_mode", "true")
    counter = PassCounter(model, channels_last=o.channels_last)
    index = torch.arange(len(x)) if index is None else torch.as_tensor(index, dtype=torch.long).flatten()
    if len(index) != len(x):
        raise AdvxError(f"craft: {len(index)} example indices for {len(x)} examples")
    random_view = bool(randomized_parts(model))
    outs, targets = [], []
    targeted = False
    cuda = device.type == "cuda"
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if o.amp == "bf16" else torch.float16)
        if o.amp not in (None, "off")
        else contextlib.nullcontext()
    )
    # silent success is watched on deterministic modules (a random forward would fake it)
    watch = (
        SilentSuccessWatch(counter, attack.norm, attack.eps, o.bounds)
        if o.check_silent and not o.surrogate and not random_view
        else None
    )
    silent = 0
    infos: dict[str, list[Tensor]] = {}
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()

    def one_batch(start: int, size: int) -> None:
        nonlocal targeted, silent
        xb = x[start : start + size].to(device, non_blocking=True)
        if o.channels_last:
            xb = channels_last(xb)
        yb = y[start : start + size].to(device, non_blocking=True)
        examples = ExampleNoise.of(o.seed, index[start : start + size], device)
        counter.counting = False  # label resolution is bookkeeping, not the attack's cost
        labels, targeted = resolve_labels(counter, xb, yb, mode, o.num_classes, noise=examples)
        counter.counting = True
        if targeted and not attack.supports_targeted:
            raise ConfigError(f'attack "{attack.name}" does not support targeted label mode {mode!r}')
        s = batch_seed(o.seed, o.first + start)
        attack.begin_batch(s, examples)
        torch.manual_seed(s)  # attacks drawing from the global generator are per-batch deterministic too
        if watch is not None:
            watch.start(xb, labels, targeted)
        # under autocast the attack sees low-precision logits while scoring is in float32: a
        # success it sees may not be one the scored model sees, so it runs its whole schedule
        attack.surrogate, attack.random_view = o.surrogate, random_view or o.amp not in (None, "off")
        try:
            with torch.enable_grad(), autocast:
                xa = attack.perturb(counter, xb.clone(), labels, o.bounds, targeted=targeted)
        finally:
            attack.surrogate = attack.random_view = False
            attack.begin_batch(s)  # the keyed examples are this batch's: a later call outside the kernel gets its own
        xa = xa.to(xb.dtype)
        check_budget(attack.name, xb, xa, attack.norm, attack.eps, o.bounds)
        if watch is not None:
            silent += watch.finish(xa)
        outs.append(xa.detach().to("cpu", non_blocking=False))
        extra = attack.batch_info()
        if extra:
            for k, v in extra.items():
                infos.setdefault(k, []).append(torch.as_tensor(v).detach().cpu().flatten())
        targets.append(labels.cpu() if targeted else torch.full((len(xb),), -1, dtype=torch.long))

    def snapshot() -> Callable[[], None]:
        passes, done = (counter.forwards, counter.backwards), len(outs)

        def restore() -> None:
            counter.forwards, counter.backwards = passes  # the failed attempt is not the attack's cost
            del outs[done:], targets[done:]
            if watch is not None:
                watch.stop()
            counter.counting = True

        return restore

    with bpda_mode(model, o.bpda):
        size = in_batches_with_backoff(
            len(x), o.batch_size, o.min_batch_size, one_batch, snapshot, f'attack "{attack.name}"', cuda, o.on_batch
        )
    if cuda:
        torch.cuda.synchronize(device)
    excluded = watch.seconds if watch is not None else 0.0
    cost = Cost(time.perf_counter() - t0 - excluded, counter.forwards, counter.backwards)
    info = {k: torch.cat(v) for k, v in infos.items()} or None
    return Crafted(
        torch.cat(outs), torch.cat(targets), targeted, cost, silent_success=silent if watch is not None else None,
        info=info, batch_size=size, index=index,
    )
