"""``distillation``: defensive distillation (Papernot et al. 2016; seed 002 Table 4).

A teacher of the cell's architecture is trained with its logits divided by T (softmax at
temperature T); a student of the same architecture is then trained on the teacher's
softmax at T (soft labels, cross-entropy with its own softmax at T) and deployed at T = 1:
the returned module is the student's raw logits. T = 10 as in seed 002.

Distillation is known to mask gradients rather than remove adversarial examples (Carlini &
Wagner 2016): at T = 1 the student's logits are about T times larger than those it was
trained with, its softmax saturates, and the cross-entropy gradient that FGSM/BIM follow
vanishes. Evaluate it with a logit-based attack (``cw-l2``) as well.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from advx import Defense, DefenseConfig, hookimpl


def teacher_loss(temperature: float):
    """Cross-entropy of the softmax at ``temperature``."""

    def loss_fn(net, x, y):
        return F.cross_entropy(net(x) / temperature, y)

    return loss_fn


def student_loss(teacher, temperature: float):
    """Cross-entropy between the teacher's softmax at T (soft labels) and the student's at T."""

    def loss_fn(net, x, y):
        with torch.no_grad():
            soft = torch.softmax(teacher(x) / temperature, dim=1)
        return -(soft * torch.log_softmax(net(x) / temperature, dim=1)).sum(1).mean()

    return loss_fn


class Distillation(Defense):
    """Papernot et al.: teacher at temperature T, student on its soft labels, deployed at T = 1."""

    name: ClassVar[str] = "distillation"

    class Config(DefenseConfig):
        temperature: float = Field(10.0, gt=0, description="softmax temperature of teacher and student training (seed 002: 10)")

    def apply(self, model, ctx):
        t = self.config.temperature
        teacher = ctx.train(
            loss_fn=teacher_loss(t), extra_key={"distillation": {"role": "teacher", "T": t}}, description=f"distillation teacher (T={t:g})"
        )
        teacher.requires_grad_(False)
        return ctx.train(
            loss_fn=student_loss(teacher, t),
            extra_key={"distillation": {"role": "student", "T": t}},
            description=f"distilled student (T={t:g})",
        )


@hookimpl
def advx_register_defenses():
    return [Distillation]
