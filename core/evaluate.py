"""Evaluating one model against one attack: the checks and the measurements the kernel owns.

Everything a robustness number depends on is done here, once, for every attack plugin:

* the model is checked before use (eval mode, logits not probabilities, output shape);
* label modes are resolved (``labels.resolve_labels``);
* forward and backward passes are counted by a wrapper around the model, never
  reported by the plugin;
* every adversarial batch is checked against the attack's declared eps-ball and the valid
  input range; a violation raises ``BudgetViolationError`` (an attack cannot cheat);
* per-example outcomes are kept, so aggregate metrics, per-class breakdowns and
  confidence buckets are all derived from the same records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BudgetViolationError, ConfigError, DataError, ModelCheckError
from .interfaces import Attack
from .labels import resolve_labels

# Tolerances of the budget check: float32 rounding of x + eps * sign(g) can exceed eps by
# an ulp; anything beyond these is a real violation.
ABS_TOL = 1e-6
REL_TOL = 1e-5

BUCKETS = (("high", 0.30, math.inf), ("medium", 0.15, 0.30), ("low", -math.inf, 0.15))


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
        return out

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        if self.counting:
            self.forwards += x.shape[0]
        return self.model.hidden_states(x)  # type: ignore[operator]

    def reset(self) -> None:
        self.forwards = self.backwards = 0


def check_model(model: nn.Module, x: Tensor, num_classes: int | None = None) -> Tensor:
    """Check that ``model`` is usable for an honest evaluation; return its logits on ``x``.

    Raises a one-line ``ModelCheckError`` when the model is in training mode (dropout or
    batch-norm statistics would change under the attack), returns probabilities instead
    of logits (gradients saturate, attacks look weaker than they are: Foolbox #108), or
    has the wrong output shape.
    """
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise ModelCheckError(
            f"model is in training mode (e.g. module {training[0]!r}); call model.eval() before evaluating"
        )
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelCheckError(f"model must return logits of shape (batch, classes); got {shape}")
    if num_classes is not None and out.shape[1] != num_classes:
        raise ModelCheckError(f"model returns {out.shape[1]} outputs but the data has {num_classes} classes")
    if out.shape[1] > 1 and bool(((out >= 0) & (out <= 1)).all()) and bool(
        torch.allclose(out.sum(1), torch.ones(out.shape[0], device=out.device), atol=1e-3)
    ):
        raise ModelCheckError(
            "model returns probabilities (outputs in [0, 1] summing to 1), not logits; remove the final softmax"
        )
    if not bool(torch.isfinite(out).all()):
        raise ModelCheckError("model returns NaN or infinite logits on clean inputs")
    return out


def check_inputs(x: Tensor, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if x.numel() and (float(x.min()) < lo - ABS_TOL or float(x.max()) > hi + ABS_TOL):
        raise DataError(
            f"inputs range over [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the declared bounds "
            f"[{lo}, {hi}]; attacks work in the data's pixel range, so normalise inside the model instead"
        )


def preflight(
    x: Tensor,
    bounds: tuple[float, float],
    num_classes: int,
    device: torch.device,
    batch_size: int,
    *models: nn.Module,
) -> None:
    """Every check before a cell runs: inputs in bounds, each distinct model usable (``check_model``)."""
    check_inputs(x, bounds)
    probe = x[: min(len(x), batch_size)].to(device)
    seen: list[nn.Module] = []
    for m in models:
        if not any(m is s for s in seen):
            check_model(m, probe, num_classes)
            seen.append(m)


def perturbation_norms(x: Tensor, x_adv: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example L-inf and L2 norms of ``x_adv - x``."""
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1), d.norm(dim=1)


