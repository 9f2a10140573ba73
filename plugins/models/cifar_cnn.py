"""``cifar-cnn``: the CIFAR-10 network of seed 002, Table 3.

Three blocks of (conv 3x3 ReLU, conv 3x3 ReLU, maxpool 2, dropout) with 32, 64 and 128
filters and dropout 0.2, 0.3, 0.4, then FC 512 ReLU, dropout 0.5, FC 10 (logits).

Choices the table leaves open, and why:

* **padding**: every conv pads by 1 ("same"). The table gives no padding; with unpadded
  ("valid") 3x3 convs a 32x32 input shrinks 32-30-28-14-12-10-5-3-1 and the third
  pooling has nothing left to pool, so the Keras model the table describes must have used
  ``padding='same'``. Same padding also keeps the net usable on 28x28 MNIST and 8x8
  digits (final maps 3x3 and 1x1).
* **output layer**: the table lists "Relu Fully Connected 10 units, Softmax"; a ReLU on
  the logits would clip every negative logit to 0 and flatten the gradients attacks
  follow, so the last layer here is a plain linear layer and the softmax lives in the loss.
* **mixed-architecture members** (seed 002, method ii: "extra filters are used in one
  classifier or an extra convolution layer is added to another") are configs: ``filters``
  scales the widths (block widths are ``filters``, ``2*filters``, ``4*filters``) and
  ``extra_conv`` adds a third 3x3 conv to every block.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from advx import Classifier, ConfigError, DatasetInfo, Model, ModelConfig, hookimpl


class CifarCNNNet(Classifier):
    """Seed 002 Table 3, sized from the input shape."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        filters: int,
        extra_conv: bool,
        hidden: int,
        block_dropout: tuple[float, float, float],
        dropout: float,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        prev = c
        for i, p in enumerate(block_dropout):
            width = filters * 2**i
            for _ in range(3 if extra_conv else 2):
                layers += [nn.Conv2d(prev, width, 3, padding=1), nn.ReLU()]
                prev = width
            layers += [nn.MaxPool2d(2), nn.Dropout(p)]
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.fc1 = nn.Linear(n_flat, hidden)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def _hidden(self, x: Tensor) -> Tensor:
        return self.relu(self.fc1(self.features(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self._hidden(x)))

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        return {"fc1": self._hidden(x)}


class CifarCNN(Model):
    """Seed 002 Table 3: 3x(2 conv 3x3, maxpool, dropout) 32/64/128, FC 512, dropout, FC."""

    name: ClassVar[str] = "cifar-cnn"

    class Config(ModelConfig):
        filters: int = Field(32, ge=1, le=1024, description="filters of the first block (doubled per block; mixed-architecture: more)")
        extra_conv: bool = Field(False, description="add a third 3x3 conv layer to every block (mixed-architecture variant)")
        hidden: int = Field(512, ge=1, description="units of the hidden fully connected layer")
        block_dropout: tuple[float, float, float] = Field(
            (0.2, 0.3, 0.4), description="dropout after each of the three conv blocks"
        )
        dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the output layer")

        @field_validator("block_dropout")
        @classmethod
        def _check_rates(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
            if not all(0 <= p < 1 for p in v):
                raise ValueError(f"every rate must be in [0, 1), got {v}")
            return v

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        if len(info.input_shape) != 3:
            raise ConfigError(f'model "cifar-cnn" needs image inputs (C, H, W), got shape {info.input_shape}')
        if min(info.input_shape[1:]) < 8:
            raise ConfigError(
                f'model "cifar-cnn" pools three times by 2 and needs inputs of at least 8x8, got {info.input_shape}'
            )
        return CifarCNNNet(info.input_shape, info.num_classes, c.filters, c.extra_conv, c.hidden, c.block_dropout, c.dropout)


@hookimpl
def advx_register_models():
    return [CifarCNN]
