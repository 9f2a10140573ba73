"""Diagnostics: what a cell measures about its own evaluation, for the sanity flags.

Each cell records, beside its metrics (row ``metrics.diagnostics``), a few cheap checks of
Carlini et al.'s list ("On Evaluating Adversarial Robustness", 2019) that need the models
and cannot be read from results alone:

* ``gradients``: the share of probe inputs whose loss gradient through the attacked module
  is exactly zero, or NaN/infinite (masked or broken gradients);
* ``random_forward``: whether two identical forward passes of the module the attack
  crafts on differ, and how many EOT draws the attack used (a randomised defense attacked
  without EOT is overrated);
* ``convergence``: the attack rerun with twice its ``steps`` on a sample: if that finds
  clearly more adversarial examples, the attack had not converged;
* ``silent_success``: examples the attack had fooled, inside the budget, at some iterate
  but did not return fooled (recorded while crafting, see ``crafting.PassCounter``); an
  example the clean input already fools is not counted (the attack found nothing there,
  and a single-step attack, whose one forward is at the clean input, has no iterate to keep).

Each probe runs outside the timed attack and its passes are not counted as the attack's.
``diagnose`` runs them all, for a matrix cell and for ``advx.evaluate`` alike
(``advx.engine.pipeline``).
"""

from __future__ import annotations

from typing import Any

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advx.runtime.crafting import Crafted, CraftOptions, craft, is_fooled
from advx.contract.interfaces import Attack
from advx.contract.protocols import bpda

#: examples the probes use (the first of the cell's evaluation set)
PROBE = 32
#: the convergence check is skipped for attacks with more steps than this (too costly)
MAX_CHECK_STEPS = 500


def gradient_health(module: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Shares of inputs whose cross-entropy input gradient is all zero, or not finite."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(module(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if g is None:
        return {"zero_share": 1.0, "nonfinite_share": 0.0}
    flat = g.flatten(1)
    finite = torch.isfinite(flat).all(1)
    zero = (flat == 0).all(1)
    return {"zero_share": float(zero.float().mean()), "nonfinite_share": float((~finite).float().mean())}


@torch.no_grad()
def random_forward(module: nn.Module, x: Tensor) -> bool:
    """Whether two forward passes of ``module`` on the same inputs give different logits."""
    a, b = module(x), module(x)
    return not torch.allclose(a, b, rtol=0, atol=1e-6)


@torch.no_grad()
def fooled(module: nn.Module, x_adv: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    return is_fooled(module(x_adv), labels, targeted)


def convergence(
    attack: Attack, view: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, target: Tensor, options: CraftOptions,
    index: Tensor | None = None,
) -> dict[str, Any] | None:
    """Success on ``x`` of the attack as run, and with twice its steps; None when not applicable.

    The doubled attack is crafted as the attack was (``options``: seed, BPDA, precision; the
    examples' ``index``, so each starts from the same random point), in one batch, without
    progress events or the silent-success watch.
    """
    steps = getattr(attack.config, "steps", None)
    if not attack.iterative or not isinstance(steps, int):
        return None
    if steps > MAX_CHECK_STEPS:
        return {"skipped": f"steps = {steps} > {MAX_CHECK_STEPS}"}
    doubled = type(attack)(attack.config.model_copy(update={"steps": steps * 2}))
    again = craft(view, doubled, x, y, replace(options, batch_size=len(x), on_batch=None, check_silent=False), index)
    targeted = bool((target >= 0).any())
    labels = target if targeted else y
    device = torch.device(options.device)
    xd, xa, lab = again.x_adv.to(device), x_adv.to(device), labels.to(device)
    return {
        "steps": steps,
        "n": len(x),
        "success": int(fooled(view, xa, lab, targeted).sum()),
        "success_doubled": int(fooled(view, xd, lab, targeted).sum()),
    }


def diagnose(
    attack: Attack, view: nn.Module, x: Tensor, y: Tensor, crafted: Crafted, options: CraftOptions, eot: int = 1,
    reused: bool = False,
) -> dict[str, Any]:
    """Every diagnostic above for one evaluation, on its first ``PROBE`` examples.

    ``view`` is the module the attack crafted on (an undefended or transfer attacker facing
    a random defense crafts on a deterministic model and needs no EOT); ``eot`` the draws
    it used. Gradients are measured as the attack sees the module: through BPDA when
    ``options.bpda``. Examples ``reused`` from another evaluation were not crafted here, so
    their convergence is not measured again.
    """
    n = min(PROBE, len(x))
    device = torch.device(options.device)
    xp, yp = x[:n].to(device), y[:n].to(device)
    with bpda(view, options.bpda):
        gradients = gradient_health(view, xp, yp)
    out: dict[str, Any] = {
        "gradients": gradients,
        "random_forward": random_forward(view, xp),
        "eot": eot,
        "silent_success": crafted.silent_success,
    }
    if not reused:
        index = crafted.index[:n] if crafted.index is not None else None
        out["convergence"] = convergence(attack, view, x[:n], y[:n], crafted.x_adv[:n], crafted.target[:n], options, index)
    return out
