"""One pipeline for "an attack on a model": the steps a matrix cell and the embedding API share.

``attack_model`` runs, in this order: the checks (``check_attack``: inputs in bounds,
every model usable, labels among the model's classes, as many classes as the attack
needs, the input gradients it needs), crafting (``crafting.craft``, or a caller's
``Crafter`` that may reuse examples crafted for another cell), scoring
(``scoring.score``), the metrics (``metrics.summarize`` and the breakdowns) and the
diagnostics the sanity flags read (``diagnostics.diagnose``). ``execute_cell`` (a matrix
cell) and ``run_attack``/``evaluate`` (the embedding API) both call it, so a model a user
passes to ``evaluate`` gets exactly the checks and measurements of a matrix cell, and a
check added here holds for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advx.analysis.diagnostics import diagnose
from advx.analysis.metrics import breakdown_by_class, breakdown_by_confidence, roc_points, summarize
from advx.analysis.scoring import score
from advx.contract.interfaces import Attack
from advx.contract.protocols import bpda
from advx.runtime.crafting import Cost, Crafted, CraftOptions, craft
from advx.runtime.guards import check_classes, check_gradient_path, check_labels, check_requires, preflight

#: ``crafter(module, attack, x, y, options) -> (crafted, reused)``: crafts, or reuses examples
#: crafted elsewhere (``reused`` True: their cost and convergence belong to that evaluation)
Crafter = Callable[[nn.Module, Attack, Tensor, Tensor, CraftOptions], tuple[Crafted, bool]]

#: examples the gradient-path check differentiates (it asks whether a path exists, not how large)
GRADIENT_PROBE = 4


def fresh(module: nn.Module, attack: Attack, x: Tensor, y: Tensor, options: CraftOptions) -> tuple[Crafted, bool]:
    """The default ``Crafter``: craft now."""
    return craft(module, attack, x, y, options), False


@dataclass
class AttackOutcome:
    """What ``attack_model`` measured.

    ``metrics``: every declared metric (``metrics.summarize``; no cost where ``reused``).
    ``details``: ``per_class``, ``per_confidence``, and where they apply ``roc`` (detector
    modules), ``attack_info`` (``Attack.batch_info``) and ``diagnostics``.
    """

    crafted: Crafted
    reused: bool
    samples: dict[str, Tensor]
    metrics: dict[str, Any]
    details: dict[str, Any]


def measure(samples: dict[str, Tensor], cost: Cost | None, num_classes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row's metrics and breakdowns from its per-example records: ``(metrics, details)``.

    The one definition of a row's numbers, for a cell computed whole (``attack_model``) and
    for a sharded cell at the merge of its shards (``advx.engine.shards``), where the
    records of every shard are measured together: the detection AUC, the breakdowns and
    later the worst case and the intervals need every example, not an average of shards'.
    ``cost``: what crafting cost (None: the examples were reused, their cost is elsewhere).
    """
    metrics = summarize(samples, cost)
    details: dict[str, Any] = {
        "per_class": breakdown_by_class(samples, num_classes),
        "per_confidence": breakdown_by_confidence(samples),
    }
    if metrics.get("detection_auc") is not None:
        details["roc"] = roc_points(samples["clean_score"], samples["adv_score"])
    return metrics, details


def check_attack(
    attack: Attack, target: nn.Module, x: Tensor, y: Tensor, options: CraftOptions,
    view: nn.Module | None = None, where: str = "", checked: tuple[nn.Module, ...] = (),
) -> None:
    """Every check before ``attack`` crafts on ``view`` (default ``target``) and is scored on ``target``.

    One-line errors, before anything runs: inputs outside the bounds or models not usable
    (``preflight``; models in ``checked`` were checked already), labels that are not
    classes of the model, fewer classes than the attack needs (``Attack.min_classes``),
    and for a gradient attack a module that is not differentiable (``check_requires``) or
    whose logits have no gradient path from its input (``check_gradient_path``, measured
    as the attack sees the module: through BPDA when ``options.bpda``).
    """
    view = target if view is None else view
    o = options
    models = [m for m in (target, view) if not any(m is c for c in checked)]
    if models:
        preflight(x, o.bounds, o.num_classes, torch.device(o.device), o.batch_size, *models)
    check_labels(y, o.num_classes)
    check_classes(attack.name, attack.min_classes(attack.config), o.num_classes)
    check_requires(attack.name, attack.requires, view, o.bpda, where)
    if "gradients" in attack.requires:
        n = min(len(x), GRADIENT_PROBE)
        device = torch.device(o.device)
        with bpda(view, o.bpda):
            check_gradient_path(view, x[:n].to(device), y[:n].to(device))


def attack_model(
    attack: Attack,
    target: nn.Module,
    x: Tensor,
    y: Tensor,
    options: CraftOptions,
    *,
    view: nn.Module | None = None,
    index: Tensor | None = None,
    crafter: Crafter = fresh,
    diagnostics: bool = True,
    eot: int = 1,
    where: str = "",
    checked: tuple[nn.Module, ...] | None = (),
    on_stage: Callable[[str], None] | None = None,
) -> AttackOutcome:
    """Check, craft on ``view`` (default ``target``: white-box), score on ``target``, measure.

    ``checked``: models already checked (``None``: every check already ran, e.g. for all
    attacks of an ``evaluate`` call before the first). ``on_stage(name)`` is told each step
    as it starts (``checks``, ``attack``, ``scoring``, ``diagnostics``), so a caller can say
    which one raised. ``eot``: the EOT draws the view averages (recorded in the
    diagnostics). ``index``: the examples' indices in their dataset (default ``0..N-1``).
    """
    view = target if view is None else view
    stage = on_stage or (lambda _name: None)
    if checked is not None:
        stage("checks")
        check_attack(attack, target, x, y, options, view, where, checked)
    stage("attack")
    crafted, reused = crafter(view, attack, x, y, options)
    stage("scoring")
    samples = score(target, x, y, crafted, torch.device(options.device), crafted.batch_size or options.batch_size, index)
    metrics, details = measure(samples, None if reused else crafted.cost, options.num_classes)
    if crafted.info:
        details["attack_info"] = {k: v.tolist() for k, v in crafted.info.items()}
    if diagnostics:
        stage("diagnostics")
        details["diagnostics"] = diagnose(attack, view, x, y, crafted, options, eot, reused)
    return AttackOutcome(crafted, reused, samples, metrics, details)
