"""``wide-resnet``: WRN-depth-k of Zagoruyko & Komodakis (2016), seed 004's CIFAR-10 classifier.

Seed 004 trains WRN-34-8 (and WRN-46-8 in its Table 8) and models the pooled features
before the final FC layer with I-defender's GMMs; ``hidden_states`` returns exactly those.

Structure (the authors' reference code, as in every WRN port): a 3x3 conv to 16 maps,
three groups of ``n = (depth - 4) / 6`` pre-activation basic blocks of widths 16k, 32k,
64k (the first block of groups 2 and 3 has stride 2), then BN, ReLU, global average
pooling and a linear layer. A basic block is BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3
added to its input; when the width or stride changes, the shortcut is a 1x1 conv applied
to the block's pre-activated input. By the authors' convention ``depth = 6n + 4``, so
``depth - 4`` must be divisible by 6 (28, 34, 40, 46...); other values are rejected at
config validation rather than silently rounded.

Global average pooling is adaptive, so the network also builds for 28x28 MNIST and 8x8
digits (final maps 7x7 and 2x2); the published setting is 32x32 CIFAR-10.
Initialisation follows the reference code: He-normal (fan_out) convs, BN weights 1 and
biases 0, zero linear bias.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator
from torch import Tensor, nn

from advx import Classifier, ConfigError, DatasetInfo, Model, ModelConfig, hookimpl


class PreActBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv3x3, twice) with an identity or 1x1 shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
            if in_planes != out_planes or stride != 1
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(self.relu(self.bn2(o))))
        return o + skip


class WideResNetNet(Classifier):
    """WRN-depth-k; ``hidden_states`` gives the pooled features before the FC layer."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, widen: int, dropout: float) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        groups = []
        prev = widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [PreActBlock(prev if i == 0 else width, width, stride if i == 0 else 1, dropout) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
            prev = width
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(prev)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        self.num_features = prev
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        h = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.pool(self.relu(self.bn(h))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        return {"pool": self.features(x)}


class WideResNet(Model):
    """Wide ResNet WRN-depth-k (pre-activation basic blocks); WRN-34-8 by default (seed 004)."""

    name: ClassVar[str] = "wide-resnet"

    class Config(ModelConfig):
        depth: int = Field(34, ge=10, le=1000, description="total depth; (depth - 4) must be divisible by 6 (28, 34, 40, 46...)")
        widen_factor: int = Field(8, ge=1, le=32, description="width multiplier k of the three groups (16k, 32k, 64k)")
        dropout: float = Field(0.0, ge=0, lt=1, description="dropout between the two convs of every block (WRN paper: 0.3 when used)")

        @field_validator("depth")
        @classmethod
        def _check_depth(cls, v: int) -> int:
            if (v - 4) % 6 != 0:
                lo = v - (v - 4) % 6
                raise ValueError(f"(depth - 4) must be divisible by 6, got {v}; nearest valid: {lo} or {lo + 6}")
            return v

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        if len(info.input_shape) != 3:
            raise ConfigError(f'model "wide-resnet" needs image inputs (C, H, W), got shape {info.input_shape}')
        if min(info.input_shape[1:]) < 4:
            raise ConfigError(f'model "wide-resnet" downsamples by 4 and needs inputs of at least 4x4, got {info.input_shape}')
        return WideResNetNet(info.input_shape[0], info.num_classes, c.depth, c.widen_factor, c.dropout)


@hookimpl
def advx_register_models():
    return [WideResNet]
