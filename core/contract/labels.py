"""Label modes: which labels an attack's loss is computed on, resolved once by the kernel.

Every gradient attack supports the same modes, so they live here rather than in each
plugin (torchattacks re-implements them per attack, with a per-sample Python loop):

* ``true``: untargeted, away from the ground truth;
* ``predicted``: untargeted, away from the model's own top-1 (seed 001's "inverse
  perturbation"; needs no labels, avoids label leaking);
* ``least-likely``: targeted, towards the class of lowest probability (seed 001);
* ``target=K``: targeted, towards class K (seed 003);
* ``random-target``: targeted, towards a uniformly drawn wrong class (drawn per example
  from ``noise`` where given, so that the target of an example does not depend on its
  batch; else from ``generator``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advx.contract.errors import ConfigError
from advx.contract.noise import ExampleNoise


@torch.no_grad()
def resolve_labels(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    mode: str,
    num_classes: int,
    generator: torch.Generator | None = None,
    logits: Tensor | None = None,
    noise: ExampleNoise | None = None,
) -> tuple[Tensor, bool]:
    """Return ``(labels, targeted)`` for ``mode``; ``logits`` (clean) avoid a forward pass."""
    if mode == "true":
        return y, False
    if mode in ("predicted", "least-likely"):
        if logits is None:
            logits = model(x)
        return (logits.argmax(1) if mode == "predicted" else logits.argmin(1)), mode == "least-likely"
    if mode == "random-target":
        # a uniformly drawn class different from y: y + U{1..C-1} mod C
        if noise is not None:
            offset = noise.integers(1, num_classes, "random-target").to(y.device)
        else:
            offset = torch.randint(1, num_classes, y.shape, generator=generator, device="cpu").to(y.device)
        return (y + offset) % num_classes, True
    if mode.startswith("target="):
        k = int(mode.split("=", 1)[1])
        if not 0 <= k < num_classes:
            raise ConfigError(f"label_mode: target={k} is not a class of this dataset (0..{num_classes - 1})")
        return torch.full_like(y, k), True
    raise ConfigError(f"label_mode: unknown mode {mode!r}")
