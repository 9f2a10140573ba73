"""The embedding API: evaluate your own ``nn.Module`` on your own data against attacks.

``evaluate`` and ``run_attack`` run the same kernel steps as a matrix cell, in this order:
``guards.preflight`` (inputs in bounds, model usable), ``crafting.craft`` (labels resolved,
passes counted, every batch checked against the budget), ``scoring.score`` (per-example
records) and ``metrics.summarize`` (every declared metric), returning an ``AttackReport``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advx.runtime.crafting import Crafted, craft
from advx.contract.errors import ConfigError, DataError
from advx.runtime.guards import preflight
from advx.contract.interfaces import Attack
from advx.analysis.metrics import breakdown_by_class, breakdown_by_confidence, summarize
from advx.analysis.scoring import score


@dataclass
class AttackReport:
    """The outcome of one attack on one model (the embedding API's result)."""

    attack: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    per_class: dict[str, dict[str, Any]]
    per_confidence: dict[str, dict[str, Any]]
    samples: dict[str, Tensor]
    x_adv: Tensor

    def __str__(self) -> str:
        m = self.metrics

        def f(v: Any, fmt: str = ".4f") -> str:
            return "-" if v is None else format(v, fmt)

        success = (
            f"targeted success {f(m['targeted_success_rate'])}"
            if m.get("targeted_success_rate") is not None
            else f"success {f(m['success_rate'])}"
        )
        return (
            f"{self.attack}: clean {f(m['clean_accuracy'])}, robust {f(m['robust_accuracy'])}, {success}, "
            f"mean L-inf {f(m['mean_linf'])}, mean L2 {f(m['mean_l2'])}, {f(m['images_per_second'], '.1f')} img/s"
        )


def run_attack(
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    bounds: tuple[float, float],
    num_classes: int,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    seed: int = 0,
    source: nn.Module | None = None,
    crafted: Crafted | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> AttackReport:
    """Craft on ``source`` (default: ``model``, white-box) and score on ``model``."""
    device = torch.device(device)
    src = model if source is None else source
    preflight(x, bounds, num_classes, device, batch_size, model, src)
    if crafted is None:
        crafted = craft(src, attack, x, y, bounds, num_classes, device, batch_size, seed, on_batch)
    s = score(model, x, y, crafted, device, batch_size)
    metrics = summarize(s, crafted.cost)
    return AttackReport(
        attack.name,
        attack.config.model_dump(mode="json"),
        metrics,
        breakdown_by_class(s, num_classes),
        breakdown_by_confidence(s),
        s,
        crafted.x_adv,
    )


def _collect(data: Any, limit: int | None) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    elif isinstance(data, Iterable):
        xs, ys, n = [], [], 0
        for xb, yb in data:
            xs.append(torch.as_tensor(xb))
            ys.append(torch.as_tensor(yb))
            n += len(xs[-1])
            if limit is not None and n >= limit:
                break
        if not xs:
            raise DataError("the data given to evaluate() is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise ConfigError("data must be an (x, y) pair of tensors or an iterable of (x, y) batches (e.g. a DataLoader)")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x.float(), y.long()


def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Sequence[Attack | str | tuple[str, dict[str, Any]]],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    samples: int | None = None,
    seed: int = 0,
    registry: Any = None,
) -> list[AttackReport]:
    """Evaluate your own ``nn.Module`` on your own data against registered attacks.

    ``data`` is an ``(x, y)`` pair of tensors or any iterable of ``(x, y)`` batches (a
    ``DataLoader``); ``x`` must lie in ``bounds`` (pixel range: put normalisation inside
    the model, see ``advx.Normalize``). ``attacks`` are attack objects, plugin names, or
    ``(name, params)`` pairs resolved through ``registry`` (default: the installed
    plugins). The model must be in eval mode and return logits; both are checked.
    """
    x, y = _collect(data, samples)
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    device = torch.device(device)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(x[:1].to(device)).shape[1])
    objs: list[Attack] = []
    for a in attacks:
        if isinstance(a, Attack):
            objs.append(a)
            continue
        if registry is None:
            from advx.contract.registry import Registry

            registry = Registry.discover()
        name, params = (a, {}) if isinstance(a, str) else a
        objs.append(registry.create("attack", name, params))  # type: ignore[arg-type]
    return [run_attack(model, atk, x, y, bounds, num_classes, device, batch_size, seed) for atk in objs]
