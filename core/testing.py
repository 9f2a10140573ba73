"""Contract checks for plugin authors: ``from advx.testing import check_attack``.

The same checks the built-in plugins pass, shipped so that a third-party package can
run them in its own test suite (datasette#580: testing utilities belong to the framework).
"""

from __future__ import annotations

import torch
from torch import nn

from advx.runtime.crafting import PassCounter
from advx.runtime.guards import check_budget
from advx.contract.interfaces import Attack, Classifier
from advx.contract.protocols import Detector
from advx.contract.registry import NAME_RE

#: the tier of tests: what a plugin package's own test suite imports
__all__ = ["TinyNet", "GridDetector", "BreakableModel", "breakable_model", "check_attack"]


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


class BreakableModel(nn.Module):
    """The model ``breakable_model`` returns (see there); ``adversarial`` holds the guaranteed
    adversarial example of every prototype, ``labels`` its clean class."""

    def __init__(self, prototypes, directions, labels, adv_classes, eps, num_classes, scale=4.0):
        super().__init__()
        self.register_buffer("prototypes", prototypes)
        self.register_buffer("directions", directions)
        self.register_buffer("labels", labels)
        self.register_buffer("adv_classes", adv_classes)
        self.eps, self.num_classes, self.scale = eps, num_classes, scale

    @property
    def adversarial(self) -> torch.Tensor:
        """x_i + 0.75 eps d_i per prototype: inside the ball and the bounds, classified ``adv_classes``."""
        return self.prototypes + 0.75 * self.eps * self.directions

    def progress(self, x):
        """``(j, t)``: the input whose region each row of ``x`` is in, and the progress along its
        planted direction (0 at x_j, 1 at the ball's edge x_j + eps d_j)."""
        flat = x.flatten(1)
        j = torch.cdist(flat.detach(), self.prototypes.flatten(1)).argmin(1)
        d = self.directions[j].flatten(1)
        return j, ((flat - self.prototypes[j].flatten(1)) * d).sum(1) / (self.eps * d.square().sum(1))

    def forward(self, x):
        j, t = self.progress(x)
        # every other class trails a_i by ``scale``, so no loss (CE, DLR, margins) is flat in t
        rise = (2 * self.scale * t)[:, None]
        logits = (rise - self.scale).expand(len(x), self.num_classes)
        logits = logits.scatter(1, self.labels[j, None], self.scale)
        return logits.scatter(1, self.adv_classes[j, None], rise)


def breakable_model(
    x: torch.Tensor,
    eps: float,
    norm: str = "linf",
    bounds: tuple[float, float] = (0.0, 1.0),
    num_classes: int = 10,
    y: torch.Tensor | None = None,
) -> BreakableModel:
    """A model with a planted adversarial example inside the eps-ball of every input of ``x``
    (the attack unit test of Zimmermann, Brendel, Tramer and Carlini, "Increasing Confidence
    in Adversarial Robustness Evaluations", NeurIPS 2022): an attack that fails on it is
    broken, whatever the attack's own reasons.

    Input i is classified ``y[i]`` (default ``i % num_classes``). Around it the model is
    linear in one direction d_i (L-inf: the sign vector pointing into the valid range;
    L2: the same, unit length): with t = <x' - x_i, d_i> / (eps <d_i, d_i>), the logit of
    class a_i != y[i] is 8t, those of the other classes 8t - 4 (so that no loss is flat in
    t) and that of y[i] is 4, so x' is misclassified iff t > 0.5,
    and x_i + 0.75 eps d_i (``model.adversarial``) is inside the ball and the bounds. Which
    input's region a point is in is decided by the nearest input (L2), so the model can be
    queried on any subset of ``x`` in any order (attacks that shrink their active set);
    ``ValueError`` if two inputs are too close for their eps-balls to stay apart. Logits,
    eval mode, gradients everywhere (piecewise linear): every kind of attack applies.
    Untargeted only (only a_i is reachable).
    """
    lo, hi = bounds
    x = x.detach()
    step = 0.75 * eps / (1.0 if norm == "linf" else x[0].numel() ** 0.5)  # per coordinate
    if step > (hi - lo) / 2:
        raise ValueError(f"eps={eps} is too large for bounds {bounds}: the planted example would leave them")
    n = len(x)
    y = torch.arange(n, device=x.device) % num_classes if y is None else y.to(x.device)
    a = (y + 1 + torch.arange(n, device=x.device) % (num_classes - 1)) % num_classes
    d = torch.where(x < (lo + hi) / 2, 1.0, -1.0).to(x.dtype)
    if norm == "l2":
        d = d / d.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    flat = x.flatten(1)
    diff = flat[:, None, :] - flat[None, :, :]
    sq = diff.square().sum(-1)
    reach = eps * diff.abs().sum(-1) if norm == "linf" else eps * sq.sqrt()
    # The eps-balls stay in their own Voronoi cells iff |x_i - x_j|^2 / 2 > max over the ball
    # of <delta, x_j - x_i>, i.e. eps |x_i - x_j|_1 (L-inf) or eps |x_i - x_j|_2 (L2).
    clash = (sq / 2 <= reach) & ~torch.eye(n, dtype=torch.bool, device=x.device)
    if bool(clash.any()):
        raise ValueError(f"{int(clash.any(1).sum())} inputs are too close to another for eps={eps} ({norm})")
    model = BreakableModel(x.clone(), d, y, a, eps, num_classes)
    return model.eval()


def check_attack(
    attack_cls: type[Attack],
    params: dict | None = None,
    model: nn.Module | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    breakable: float | None = None,
) -> torch.Tensor:
    """Assert the attack contract; return the adversarial batch.

    Checks: a kebab-case name, a config that validates from ``params``, a result of the
    input's shape, dtype and device inside the declared eps-ball and bounds, an input
    left unmodified, and (for gradient attacks) at least one backward pass. Targeted mode
    is exercised when the attack supports it.

    ``breakable=eps``: also run the attack (untargeted) on ``breakable_model(x, eps)`` for
    the attack's norm and assert that it breaks every input (the attack's own ``eps``, if
    it has one, must be at least ``eps``; unbounded attacks are checked as they are).
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
    if breakable is not None:
        assert attack.eps is None or attack.eps >= breakable, "the attack's eps must cover the planted examples"
        target = breakable_model(x, breakable, attack_cls.norm, bounds)
        with torch.enable_grad():
            adv = attack.perturb(target, x, target.labels, bounds, targeted=False)
        check_budget(attack_cls.name, x, adv, attack_cls.norm, attack.eps, bounds)
        with torch.no_grad():
            missed = target(adv).argmax(1) == target.labels
        assert not bool(missed.any()), (
            f"{attack_cls.name} missed the planted adversarial example of {int(missed.sum())} of {len(x)} "
            f"inputs of breakable_model(eps={breakable}, norm={attack_cls.norm})"
        )
    return out
