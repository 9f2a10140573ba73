"""``conv-f``: model F of seed 004 (I-defender), the target of the E -> F transfer attack.

conv 64 8x8 stride 2, ReLU, conv 128 6x6 stride 2, ReLU, FC 10 (logits).

Seed 004 takes models E and F from Defense-GAN (Samangouei et al. 2018) and its Table 1
gives no padding. Defense-GAN's code (``utils/network_builder.py``, ``model_f``) pads the
first conv "SAME" (TensorFlow: output ceil(H/2), extra pad row/column at the bottom/right)
and the second "VALID"; that is followed here, giving 28 -> 14 -> 5 on MNIST. That code
also has a third conv (128 5x5 stride 1, VALID) that seed 004's table omits: it is the
``third_conv`` option, off by default because the seed's table is the reference.

Small inputs: the unpadded 6x6 conv needs a 6x6 map, i.e. inputs of at least 11x11
(27x27 with ``third_conv``). 8x8 digits are smaller, so by default such inputs are padded
inside the model up to that minimum, with the dataset's normalised lower bound (black;
see ``lenet5``), keeping the plugin usable on the embedded default dataset;
``pad_small=false`` turns that into a ``ConfigError``.

Hidden states: model F has no fully connected hidden layer; the representation its one FC
layer reads, the flattened ReLU output of the last conv, is returned instead (the only
candidate for I-defender's per-class GMMs on this network).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from advx import Classifier, ConfigError, DatasetInfo, Model, ModelConfig, background_value, hookimpl


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def min_input_size(third_conv: bool) -> int:
    """Smallest H (or W) for which every VALID conv has a non-empty output."""
    need = 5 if third_conv else 1  # spatial size wanted after conv 2
    after_conv1 = (need - 1) * 2 + 6
    return 2 * after_conv1 - 1  # ceil(H / 2) >= after_conv1


class ConvFNet(Classifier):
    """Model F, optionally with Defense-GAN's third conv."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        filters: int,
        third_conv: bool,
        pad_to: int,
        fill: tuple[float, ...],
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        dh, dw = max(pad_to - h, 0), max(pad_to - w, 0)
        self.input_pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32).view(1, -1, 1, 1))
        h, w = h + dh, w + dw
        self.same_pad = (*tf_same_pad(w, 8, 2), *tf_same_pad(h, 8, 2))
        self.conv1 = nn.Conv2d(c, filters, 8, stride=2)
        self.conv2 = nn.Conv2d(filters, 2 * filters, 6, stride=2)
        self.conv3 = nn.Conv2d(2 * filters, 2 * filters, 5) if third_conv else None
        self.relu = nn.ReLU()
        with torch.no_grad():
            n_flat = self._features(torch.zeros(1, *in_shape)).shape[1]
        self.fc = nn.Linear(n_flat, num_classes)

    def _features(self, x: Tensor) -> Tensor:
        if any(self.input_pad):
            x = F.pad(x - self.fill, self.input_pad) + self.fill
        h = self.relu(self.conv1(F.pad(x, self.same_pad)))
        h = self.relu(self.conv2(h))
        if self.conv3 is not None:
            h = self.relu(self.conv3(h))
        return h.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self._features(x))

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        return {"conv3" if self.conv3 is not None else "conv2": self._features(x)}


class ConvF(Model):
    """Seed 004 model F: conv 64 8x8/2, ReLU, conv 128 6x6/2, ReLU, FC (logits)."""

    name: ClassVar[str] = "conv-f"

    class Config(ModelConfig):
        filters: int = Field(64, ge=1, le=1024, description="filters of the first conv (the second has twice as many)")
        third_conv: bool = Field(False, description="add Defense-GAN's third conv (128 5x5, stride 1) before the FC layer")
        pad_small: bool = Field(True, description="pad inputs too small for the unpadded convs (e.g. 8x8 digits) inside the model")

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        if len(info.input_shape) != 3:
            raise ConfigError(f'model "conv-f" needs image inputs (C, H, W), got shape {info.input_shape}')
        need = min_input_size(c.third_conv)
        if min(info.input_shape[1:]) < need and not c.pad_small:
            raise ConfigError(
                f'model "conv-f" needs inputs of at least {need}x{need} (third_conv={c.third_conv}), '
                f"got {info.input_shape}; set pad_small = true to pad them inside the model"
            )
        return ConvFNet(info.input_shape, info.num_classes, c.filters, c.third_conv, need, background_value(c, info))


@hookimpl
def advx_register_models():
    return [ConvF]
