"""The embedding API: evaluate your own ``nn.Module`` on your own data against attacks.

``evaluate`` and ``run_attack`` run an attack on a model through the same function as a
matrix cell (``pipeline.attack_model``: the guards, crafting with passes counted and every
batch checked against the budget, scoring, every declared metric and the diagnostics),
and then the sanity flags a matrix prints (``analysis.checks.run_checks``) over the attacks of the
call. The model is used as it is: inputs are cast to its dtype (a float64 model is
evaluated in float64), its device is kept, and it is checked (``check_model``) before
anything else asks it for a shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advx.runtime.crafting import Crafted, CraftOptions
from advx.contract.errors import ConfigError, DataError
from advx.analysis.checks import Flag, run_checks
from advx.analysis.rows import CellRow
from advx.runtime.guards import check_inputs, check_model
from advx.contract.interfaces import Attack, OutputSelect
from advx.engine.pipeline import AttackOutcome, attack_model, check_attack, fresh


@dataclass
class AttackReport:
    """The outcome of one attack on one model (the embedding API's result).

    ``diagnostics``: what the evaluation measured about itself (gradient health, random
    forward, convergence, silent success; see ``advx.analysis.diagnostics``), ``None`` when turned
    off. ``flags``: the sanity flags that name this attack (``advx.analysis.checks``), computed over
    every attack of the ``evaluate`` call, as ``advx run`` computes them over a matrix.
    """

    attack: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    per_class: dict[str, dict[str, Any]]
    per_confidence: dict[str, dict[str, Any]]
    samples: dict[str, Tensor]
    x_adv: Tensor
    diagnostics: dict[str, Any] | None = None
    flags: list[Flag] = field(default_factory=list)

    def __str__(self) -> str:
        m = self.metrics

        def f(v: Any, fmt: str = ".4f") -> str:
            return "-" if v is None else format(v, fmt)

        success = (
            f"targeted success {f(m['targeted_success_rate'])}"
            if m.get("targeted_success_rate") is not None
            else f"success {f(m['success_rate'])}"
        )
        line = (
            f"{self.attack}: clean {f(m['clean_accuracy'])}, robust {f(m['robust_accuracy'])}, {success}, "
            f"mean L-inf {f(m['mean_linf'])}, mean L2 {f(m['mean_l2'])}, {f(m['images_per_second'], '.1f')} img/s"
        )
        return "\n  ".join([line, *(str(flag) for flag in self.flags)])


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter or buffer (None: it has none)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def _as_input(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` in the model's dtype (float32 for a model without floating tensors, unless already floating)."""
    dtype = _model_dtype(model)
    if dtype is not None:
        return x.to(dtype)
    return x if x.is_floating_point() else x.float()


def _as_labels(y: Tensor) -> Tensor:
    """Integer labels as ``long``; whole-numbered float labels too. Other floats are left for
    ``check_labels`` to refuse in one line (truncating 0.5 to 0 would be a silent error)."""
    if y.is_floating_point() and y.numel() and not bool((y == y.round()).all()):
        return y
    return y.long()


def _describe(attack: Attack) -> str:
    """The attack's name and the config values that differ from its defaults, ``fgsm(eps=0.1)``
    (how a matrix names its cells), so that flags comparing two configs tell them apart."""
    config = attack.config.model_dump(mode="json")
    try:
        default = type(attack.config)().model_dump(mode="json")
    except Exception:  # noqa: BLE001 - a config without defaults: every value is shown
        default = {}
    shown = ", ".join(f"{k}={v}" for k, v in config.items() if k not in default or default[k] != v)
    return f"{attack.name}({shown})" if shown else attack.name


def _outcome_row(key: str, attack: Attack, model: nn.Module, out: AttackOutcome, threat: str) -> CellRow:
    """The outcome as the typed row a matrix cell would have (what the sanity checks read).

    One model, one data set, one seed: every call's rows share their identity but for the
    attack, so the checks compare its attacks with each other as they would a matrix's."""
    config = attack.config.model_dump(mode="json")
    surrogate = threat != "white-box"
    return CellRow(
        cell_key=key,
        status="done",
        dataset="data",
        model=type(model).__name__,
        defense="none",
        threat=threat,
        attack=_describe(attack),
        identity={"dataset": "data", "model": id(model), "defense": "none", "threat": threat, "attack": [attack.name, config], "examples": {}, "seed": 0},
        attack_config={"name": attack.name, **config},
        attack_traits=attack.traits(),
        threat_config={"name": threat},
        threat_traits={"less_knowledge": surrogate, "surrogate": surrogate},
        metrics=dict(out.metrics),
        details=dict(out.details),
    )


def _attack(
    key: str,
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    options: CraftOptions,
    source: nn.Module | None,
    crafted: Crafted | None,
    diagnostics: bool,
    checked: tuple[nn.Module, ...] | None,
) -> tuple[AttackReport, CellRow]:
    """One attack through the pipeline: its report (flags of its own row) and its row, keyed ``key``."""
    crafter = fresh if crafted is None else (lambda *_args: (crafted, False))
    out = attack_model(
        attack, model, x, y, options, view=source, crafter=crafter, diagnostics=diagnostics, checked=checked
    )
    row = _outcome_row(key, attack, model, out, "white-box" if source is None else "transfer")
    report = AttackReport(
        attack.name,
        attack.config.model_dump(mode="json"),
        out.metrics,
        out.details["per_class"],
        out.details["per_confidence"],
        out.samples,
        out.crafted.x_adv,
        out.details.get("diagnostics"),
        run_checks([row]),
    )
    return report, row


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
    diagnostics: bool = True,
) -> AttackReport:
    """Craft on ``source`` (default: ``model``, white-box) and score on ``model``.

    Every check of a matrix cell runs first; ``diagnostics`` (default on) measures what a
    cell measures about its evaluation, and the report's ``flags`` are those of this one
    attack. ``x`` is cast to the model's dtype.
    """
    options = CraftOptions(
        bounds, num_classes, torch.device(device), batch_size, seed, on_batch=on_batch, check_silent=diagnostics
    )
    report, _ = _attack(f"0:{attack.name}", model, attack, _as_input(model, x), _as_labels(y), options, source, crafted, diagnostics, ())
    return report


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
    return x, _as_labels(y)


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
    diagnostics: bool = True,
    output: str | int | None = None,
) -> list[AttackReport]:
    """Evaluate your own ``nn.Module`` on your own data against registered attacks.

    ``data`` is an ``(x, y)`` pair of tensors or any iterable of ``(x, y)`` batches (a
    ``DataLoader``); ``x`` must lie in ``bounds`` (pixel range: put normalisation inside
    the model, see ``advx.Normalize``) and is cast to the model's dtype. ``attacks`` are
    attack objects, plugin names, or ``(name, params)`` pairs resolved through
    ``registry`` (default: the installed plugins). The model must be in eval mode and
    return logits of at least two classes; the labels must be classes of the model, the
    model must have the classes each attack needs and, for a gradient attack, a gradient
    path from input to logits: all of it is checked, in one-line errors, before any
    attack runs. ``diagnostics`` (default on) measures what a matrix cell measures about
    its evaluation; each report carries it and the sanity flags that name it, computed
    over all the attacks of the call. ``output`` picks the logits of a model that returns a
    dict, a tuple or an object (a key, an index or an attribute: ``advx.OutputSelect``).
    """
    if output is not None:
        model = OutputSelect(model, output).train(model.training)  # the wrapper keeps the model's mode
    x, y = _collect(data, samples)
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    device = torch.device(device)
    x = _as_input(model, x)
    check_inputs(x, bounds)
    # the model check comes first: it is what says in one line why an output has no shape
    logits = check_model(model, x[: min(len(x), batch_size)].to(device), num_classes)
    num_classes = int(logits.shape[1])
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
    options = CraftOptions(bounds, num_classes, device, batch_size, seed, check_silent=diagnostics)
    for atk in objs:  # every attack is checked before the first one runs
        check_attack(atk, model, x, y, options, checked=(model,))
    done = [_attack(f"{i}:{atk.name}", model, atk, x, y, options, None, None, diagnostics, None) for i, atk in enumerate(objs)]
    reports, rows = [r for r, _ in done], [row for _, row in done]
    flags = run_checks(rows)
    for report, row in zip(reports, rows):
        report.flags = [f for f in flags if row.cell_key in f.cells]
    return reports
