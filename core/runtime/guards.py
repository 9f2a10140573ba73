"""Guards: the checks that stand between a model or an attack and a robustness number.

Before a cell runs (``preflight``): the inputs lie in the dataset's declared bounds and
every model is usable (eval mode, logits not probabilities, output shape, finite values).
After every attack batch (``check_budget``): the examples lie in the attack's declared
eps-ball and the valid input range. Before crafting (``check_requires``): what the attack
declares it needs (input gradients) is what the attacked module offers. Each failure is a
one-line error naming what is wrong.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advx.contract.errors import BudgetViolationError, DataError, ModelCheckError
from advx.contract.protocols import non_differentiable_parts

# Tolerances of the budget check: float32 rounding of x + eps * sign(g) can exceed eps by
# an ulp; anything beyond these is a real violation.
ABS_TOL = 1e-6
REL_TOL = 1e-5


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
