"""Contract checks for plugin authors: ``from advx.testing import check_attack``.

The same checks the built-in plugins pass, shipped so that a third-party package can
run them in its own test suite (datasette#580: testing utilities belong to the framework).
"""

from __future__ import annotations

import torch
from torch import nn

from .crafting import PassCounter
from .guards import check_budget
from .interfaces import Attack, Classifier
from .protocols import Detector
from .registry import NAME_RE


class TinyNet(Classifier):
    """A small conv net for contract checks (random weights, eval mode)."""

    def __init__(self, channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


class GridDetector(nn.Module, Detector):
    """A toy detector around ``net``: the mean absolute distance of the pixels from a grid of
    ``1/levels`` (the digits dataset's pixels lie on the 1/16 grid; perturbed ones mostly do
    not). Differentiable almost everywhere; for tests of detection metrics and the
    detector-aware threat model, not a defense."""

    def __init__(self, net: nn.Module, levels: int = 16, threshold: float = 0.1) -> None:
        super().__init__()
        self.net = net
        self.levels = levels
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def detector_score(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x * self.levels
        return (scaled - scaled.round()).abs().flatten(1).mean(1)


def check_attack(
    attack_cls: type[Attack],
    params: dict | None = None,
    model: nn.Module | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Assert the attack contract; return the adversarial batch.

    Checks: a kebab-case name, a config that validates from ``params``, a result of the
    input's shape, dtype and device inside the declared eps-ball and bounds, an input
    left unmodified, and (for gradient attacks) at least one backward pass. Targeted mode
    is exercised when the attack supports it.
    """
    assert NAME_RE.match(attack_cls.name), f"invalid plugin name {attack_cls.name!r}"
    assert attack_cls.norm in ("linf", "l2"), f"norm must be 'linf' or 'l2', got {attack_cls.norm!r}"
    attack = attack_cls(attack_cls.validate_config(dict(params or {})))
    torch.manual_seed(0)
    model = (model or TinyNet()).eval()
    if x is None:
        x = torch.rand(8, 1, 8, 8) * (bounds[1] - bounds[0]) + bounds[0]
    if y is None:
        with torch.no_grad():
            y = model(x).argmax(1)
    modes = [False, True] if attack_cls.supports_targeted else [False]
    out = x
    for targeted in modes:
        labels = (y + 1) % 10 if targeted else y
        original = x.clone()
        counter = PassCounter(model)
        with torch.enable_grad():
            out = attack.perturb(counter, x, labels, bounds, targeted=targeted)
        assert torch.equal(x, original), f"{attack_cls.name} modified its input tensor in place"
        assert out.dtype == x.dtype and out.device == x.device, f"{attack_cls.name} changed dtype or device"
        check_budget(attack_cls.name, x, out, attack_cls.norm, attack.eps, bounds)
        if "gradients" in attack_cls.requires:
            assert counter.backwards > 0, f"{attack_cls.name} declares it needs gradients but ran no backward pass"
    return out
