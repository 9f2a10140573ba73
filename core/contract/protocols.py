"""What a defended module may declare about itself, so the kernel never guesses with ``hasattr``.

A ``Defense.apply`` returns an ``nn.Module``. Some defenses return modules with structure
that threat models, metrics and reports need to know about. Each such structure is a small
abstract mixin here; the defense's module subclasses it (``class MyEnsemble(nn.Module,
advx.Ensemble)``) and the kernel recognises it with ``isinstance`` on the module the
defense returned (the top level only: a wrapper around an ensemble that wants the ensemble
threat models implements ``Ensemble`` itself, delegating to what it wraps).

* ``Ensemble``: several members whose outputs are combined. The ``member`` threat model
  attacks one member (seed 002 "Grad.1"), ``member-mean`` follows the mean of the members'
  loss gradients ("Grad.2").
* ``Detector``: a score per input (higher: more likely adversarial), a threshold above
  which an input is rejected, and per-class evasion terms for the ``detector-aware``
  attacker (seed 004 eq. 6). The kernel records scores and rejections for clean and
  adversarial inputs and derives the detection metrics from them.
* ``InputTransform``: a preprocessing step applied before the classifier. It declares
  whether its forward is differentiable (bilinear rotation is; bit-depth reduction and
  median filters are not) and whether it is randomised. The kernel attacks a
  non-differentiable transform through BPDA (identity on the backward pass) when the
  threat model allows it (the default), and refuses a gradient attack otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn


class Ensemble(ABC):
    """Mixin of a module made of ``num_members`` classifiers whose predictions are combined.

    ``member(i)`` is the i-th classifier as a module (inputs in pixel units, logits out).
    ``member_logits(x)`` returns the stacked logits ``(members, batch, classes)``; the
    default calls each member in turn, vectorised ensembles override it with one call.
    """

    @property
    @abstractmethod
    def num_members(self) -> int:
        """How many members the ensemble has."""

    @abstractmethod
    def member(self, index: int) -> nn.Module:
        """Member ``index`` (0-based) as a classifier module."""

    def member_logits(self, x: Tensor) -> Tensor:
        """Logits of every member, shape ``(num_members, N, classes)``."""
        return torch.stack([self.member(i)(x) for i in range(self.num_members)])


class Detector(ABC):
    """Mixin of a module that, besides classifying, flags inputs as adversarial.

    ``detector_score(x)`` has shape ``(N,)``, higher meaning more likely adversarial; an
    input is rejected when its score exceeds ``threshold``. Scores should be
    differentiable where the detector allows it, so that an adaptive attacker can follow
    them. ``evasion_logits(x)`` gives the terms the ``detector-aware`` threat model adds
    (times ``alpha``) to the classifier's logits on the gradient path: higher for class
    ``k`` where the input would be accepted as class ``k``. The default, for detectors with
    a single score, is ``-score`` on every class but the predicted one, so that moving the
    prediction away lowers the score; detectors with per-class evidence (I-defender's
    per-class likelihoods) override it.
    """

    threshold: float = 0.0

    @abstractmethod
    def detector_score(self, x: Tensor) -> Tensor:
        """Score per input, shape ``(N,)``; higher means more likely adversarial."""

    def rejects(self, x: Tensor) -> Tensor:
        """Boolean ``(N,)``: which inputs the detector rejects (score above the threshold)."""
        return self.detector_score(x) > self.threshold

    def evasion_logits(self, x: Tensor) -> Tensor:
        """Per-class evasion terms ``(N, classes)`` for the detector-aware attacker."""
        logits = self(x)  # type: ignore[operator]
        score = self.detector_score(x)
        others = torch.ones_like(logits).scatter_(1, logits.argmax(1, keepdim=True), 0.0)
        return -score[:, None] * others


class InputTransform(nn.Module, ABC):
    """A preprocessing step ``transform(x)`` (same shape as ``x``) placed before a classifier.

    Subclasses set ``differentiable = False`` when the transform's gradient is useless
    (zero almost everywhere, or undefined) and ``randomized = True`` when two calls on the
    same input may differ. During crafting the kernel switches non-differentiable
    transforms to BPDA (Athalye et al. 2018): the forward value is unchanged, the backward
    pass is the identity, so gradient attacks see through the transform instead of being
    stopped by it. Scoring always uses the plain forward.
    """

    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.bpda = False

    @abstractmethod
    def transform(self, x: Tensor) -> Tensor:
        """The transformed inputs (same shape and range as ``x``)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.transform(x)
        if self.bpda and not self.differentiable:
            return x + (out - x).detach()
        return out


def non_differentiable_parts(module: nn.Module) -> list[str]:
    """Names of the submodules of ``module`` whose forward declares no useful gradient."""
    return [
        name or type(m).__name__
        for name, m in module.named_modules()
        if isinstance(m, InputTransform) and not m.differentiable
    ]


def randomized_parts(module: nn.Module) -> list[str]:
    """Names of the submodules of ``module`` whose forward is declared random."""
    return [name or type(m).__name__ for name, m in module.named_modules() if isinstance(m, InputTransform) and m.randomized]


@contextmanager
def bpda(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every non-differentiable transform of ``module`` has an identity backward."""
    parts = [m for m in module.modules() if isinstance(m, InputTransform) and not m.differentiable]
    before = [m.bpda for m in parts]
    for m in parts:
        m.bpda = enabled
    try:
        yield module
    finally:
        for m, b in zip(parts, before):
            m.bpda = b
