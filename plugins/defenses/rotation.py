"""``rotation``: seed 003's defense, rotate the input about the image centre before classifying.

Seed 003 (Thang & Matsui) rotates each adversarial image counterclockwise by an angle in
[1, 90] degrees (its eq. 5) and reports, per image, the angle at which the true class is
recovered best. Choosing that angle needs the true label: it is an **oracle** analysis,
not a defense anyone can deploy. ``rotation_sweep`` below computes it (and the paper's
curves of the true- and target-class probability against the angle) for the analysis in
``experiments/seed003-rotation/rotation.py``; the defense this plugin registers is what can be
deployed:

* a **fixed** angle (``angle``; 0 is exactly the identity), or
* a **random** angle per input and per call, uniform in ``angle_range``. Its forward is
  random (the module declares ``randomized = True``), so a single gradient is a sample:
  an honest white-box attacker averages over the randomness (EOT, Athalye et al. 2018),
  and a robust-accuracy number from one random draw is itself a random variable.

The rotation is bilinear ``grid_sample``, differentiable, so white-box attacks see through
it (no gradient masking): whatever the defense gains must survive the attacker who
knows the angle. Corners that come from outside the image are filled with the lower bound
of the dataset's range (black, MNIST's background), not with zero in normalised units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from advx import Defense, DefenseConfig, InputTransform, hookimpl


def rotate(x: Tensor, angle: float | Tensor, fill: float = 0.0) -> Tensor:
    """Rotate (N, C, H, W) images counterclockwise by ``angle`` degrees about their centre.

    ``angle`` is a number or a tensor of shape (N,) (one angle per image). Bilinear,
    differentiable in ``x``; pixels whose source lies outside the image get ``fill``.
    An angle of exactly 0 returns ``x`` itself (bit-exact identity).
    """
    n, _, h, w = x.shape
    if isinstance(angle, Tensor) and angle.dim() > 0:
        a = angle.to(device=x.device, dtype=x.dtype)
    else:
        if float(angle) == 0.0:
            return x
        a = torch.full((n,), float(angle), dtype=x.dtype, device=x.device)
    rad = a * (math.pi / 180.0)
    cos, sin = rad.cos()[:, None, None], rad.sin()[:, None, None]
    ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
    ii, jj = torch.meshgrid(
        torch.arange(h, dtype=x.dtype, device=x.device), torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij"
    )
    u, v = jj - cj, ci - ii  # displayed axes: u to the right, v up
    # output pixel q samples the input at R(-angle) q
    us = cos * u + sin * v
    vs = -sin * u + cos * v
    js, is_ = us + cj, ci - vs
    gx = js / max(w - 1, 1) * 2 - 1
    gy = is_ / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out + fill
    zero = (a == 0)[:, None, None, None]
    return torch.where(zero, x, out) if bool(zero.any()) else out


class Rotate(InputTransform):
    """Rotation by a fixed angle (degrees, counterclockwise)."""

    def __init__(self, angle: float, fill: float = 0.0) -> None:
        super().__init__()
        self.angle = float(angle)
        self.fill = float(fill)

    def transform(self, x: Tensor) -> Tensor:
        return rotate(x, self.angle, self.fill)

    def extra_repr(self) -> str:
        return f"angle={self.angle}"


class RandomRotate(InputTransform):
    """Rotation by an angle drawn uniformly from [low, high] per image and per call (random forward)."""

    randomized: ClassVar[bool] = True

    def __init__(self, low: float, high: float, fill: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.low, self.high, self.fill = float(low), float(high), float(fill)
        self.generator = torch.Generator().manual_seed(seed)

    def transform(self, x: Tensor) -> Tensor:
        a = torch.rand(len(x), generator=self.generator, dtype=torch.float64) * (self.high - self.low) + self.low
        return rotate(x, a.to(device=x.device, dtype=x.dtype), self.fill)

    def extra_repr(self) -> str:
        return f"angle_range=({self.low}, {self.high})"


class RotationDefense(Defense):
    """Seed 003: rotate inputs by a fixed or a random angle before the classifier."""

    name: ClassVar[str] = "rotation"

    class Config(DefenseConfig):
        angle: float = Field(30.0, ge=-360, le=360, description="fixed rotation in degrees, counterclockwise (0: identity)")
        angle_range: tuple[float, float] | None = Field(
            None, description="if set, a random angle per input and per call, uniform in [low, high] degrees (random forward)"
        )
        seed: int = Field(0, description="seed of the random angles (angle_range only)")

        @model_validator(mode="after")
        def _check_range(self):
            if self.angle_range is not None:
                lo, hi = self.angle_range
                if not (-360 <= lo <= hi <= 360):
                    raise ValueError(f"angle_range must be [low, high] with -360 <= low <= high <= 360, got {self.angle_range}")
            return self

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        c = self.config
        fill = float(ctx.info.bounds[0]) if ctx is not None else 0.0
        if c.angle_range is not None:
            t: InputTransform = RandomRotate(*c.angle_range, fill=fill, seed=c.seed)
        else:
            t = Rotate(c.angle, fill=fill)
        return nn.Sequential(t, model).eval()


# -- the rotation sweep of seed 003 (Figures 2-5, Table I): an analysis, not a defense ----------


@torch.no_grad()
def rotation_sweep(model: nn.Module, x: Tensor, angles: Sequence[float], fill: float = 0.0, batch_size: int = 500) -> Tensor:
    """Softmax probabilities of ``model`` on ``x`` rotated by each angle: shape (N, len(angles), classes)."""
    out = []
    for a in angles:
        probs = [model(rotate(xb, float(a), fill)).float().softmax(1) for xb in x.split(batch_size)]
        out.append(torch.cat(probs))
    return torch.stack(out, dim=1)


def oracle_best_angle(probs: Tensor, angles: Sequence[float], true: Tensor, lowest: float = 1.0) -> tuple[Tensor, Tensor]:
    """ORACLE: per image, the angle >= ``lowest`` at which the *true* class is most probable.

    Uses the true label, which a deployed defense does not have: seed 003's best-angle
    numbers (Table I) are this oracle. Returns (best angle, true-class probability there).
    """
    ang = torch.as_tensor([float(a) for a in angles])
    allowed = ang >= lowest
    p_true = probs.gather(2, true.view(-1, 1, 1).expand(-1, probs.shape[1], 1))[..., 0]  # (N, A)
    p_true = torch.where(allowed[None, :], p_true, torch.full_like(p_true, -1.0))
    best = p_true.argmax(1)
    return ang[best], p_true.gather(1, best[:, None])[:, 0]


@hookimpl
def advx_register_defenses():
    return [RotationDefense]
