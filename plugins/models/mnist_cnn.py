"""``mnist-cnn``: the MNIST network of seed 002, Table 1.

conv 32 3x3 ReLU -> maxpool 2 -> FC 128 ReLU -> dropout 0.5 -> FC 10 (logits; the
paper's final softmax is applied by the loss, never inside the model). Sized from the
dataset's input shape, so it also runs on 8x8 digits and 3-channel inputs. The
"mixed-architecture" members of seed 002 are configs: more filters, or one extra conv
layer.

``relu_logits = true`` builds Table 1 literally as printed: "Relu Fully Connected 10
units" puts a ReLU on the logits before the softmax. It exists to test whether that
layer explains the paper's high FGSM/BIM accuracies: a ReLU zeroes the gradient of every
negative logit, which masks gradients from attacks that follow the cross-entropy.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from advx import Classifier, ConfigError, DatasetInfo, Model, ModelConfig, hookimpl


class MnistCNNNet(Classifier):
    def __init__(
        self,
        in_shape: tuple[int, ...],
        num_classes: int,
        filters: int,
        extra_conv: bool,
        hidden: int,
        dropout: float,
        relu_logits: bool = False,
    ):
        super().__init__()
        self.relu_logits = relu_logits
        c, h, w = in_shape
        layers: list[nn.Module] = [nn.Conv2d(c, filters, 3), nn.ReLU()]
        if extra_conv:
            layers += [nn.Conv2d(filters, filters, 3, padding=1), nn.ReLU()]
        layers += [nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.fc1 = nn.Linear(n_flat, hidden)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = self.relu(self.fc1(self.features(x).flatten(1)))
        out = self.fc2(self.dropout(h))
        return torch.relu(out) if self.relu_logits else out

    def hidden_states(self, x):
        h = self.relu(self.fc1(self.features(x).flatten(1)))
        return {"fc1": h}


class MnistCNN(Model):
    """Seed 002 Table 1: conv32 3x3, maxpool 2, FC128, dropout 0.5, FC (logits)."""

    name: ClassVar[str] = "mnist-cnn"

    class Config(ModelConfig):
        filters: int = Field(32, ge=1, description="filters of the conv layer (mixed-architecture: more)")
        extra_conv: bool = Field(False, description="add a second 3x3 conv layer (mixed-architecture variant)")
        hidden: int = Field(128, ge=1, description="units of the hidden fully connected layer")
        dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the output layer")
        relu_logits: bool = Field(
            False,
            description="ReLU on the output layer, as Table 1 prints it (masks gradients; for testing the paper's numbers only)",
        )

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        if len(info.input_shape) != 3:
            raise ConfigError(f"model \"mnist-cnn\" needs image inputs (C, H, W), got shape {info.input_shape}")
        return MnistCNNNet(info.input_shape, info.num_classes, c.filters, c.extra_conv, c.hidden, c.dropout, c.relu_logits)


@hookimpl
def advx_register_models():
    return [MnistCNN]
