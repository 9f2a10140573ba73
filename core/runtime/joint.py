"""Training several networks of one architecture together, as one stacked network.

An ensemble's members (seed 002) differ only in their initialisation and their data. Trained
one after another, M members cost M trainings of M small kernels each step; trained
together, their parameters are stacked (``torch.func.stack_module_state``) and every step
is one vmapped forward and backward over all members, each on its own batch, followed by
one optimiser step over the stacked tensors. On a GPU, where a small network leaves most of
the device idle, that is one call instead of M; on a CPU each member's convolution is
already a full BLAS call, and the vmapped step is 8-17% slower than training the members one
after another (``benchmarks/results/ensemble-train-cpu.md``), which also keeps each member's own
checkpoint, so the ensemble plugin trains together only where asked or on a GPU.

What each member gets is what ``fit`` would give it alone: its own initialisation (the
network is built after ``torch.manual_seed(its seed)``), its own shuffling (a generator
seeded by its seed), its own data, its own loss (the members' mean cross-entropies are
summed, so each member's gradient is that of its own loss), and the same optimiser,
whose update is elementwise (Adam, SGD and Adadelta with one learning rate for all).
Only the dropout masks are drawn differently (one draw for all members), so a member
trained together is not bit-identical to one trained alone: its cache key says it was
trained together, and with which members.

Networks can be stacked when they have the same type, parameter shapes and settings, no
buffers that differ between members and no running statistics (batch norm would update
its buffers inside the vmapped call), the same training config apart from the seed, and
training sets of one length. A group holds every member's training set in memory at once
(10 bootstrap replicates of MNIST: about 1.9 GB). ``train_models_together`` trains every such group together
and the rest one by one, so "together where possible" is the kernel's decision, not each
plugin's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from advx.runtime.data import iter_batches
from advx.contract.interfaces import Dataset, Model
from advx.runtime.training import (
    TrainConfig,
    TrainResult,
    _checkpoint_file,
    _make_optimizer,
    atomic_save,
    build_model,
    cache_lock,
    load_checkpoint,
    train_model,
    training_key,
)

#: ``on_epoch(description, epoch, epochs, stats)``: progress of a training, alone or of a group
EpochHook = Callable[[str, int, int, dict[str, float]], None]


@dataclass
class TrainRequest:
    """One network to train: its model plugin, training config, training data (a dataset, or a
    function returning one, called only when the cache has no checkpoint), the ``extra_key``
    that describes that data, and a description for progress output."""

    model: Model
    train: TrainConfig
    train_data: torch.utils.data.Dataset | Callable[[], torch.utils.data.Dataset]
    extra_key: Any = None
    description: str = ""


def architecture_signature(net: nn.Module) -> tuple:
    """What networks must share to run as one stacked network (hashable): the type, name and
    plain settings of every submodule, and the name, shape and dtype of every tensor. The
    settings count because a flag like ``relu_logits`` changes the forward without changing
    any tensor shape, so shapes alone cannot decide what may be stacked. The ensemble plugin
    groups its members for evaluation by the same signature."""
    modules = []
    for name, m in net.named_modules():
        plain = tuple(sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))))
        modules.append((name, type(m), plain))
    tensors = tuple((n, tuple(t.shape), t.dtype) for n, t in list(net.named_parameters()) + list(net.named_buffers()))
    return tuple(modules), tensors


def stackable(nets: Sequence[nn.Module]) -> str | None:
    """Why ``nets`` cannot be trained as one stacked network, or ``None`` if they can."""
    if len(nets) < 2:
        return "fewer than two networks"
    first = architecture_signature(nets[0])
    if any(architecture_signature(n) != first for n in nets[1:]):
        return "the networks differ in architecture or settings"
    if any(getattr(m, "track_running_stats", False) for m in nets[0].modules()):
        return "running statistics (batch norm) would be updated inside the vmapped call"
    for name, b in nets[0].named_buffers():
        if any(not torch.equal(b, dict(n.named_buffers())[name]) for n in nets[1:]):
            return f"buffer {name!r} differs between the networks"
    return None


def fit_together(
    nets: Sequence[nn.Module],
    datas: Sequence[torch.utils.data.Dataset],
    cfgs: Sequence[TrainConfig],
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[list[dict[str, float]]]:
    """Train ``nets`` (stackable, see ``stackable``) in place, each on its own data and with its
    own seed; returns each network's per-epoch history, as ``fit`` does for one."""
    m = len(nets)
    cfg = cfgs[0]
    template = copy.deepcopy(nets[0]).to("meta")
    params, _ = stack_module_state(list(nets))
    params = {n: t.detach().to(device).requires_grad_(True) for n, t in params.items()}
    shared = {n: b.to(device) for n, b in nets[0].named_buffers()}  # equal in every network
    opt = _make_optimizer(list(params.values()), cfg)
    gens = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    torch.manual_seed(cfg.seed)  # the dropout draws (one for all members)

    def call(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, shared), (x,))

    step = vmap(call, randomness="different")
    histories: list[list[dict[str, float]]] = [[] for _ in range(m)]
    for epoch in range(cfg.epochs):
        template.train()
        loss_sum = torch.zeros(m, device=device)
        total, t0 = 0, time.perf_counter()
        streams = [iter_batches(d, cfg.batch_size, shuffle=True, generator=g) for d, g in zip(datas, gens)]
        for batches in zip(*streams):
            xb = torch.stack([b[0] for b in batches]).to(device, non_blocking=True)
            yb = torch.stack([b[1] for b in batches]).to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            logits = step(params, xb)  # (members, batch, classes)
            losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(m, -1).mean(1)
            losses.sum().backward()  # each member's gradient is that of its own mean loss
            opt.step()
            loss_sum += losses.detach() * yb.shape[1]
            total += yb.shape[1]
        seconds = time.perf_counter() - t0
        for i in range(m):
            histories[i].append({"epoch": epoch + 1, "loss": float(loss_sum[i]) / max(total, 1), "seconds": seconds})
        if on_epoch is not None:
            on_epoch(epoch + 1, {"epoch": epoch + 1, "loss": float(loss_sum.mean()) / max(total, 1), "seconds": seconds})
    with torch.no_grad():
        for i, net in enumerate(nets):
            net.to(device)
            for name, p in net.named_parameters():
                p.copy_(params[name][i])
            net.eval()
    return histories


