"""``lenet5``: LeNet-5 (LeCun et al. 1998), the classifier of seed 003 (rotation defense).

C1 6@5x5 -> S2 subsampling 2x2 -> C3 16@5x5 -> S4 subsampling 2x2 -> C5 120 -> F6 84 ->
output (logits). Seed 003 describes exactly LeCun's network: a 32x32 input, C1 feature
maps of 28x28 (122,304 connections), C3 units "connected to several 5x5 neighborhoods at
identical locations in a subset of S2's feature maps", S4 16@5x5, C5 120 maps each
connected to all 16 S4 maps (48,120 connections), F6 84 units (10,164 parameters).

Choices, and why:

* **32x32 input**: smaller inputs (28x28 MNIST, 8x8 digits) are padded to ``input_size``
  *inside the model*, so the dataset, attacks and budgets stay at the native size. The
  pad value is the normalised *lower bound* of the dataset's range (black, MNIST's
  background) rather than zero, because a ``Normalize`` layer runs before the net when
  ``normalize`` is on and a zero there would be a mid-grey frame (pixel = mean).
  Inputs of at least ``input_size`` are used as they are; C5 then sees the whole S4 map.
* **C3 connections**: ``c3_connections='lecun'`` (default, as seed 003 describes)
  applies LeCun's Table I: maps 0-5 see 3 contiguous S2 maps, 6-11 four contiguous,
  12-14 four non-contiguous, 15 all six (1,516 effective parameters instead of 2,416).
  It is realised as a fixed 0/1 mask on a full conv, so masked weights stay exactly zero
  and receive no gradient. ``'full'`` is the common modern simplification.
* **activation / pooling**: seed 003 names "subsampling" layers and LeNet-5 without
  further detail, so the defaults follow LeCun: ``tanh`` and average pooling (LeCun's
  subsampling averages 2x2 with a trainable coefficient and bias; the coefficient is
  absorbed by the next layer, so plain averaging is used). ``relu``/``max`` are the usual
  modern variant.
* **output**: a linear layer giving logits, not LeCun's Euclidean RBF units: seed 003's
  attack and defense reason about the logits of a softmax classifier (its eq. 9).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from advx import Classifier, ConfigError, DatasetInfo, Model, ModelConfig, background_value, hookimpl

# LeCun et al. 1998, Table I: for each of the 16 C3 maps, the S2 maps it reads.
LECUN_C3_TABLE: tuple[tuple[int, ...], ...] = (
    *(tuple((j + k) % 6 for k in range(3)) for j in range(6)),
    *(tuple((j + k) % 6 for k in range(4)) for j in range(6)),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class PadTo(nn.Module):
    """Pads (N, C, H, W) inputs on every side up to ``size`` with a per-channel value.

    ``pad(x - fill) + fill`` pads with ``fill`` exactly and keeps gradients to ``x``.
    """

    def __init__(self, in_hw: tuple[int, int], size: int, fill: tuple[float, ...]) -> None:
        super().__init__()
        h, w = in_hw
        dh, dw = max(size - h, 0), max(size - w, 0)
        self.pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if not any(self.pad):
            return x
        return F.pad(x - self.fill, self.pad) + self.fill


class MaskedConv2d(nn.Conv2d):
    """A conv whose weight is multiplied by a fixed 0/1 connection mask (LeCun's C3)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, table: tuple[tuple[int, ...], ...]) -> None:
        super().__init__(in_ch, out_ch, kernel)
        mask = torch.zeros(out_ch, in_ch, 1, 1)
        for o, ins in enumerate(table):
            mask[o, list(ins)] = 1.0
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def effective_parameters(self) -> int:
        """Parameters that are not masked out (what LeCun counts)."""
        k = self.weight.shape[2] * self.weight.shape[3]
        return int(self.mask.sum().item()) * k + self.out_channels


class LeNet5Net(Classifier):
    """LeNet-5 with configurable activation, subsampling and C3 connectivity."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        input_size: int,
        fill: tuple[float, ...],
        activation: str,
        pooling: str,
        c3_connections: str,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        self.pad = PadTo((h, w), input_size, fill)
        self.act = nn.Tanh() if activation == "tanh" else nn.ReLU()
        self.pool = nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2)
        self.c1 = nn.Conv2d(c, 6, 5)
        self.c3 = MaskedConv2d(6, 16, 5, LECUN_C3_TABLE) if c3_connections == "lecun" else nn.Conv2d(6, 16, 5)
        with torch.no_grad():
            n_flat = self._features(torch.zeros(1, c, h, w)).shape[1]
        self.c5 = nn.Linear(n_flat, 120)  # a 5x5 conv over a 5x5 map == fully connected
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, num_classes)

    def _features(self, x: Tensor) -> Tensor:
        h = self.pool(self.act(self.c1(self.pad(x))))  # C1, S2
        h = self.pool(self.act(self.c3(h)))  # C3, S4
        return h.flatten(1)

    def _states(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c5 = self.act(self.c5(self._features(x)))
        return c5, self.act(self.f6(c5))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self._states(x)[1])

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        c5, f6 = self._states(x)
        return {"c5": c5, "f6": f6}


class LeNet5(Model):
    """LeNet-5 (seed 003): C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, output; 32x32 input."""

    name: ClassVar[str] = "lenet5"

    class Config(ModelConfig):
        activation: Literal["tanh", "relu"] = Field("tanh", description="activation after every layer but the output (LeCun: tanh)")
        pooling: Literal["avg", "max"] = Field("avg", description="S2/S4 subsampling (LeCun: average)")
        c3_connections: Literal["lecun", "full"] = Field(
            "lecun", description="C3 reads a subset of S2 maps per LeCun's Table I ('lecun') or all of them ('full')"
        )
        input_size: int = Field(32, ge=16, le=1024, description="smaller inputs are padded to this size inside the model")

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        if len(info.input_shape) != 3:
            raise ConfigError(f'model "lenet5" needs image inputs (C, H, W), got shape {info.input_shape}')
        fill = background_value(c, info)
        return LeNet5Net(info.input_shape, info.num_classes, c.input_size, fill, c.activation, c.pooling, c.c3_connections)


@hookimpl
def advx_register_models():
    return [LeNet5]
