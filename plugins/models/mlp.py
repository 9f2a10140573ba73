"""``mlp``: model E of seed 004 (I-defender): FC 200, ReLU, FC 200, ReLU, FC 10.

Flattens any input shape; used as the substitute of the transfer threat model (E -> F).
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import Field
from torch import nn

from advx import Classifier, DatasetInfo, Model, ModelConfig, hookimpl


class MLPNet(Classifier):
    def __init__(self, n_in: int, hidden: tuple[int, ...], num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden_layers = nn.ModuleList()
        prev = n_in
        for h in hidden:
            self.hidden_layers.append(nn.Linear(prev, h))
            prev = h
        self.out = nn.Linear(prev, num_classes)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.flatten(x)
        for layer in self.hidden_layers:
            h = self.act(layer(h))
        return self.out(h)

    def hidden_states(self, x):
        h = self.flatten(x)
        states = {}
        for i, layer in enumerate(self.hidden_layers):
            h = self.act(layer(h))
            states[f"fc{i + 1}"] = h
        return states


class MLP(Model):
    """Seed 004 model E: FC 200, ReLU, FC 200, ReLU, FC (logits)."""

    name: ClassVar[str] = "mlp"

    class Config(ModelConfig):
        hidden: tuple[int, ...] = Field((200, 200), min_length=1, description="units of each hidden layer")

    def build(self, info: DatasetInfo) -> nn.Module:
        return MLPNet(math.prod(info.input_shape), tuple(self.config.hidden), info.num_classes)


@hookimpl
def advx_register_models():
    return [MLP]
