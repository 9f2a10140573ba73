"""Guards: the checks that stand between a model or an attack and a robustness number.

Before a cell runs (``preflight``): the inputs lie in the dataset's declared bounds and
every model is usable (eval mode, logits not probabilities, output shape, at least two
classes, finite values); the labels name classes of the model (``check_labels``); the
model has as many classes as the attack needs (``check_classes``) and, for a gradient
attack, a gradient path from its input to its logits (``check_gradient_path``).
After every attack batch (``check_budget``): the examples lie in the attack's declared
eps-ball and the valid input range. Before crafting (``check_requires``): what the attack
declares it needs (input gradients) is what the attacked module offers. Each failure is a
one-line error naming what is wrong.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advx.contract.errors import BudgetViolationError, ConfigError, DataError, ModelCheckError
from advx.contract.protocols import non_differentiable_parts

# Tolerances of the budget check: float32 rounding of x + eps * sign(g) can exceed eps by
# an ulp; anything beyond these is a real violation.
ABS_TOL = 1e-6
REL_TOL = 1e-5


def check_model(model: nn.Module, x: Tensor, num_classes: int | None = None) -> Tensor:
    """Check that ``model`` is usable for an honest evaluation; return its logits on ``x``.

    Raises a one-line ``ModelCheckError`` when the model is in training mode (dropout or
    batch-norm statistics would change under the attack), returns probabilities instead
    of logits (gradients saturate, attacks look weaker than they are: Foolbox #108), has
    the wrong output shape, or returns a single logit (cross-entropy over one class is
    zero whatever the input, so every loss-based attack would score it fully robust). A
    model that raises on the probe batch is reported in one line too.
    """
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise ModelCheckError(
            f"model is in training mode (e.g. module {training[0]!r}); call model.eval() before evaluating"
        )
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - reported in one line, the cause chained
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelCheckError(
            f"model raised {type(exc).__name__} on a probe batch of shape {tuple(x.shape)} ({x.dtype}): {first}"
        ) from exc
    if not isinstance(out, Tensor):
        raise ModelCheckError(
            f"model must return logits of shape (batch, classes); got a {type(out).__name__}: "
            "return the logits tensor itself (wrap the model to select it)"
        )
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ModelCheckError(f"model must return logits of shape (batch, classes); got {tuple(out.shape)}")
    if out.shape[1] < 2:
        raise ModelCheckError(
            "model returns 1 logit per example; attacks need one logit per class (at least 2): for a binary "
            "classifier with logit z, return torch.cat([torch.zeros_like(z), z], 1), whose softmax is sigmoid(z)"
        )
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


def check_labels(y: Tensor, num_classes: int) -> None:
    """Raise ``DataError`` unless every label is a class of the model (``0..num_classes-1``):
    a label outside them would fail deep inside a loss with an ``IndexError``."""
    if y.is_floating_point() or y.is_complex():
        raise DataError(f"labels must be integer class indices, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"labels range over [{int(y.min())}, {int(y.max())}], but the model has {num_classes} classes "
            f"(labels 0..{num_classes - 1})"
        )


def check_classes(attack_name: str, needed: int, num_classes: int, where: str = "the model") -> None:
    """Raise ``ConfigError`` when the attack needs more classes (``Attack.min_classes``) than there are."""
    if num_classes < needed:
        raise ConfigError(
            f'attack "{attack_name}" needs at least {needed} classes (as configured), but {where} has {num_classes}'
        )


def check_gradient_path(module: nn.Module, x: Tensor, y: Tensor) -> None:
    """Raise ``ModelCheckError`` unless the logits of ``module`` depend on its input through autograd.

    A model that detaches its input, computes under ``no_grad`` or returns a constant gives
    a gradient attack nothing to follow; without this check every gradient attack would
    fail with a raw torch error ("appears to not have been used in the graph"). A gradient
    that exists but is zero is not refused here: that is a measured diagnostic (the
    ``zero-gradients`` flag). Run it as the attack sees the module (inside ``bpda``).
    """
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = module(xg)
        g = None
        if isinstance(out, Tensor) and out.requires_grad:
            loss = torch.nn.functional.cross_entropy(out.float(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if g is None:
        raise ModelCheckError(
            "model's logits do not depend on its input through autograd (no gradient path: a detached input, "
            "no_grad, or a constant output), so a gradient attack cannot run; fix the model, declare the "
            "non-differentiable part as an advx.InputTransform (attacked through BPDA), or use a gradient-free attack"
        )


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


def check_requires(attack_name: str, requires: frozenset[str], module: nn.Module, bpda: bool, where: str = "") -> None:
    """Raise unless ``module`` offers what the attack ``requires``.

    A gradient attack against a module with a declared non-differentiable part has no
    meaningful gradient unless BPDA is on (the threat model's ``bpda``, the default);
    with BPDA off the cell fails instead of reporting a robustness that only measures
    missing gradients.
    """
    if "gradients" in requires and not bpda:
        parts = non_differentiable_parts(module)
        if parts:
            raise ModelCheckError(
                f'attack "{attack_name}" needs input gradients, but {where or "the attacked module"} is not '
                f"differentiable (part {parts[0]!r} declares so) and BPDA is off; set bpda = true on the threat "
                "model or use a gradient-free attack"
            )