def _group_key(req: TrainRequest) -> str:
    """Requests that may train together share this (architecture and training apart from the seed)."""
    train = req.train.model_dump(mode="json")
    train.pop("seed")
    return repr((req.model.name, req.model.config.model_dump(mode="json"), sorted(train.items())))


def train_models_together(
    dataset: Dataset,
    requests: Sequence[TrainRequest],
    device: torch.device | str = "cpu",
    cache: Any = None,
    on_epoch: EpochHook | None = None,
) -> list[TrainResult]:
    """Train ``requests`` through the cache, stackable groups together, the rest one by one.

    A group trained together is cached member by member under keys that name the group (the
    keys each member would have alone, in order), so it is found again by the same group and
    never confused with a member trained alone. A group is trained again as a whole when any
    of its checkpoints is missing: resume is per group.
    """
    device = torch.device(device)
    info = dataset.info()
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(_group_key(r), []).append(i)
    results: list[TrainResult | None] = [None] * len(requests)
    for idx in groups.values():
        if len(idx) > 1:
            for i, res in zip(idx, _train_group(dataset, info, [requests[i] for i in idx], device, cache, on_epoch)):
                results[i] = res
    for i, r in enumerate(requests):
        if results[i] is None:
            results[i] = _train_alone(dataset, r, r.train_data, device, cache, on_epoch)
    return results  # type: ignore[return-value]


def _train_alone(dataset, req: TrainRequest, data, device, cache, on_epoch: EpochHook | None) -> TrainResult:
    hook = None if on_epoch is None else (lambda e, s: on_epoch(req.description, e, req.train.epochs, s))
    return train_model(dataset, req.model, req.train, device, cache, extra_key=req.extra_key, train_data=data, on_epoch=hook)


def _build(req: TrainRequest, info) -> nn.Module:
    torch.manual_seed(req.train.seed)  # the same initialisation as the network trained alone
    return build_model(req.model, info)


def _train_group(dataset, info, reqs: list[TrainRequest], device, cache, on_epoch: EpochHook | None) -> list[TrainResult]:
    """One group of requests of one architecture and training: loaded, trained together, or,
    where the networks or their data turn out not to stack, trained one by one."""
    alone = [training_key(dataset, r.model, r.train, device, r.extra_key) for r in reqs]
    keys = [training_key(dataset, r.model, r.train, device, {"together": alone, "extra": r.extra_key}) for r in reqs]
    paths = [None if cache is False else _checkpoint_file(cache, r.model.name, k) for r, k in zip(reqs, keys)]
    t0 = time.perf_counter()
    nets = [_build(r, info) for r in reqs]
    if stackable(nets) is not None:
        return [_train_alone(dataset, r, r.train_data, device, cache, on_epoch) for r in reqs]
    with cache_lock(paths[0]):  # the group is trained once, whichever process needs it first
        return _load_or_fit_group(dataset, reqs, nets, keys, paths, device, cache, on_epoch, t0)


def _load_or_fit_group(dataset, reqs, nets, keys, paths, device, cache, on_epoch, t0) -> list[TrainResult]:
    if all(p is not None and p.exists() for p in paths):
        out = []
        for net, key, path in zip(nets, keys, paths):
            blob = load_checkpoint(path, net)
            out.append(TrainResult(net.to(device).eval(), key, True, (time.perf_counter() - t0) / len(reqs), blob.get("history", []), path, len(reqs)))
        return out
    datas = [r.train_data() if callable(r.train_data) else r.train_data for r in reqs]
    if len({len(d) for d in datas}) > 1:  # type: ignore[arg-type]
        return [_train_alone(dataset, r, d, device, cache, on_epoch) for r, d in zip(reqs, datas)]
    what = f"{len(reqs)} x {reqs[0].model.name} trained together ({reqs[0].description} ...)"
    hook = None if on_epoch is None else (lambda e, s: on_epoch(what, e, reqs[0].train.epochs, s))
    histories = fit_together(nets, datas, [r.train for r in reqs], device, hook)
    seconds = (time.perf_counter() - t0) / len(reqs)
    out = []
    for net, key, path, history in zip(nets, keys, paths, histories):
        if path is not None:
            state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            atomic_save({"state_dict": state, "history": history, "key": key}, path)
        out.append(TrainResult(net.eval(), key, False, seconds, history, path, len(reqs)))
    return out


__all__ = ["TrainRequest", "architecture_signature", "fit_together", "stackable", "train_models_together"]
