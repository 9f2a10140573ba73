"""``gaussian-augmentation``: one model trained on Gaussian-noised inputs (seed 002).

Every training batch gets fresh noise of std ``std`` (input units), clipped to the valid
range. The single-model counterpart of the ``ensemble`` kind ``gaussian-noise`` (whose
members each see one fixed noisy copy of the training set, so that they differ).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from advx import Defense, DefenseConfig, hookimpl


def noisy_loss(std: float, bounds: tuple[float, float]):
    def loss_fn(net, x, y):
        return F.cross_entropy(net((x + std * torch.randn_like(x)).clamp_(*bounds)), y)

    return loss_fn


class GaussianAugmentation(Defense):
    """A single model trained on inputs with Gaussian noise (clipped to the valid range)."""

    name: ClassVar[str] = "gaussian-augmentation"

    class Config(DefenseConfig):
        std: float = Field(0.1, gt=0, description="std of the noise added to every training batch (input units)")

    def apply(self, model, ctx):
        s = self.config.std
        return ctx.train(
            loss_fn=noisy_loss(s, ctx.info.bounds),
            extra_key={"gaussian-augmentation": {"std": s}},
            description=f"{ctx.model.name} trained with Gaussian noise (std {s:g})",
        )


@hookimpl
def advx_register_defenses():
    return [GaussianAugmentation]