def check_budget(
    attack_name: str, x: Tensor, x_adv: Tensor, norm: str, eps: float | None, bounds: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Raise ``BudgetViolationError`` unless every example is in the eps-ball and the bounds."""
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        got = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
        raise BudgetViolationError(f'attack "{attack_name}" returned shape {got} for inputs of shape {tuple(x.shape)}')
    if not bool(torch.isfinite(x_adv).all()):
        raise BudgetViolationError(f'attack "{attack_name}" returned NaN or infinite values')
    lo, hi = bounds
    below, above = float(x_adv.min()), float(x_adv.max())
    if below < lo - ABS_TOL or above > hi + ABS_TOL:
        raise BudgetViolationError(
            f'attack "{attack_name}" left the valid input range [{lo}, {hi}] (values in [{below:.6g}, {above:.6g}])'
        )
    linf, l2 = perturbation_norms(x, x_adv)
    if eps is not None:
        dist = linf if norm == "linf" else l2
        limit = eps * (1 + REL_TOL) + ABS_TOL
        bad = dist > limit
        if bool(bad.any()):
            raise BudgetViolationError(
                f'attack "{attack_name}" exceeded its {norm} budget eps={eps:g} on {int(bad.sum())} of '
                f"{len(dist)} examples (largest {float(dist.max()):.6g})"
            )
    return linf, l2


@dataclass
class Records:
    """Per-example outcomes of one evaluation (all tensors on the CPU, aligned by index)."""

    index: list[Tensor] = field(default_factory=list)
    label: list[Tensor] = field(default_factory=list)
    clean_pred: list[Tensor] = field(default_factory=list)
    clean_conf: list[Tensor] = field(default_factory=list)
    adv_pred: list[Tensor] = field(default_factory=list)
    adv_conf: list[Tensor] = field(default_factory=list)
    adv_top5: list[Tensor] = field(default_factory=list)
    target: list[Tensor] = field(default_factory=list)
    linf: list[Tensor] = field(default_factory=list)
    l2: list[Tensor] = field(default_factory=list)
    clean_score: list[Tensor] = field(default_factory=list)
    adv_score: list[Tensor] = field(default_factory=list)

    def cat(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) if v else torch.empty(0) for k, v in self.__dict__.items()}


@dataclass
class Crafted:
    """Adversarial examples crafted on a source model, reusable for any target model."""

    x_adv: Tensor  # on the CPU
    target: Tensor  # the labels the attack used (targets when targeted, else -1)
    targeted: bool
    seconds: float
    forwards: int
    backwards: int


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
) -> Crafted:
    """Run ``attack`` on ``model`` over ``x`` in batches; check every batch; count passes."""
    mode = getattr(attack.config, "label_mode", "true")
    counter = PassCounter(model)
    gen = torch.Generator().manual_seed(seed)
    outs, targets = [], []
    targeted = False
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        counter.counting = False  # label resolution is bookkeeping, not the attack's cost
        labels, targeted = resolve_labels(counter, xb, yb, mode, num_classes, gen)
        counter.counting = True
        if targeted and not attack.supports_targeted:
            raise ConfigError(f'attack "{attack.name}" does not support targeted label mode {mode!r}')
        with torch.enable_grad():
            # the attack gets a copy: a plugin that writes into its input cannot alter the
            # clean examples the kernel checks the budget against and scores
            xa = attack.perturb(counter, xb.clone(), labels, bounds, targeted=targeted)
        check_budget(attack.name, xb, xa, attack.norm, attack.eps, bounds)
        outs.append(xa.detach().to("cpu", non_blocking=False))
        targets.append(labels.cpu() if targeted else torch.full((len(xb),), -1, dtype=torch.long))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(x)), len(x))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return Crafted(torch.cat(outs), torch.cat(targets), targeted, seconds, counter.forwards, counter.backwards)


@torch.no_grad()
def score(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    crafted: Crafted,
    device: torch.device,
    batch_size: int,
    index: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-example outcomes of ``model`` on clean ``x`` and on ``crafted.x_adv``."""
    rec = Records()
    index = torch.arange(len(x)) if index is None else index
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        xb, xa, yb = x[sl].to(device), crafted.x_adv[sl].to(device), y[sl]
        p_clean = model(xb).float().softmax(1).cpu()
        logits_adv = model(xa).float()
        p_adv = logits_adv.softmax(1).cpu()
        k = min(5, logits_adv.shape[1])
        top5 = logits_adv.topk(k, dim=1).indices.cpu()
        linf, l2 = perturbation_norms(xb, xa)
        rec.index.append(index[sl])
        rec.label.append(yb)
        rec.clean_conf.append(p_clean.max(1).values)
        rec.clean_pred.append(p_clean.argmax(1))
        rec.adv_conf.append(p_adv.max(1).values)
        rec.adv_pred.append(p_adv.argmax(1))
        rec.adv_top5.append((top5 == yb[:, None]).any(1))
        rec.target.append(crafted.target[sl])
        rec.linf.append(linf.cpu())
        rec.l2.append(l2.cpu())
        rec.clean_score.append(detector_score(model, xb, len(yb)))
        rec.adv_score.append(detector_score(model, xa, len(yb)))
    return rec.cat()


def detector_score(model: nn.Module, x: Tensor, n: int) -> Tensor:
    """The model's detector score per example (higher: more likely adversarial), NaN if none.

    A defense that detects (rejects) inputs exposes ``detector_score(x)`` on the module it
    returns; the kernel records it for clean and adversarial inputs, so detection metrics
    (ROC AUC, operating points) come from the same per-example records as accuracy.
    """
    fn = getattr(model, "detector_score", None)
    if fn is None:
        return torch.full((n,), float("nan"))
    return fn(x).detach().float().flatten().cpu()


def roc_auc(negatives: Tensor, positives: Tensor) -> float | None:
    """Area under the ROC curve of scores (positives should score higher); ties count half.

    The Mann-Whitney form: the probability that a random positive outscores a random
    negative. Equal to scikit-learn's ``roc_auc_score`` on the concatenated scores.
    """
    neg, pos = negatives[torch.isfinite(negatives)], positives[torch.isfinite(positives)]
    if not len(neg) or not len(pos):
        return None
    scores = torch.cat([neg, pos]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    rank_pos = ranks[len(neg) :].sum()
    u = rank_pos - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _mean(t: Tensor) -> float | None:
    return float(t.float().mean()) if t.numel() else None


def summarize(s: dict[str, Tensor]) -> dict[str, Any]:
    """Aggregate metrics of per-example records ``s`` (see ``score``)."""
    label, clean, adv, target = s["label"], s["clean_pred"], s["adv_pred"], s["target"]
    correct = clean == label
    targeted = target >= 0
    valid_t = targeted & (target != label)
    return {
        "n": int(len(label)),
        "clean_accuracy": _mean(correct),
        "robust_accuracy": _mean(adv == label),
        # untargeted success: among examples the model got right, the share now misclassified
        "success_rate": _mean(adv[correct] != label[correct]),
        # targeted success: among examples whose target differs from the truth, the share classified as the target
        "targeted_success_rate": _mean(adv[valid_t] == target[valid_t]) if bool(targeted.any()) else None,
        "top1_error": _mean(adv != label),
        "top5_error": _mean(~s["adv_top5"].bool()),
        "mean_linf": _mean(s["linf"]),
        "max_linf": float(s["linf"].max()) if len(label) else None,
        "mean_l2": _mean(s["l2"]),
        "max_l2": float(s["l2"].max()) if len(label) else None,
        # detection: adversarial inputs (positives) against their clean originals (negatives)
        "detection_auc": roc_auc(s["clean_score"], s["adv_score"]) if "clean_score" in s else None,
    }


def summarize_with_cost(s: dict[str, Tensor], crafted: Crafted) -> dict[str, Any]:
    """``summarize`` plus what crafting cost: seconds, images per second, passes per sample."""
    metrics = summarize(s)
    n = len(s["label"])
    metrics.update(
        attack_seconds=crafted.seconds,
        images_per_second=n / crafted.seconds if crafted.seconds > 0 else None,
        forwards_per_sample=crafted.forwards / max(n, 1),
        backwards_per_sample=crafted.backwards / max(n, 1),
    )
    return metrics


def breakdown_by_class(s: dict[str, Tensor], num_classes: int) -> dict[str, dict[str, Any]]:
    """Every metric of ``summarize`` per true class (seed 000's imbalance analysis)."""
    out = {}
    for c in range(num_classes):
        m = s["label"] == c
        if bool(m.any()):
            out[str(c)] = summarize({k: v[m] for k, v in s.items()})
    return out


def breakdown_by_confidence(s: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """Metrics per clean-confidence bucket (seed 001): High >= 30%, Medium 15-30%, Low < 15%."""
    out = {}
    for name, lo, hi in BUCKETS:
        m = (s["clean_conf"] >= lo) & (s["clean_conf"] < hi)
        sub = summarize({k: v[m] for k, v in s.items()})
        out[name] = {"count": int(m.sum()), **{k: sub[k] for k in ("clean_accuracy", "robust_accuracy", "top1_error", "top5_error", "success_rate")}}
    return out


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
        return (
            f"{self.attack}: clean {m['clean_accuracy']:.4f}, robust {m['robust_accuracy']:.4f}, "
            f"success {m['success_rate'] if m['success_rate'] is not None else float('nan'):.4f}, "
            f"mean L-inf {m['mean_linf']:.4f}, mean L2 {m['mean_l2']:.4f}, {m['images_per_second']:.1f} img/s"
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
    metrics = summarize_with_cost(s, crafted)
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
            from .registry import Registry

            registry = Registry.discover()
        name, params = (a, {}) if isinstance(a, str) else a
        objs.append(registry.create("attack", name, params))  # type: ignore[arg-type]
    return [run_attack(model, atk, x, y, bounds, num_classes, device, batch_size, seed) for atk in objs]
