"""``adversarial-training``: train on a mix of clean and adversarial examples made on the fly.

J = rho * J(x, y) + (1 - rho) * J(x_adv, y) (Goodfellow et al. 2015; seed 002 uses rho 0.5
with FGSM at the attack's eps). ``x_adv`` is crafted at every step by **any attack plugin**
named in ``attack`` against the network being trained: FGSM by default, PGD for Madry et
al.'s training (rho = 0). The examples are crafted with the network in eval mode (the model
an attacker will face: no dropout noise in the gradient) and every batch is checked
against the attack's declared budget and the valid range, exactly as in an evaluation.
The attack's name and whole config and rho enter the training cache key.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from pydantic import Field, field_validator

from advx import ConfigError, Defense, DefenseConfig, check_budget, hookimpl, resolve_labels


def make_attack(ctx, table: dict[str, Any]):
    """The attack plugin of a table ``{name = ..., ...}``, config validated.

    Early exit (``Attack.exits_early``) is off unless the table turns it on: it answers an
    evaluation's question (is there an adversarial point inside eps?) at the first success,
    while training wants the attack's whole schedule, whose points have a higher loss than
    an example's first, barely adversarial, iterate.
    """
    params = dict(table)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError("adversarial-training: attack needs a 'name' (an attack plugin)")
    attack = ctx.create("attack", name, params)
    if "early_exit" in type(attack).Config.model_fields and "early_exit" not in params:
        attack = ctx.create("attack", name, {**params, "early_exit": False})
    return attack


def adversarial_loss(attack, rho: float, bounds: tuple[float, float], num_classes: int):
    """``loss_fn(net, x, y)`` of adversarial training with ``attack``.

    Every call (one optimiser step) hands the attack the step's index as its batch seed, as
    the kernel does per batch in an evaluation: a randomised attack (PGD's random start)
    then draws a fresh start at every step, where it would otherwise reuse one noise
    pattern for the whole training. The index counts this loss function's calls, and a
    training run is never resumed in the middle, so a rerun draws the same starts.
    With ``rho = 0`` (Madry et al.) the clean forward is skipped: it would cost a pass
    and a dropout draw for a term of weight 0.
    """
    step = 0

    def loss_fn(net, x, y):
        nonlocal step
        # the clean pass first, as it always ran: it draws the dropout mask before the
        # attack does, so FGSM-trained checkpoints are what they were
        clean = F.cross_entropy(net(x), y) if rho > 0.0 else None
        if rho == 1.0:
            return clean
        was_training = net.training
        net.eval()
        attack.begin_batch(step)
        step += 1
        try:
            labels, targeted = resolve_labels(net, x, y, attack.config.label_mode, num_classes)
            x_adv = attack.perturb(net, x.detach().clone(), labels, bounds, targeted=targeted).detach()
        finally:
            net.train(was_training)
        check_budget(attack.name, x, x_adv, attack.norm, attack.eps, bounds)
        adversarial = F.cross_entropy(net(x_adv), y)
        return adversarial if clean is None else rho * clean + (1.0 - rho) * adversarial

    return loss_fn


class AdversarialTraining(Defense):
    """Goodfellow et al.: J = rho J(x, y) + (1 - rho) J(x_adv, y), x_adv from any attack plugin."""

    name: ClassVar[str] = "adversarial-training"

    class Config(DefenseConfig):
        rho: float = Field(0.5, ge=0, le=1, description="weight of the clean loss (Goodfellow et al., seed 002: 0.5)")
        attack: dict[str, Any] = Field(
            default_factory=lambda: {"name": "fgsm"},
            description="attack table that crafts x_adv at every step (default FGSM with its default eps; PGD: Madry et al.)",
        )

        @field_validator("attack")
        @classmethod
        def _named(cls, v: dict[str, Any]) -> dict[str, Any]:
            if not isinstance(v.get("name"), str):
                raise ValueError("needs a 'name' (an attack plugin)")
            return v

    def apply(self, model, ctx):
        c = self.config
        attack = make_attack(ctx, c.attack)
        key = {"adversarial-training": {"rho": c.rho, "attack": [attack.name, attack.config.model_dump(mode="json")]}}
        loss = adversarial_loss(attack, c.rho, ctx.info.bounds, ctx.info.num_classes)
        return ctx.train(loss_fn=loss, extra_key=key, description=f"adversarially trained {ctx.model.name} ({attack.name})")


@hookimpl
def advx_register_defenses():
    return [AdversarialTraining]
