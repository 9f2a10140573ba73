"""``feature-squeezing`` (Xu, Evans & Qi, NDSS 2018) and ``median-filter``: input transformations.

* **Bit-depth reduction** keeps ``bits`` bits per value of the dataset's range:
  ``round(x' * (2^bits - 1)) / (2^bits - 1)`` with ``x'`` scaled to [0, 1].
* **Median smoothing** replaces each value by the median of the ``size`` x ``size`` window
  around it, per channel, as ``scipy.ndimage.median_filter`` does (mode 'reflect', i.e.
  the edge value repeated symmetrically; for an even size the window reaches one more
  pixel up/left and the upper of the two middle values is taken), which is what Xu et
  al.'s code calls.
* **The detector** (``feature-squeezing``, ``mode = "detect"``): the classifier's softmax on
  the raw input is compared with its softmax on each squeezed version; the score is the
  largest L1 distance. The threshold is set on natural training examples so that a share
  ``fpr`` of them is rejected (Xu et al. pick it on legitimate examples for a 5% false
  positive rate). The prediction is the classifier's on the raw input.
  ``mode = "squeeze"`` instead classifies the squeezed input (squeezers in order).
* ``median-filter``: median smoothing before the classifier (the filters seed 003 cites
  from Osadchy et al.).

Neither transform has a useful gradient (rounding: zero almost everywhere; median: a
selection). Both declare ``differentiable = False``; the kernel attacks them white-box
with BPDA (identity on the backward pass), so robust accuracy is not inflated by
missing gradients. Defaults are Xu et al.'s MNIST settings: 1 bit, 2x2 median.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from advx import Defense, DefenseConfig, Detector, InputTransform, hookimpl, iter_batches

Squeezer = Literal["bit-depth", "median"]


class BitDepth(InputTransform):
    """Bit-depth reduction to ``bits`` bits over [low, high]."""

    differentiable: ClassVar[bool] = False

    def __init__(self, bits: int, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.bits = int(bits)
        self.low, self.high = float(bounds[0]), float(bounds[1])

    def transform(self, x: Tensor) -> Tensor:
        levels = 2**self.bits - 1
        span = self.high - self.low
        z = ((x - self.low) / span).clamp(0, 1)
        return torch.round(z * levels) / levels * span + self.low

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def median_filter(x: Tensor, size: int) -> Tensor:
    """Per-channel median over ``size`` x ``size`` windows, as ``scipy.ndimage.median_filter``."""
    before, after = size // 2, (size - 1) // 2
    x = _symmetric_pad(x, before, after)
    n, c, h, w = x.shape
    patches = F.unfold(x.reshape(n * c, 1, h, w), size)  # (N*C, size*size, L)
    med = patches.sort(dim=1).values[:, (size * size) // 2, :]
    return med.reshape(n, c, h - size + 1, w - size + 1)


def _symmetric_pad(x: Tensor, before: int, after: int) -> Tensor:
    """scipy's 'reflect' mode (d c b a | a b c d | d c b a) on the last two dims, for any width.

    The padded signal is the input followed by its mirror image, repeated (period 2n), so a
    pad wider than the image reflects again at the far edge, as scipy does: a 15 x 15
    window on a 5 x 5 image is scipy's result, not an index error.
    """
    for dim in (-2, -1):
        n = x.shape[dim]
        pos = torch.arange(-before, n + after, device=x.device) % (2 * n)
        x = x.index_select(dim, torch.where(pos < n, pos, 2 * n - 1 - pos))
    return x


class MedianSmooth(InputTransform):
    """Median smoothing with a ``size`` x ``size`` window."""

    differentiable: ClassVar[bool] = False

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def transform(self, x: Tensor) -> Tensor:
        return median_filter(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class SqueezeDetector(nn.Module, Detector):
    """Xu et al.'s detector: max L1 distance between softmax(x) and softmax(squeeze(x))."""

    def __init__(self, model: nn.Module, squeezers: list[InputTransform], threshold: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.squeezers = nn.ModuleList(squeezers)
        self.threshold = float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def detector_score(self, x: Tensor) -> Tensor:
        p = self.model(x).float().softmax(1)
        dists = [(p - self.model(s(x)).float().softmax(1)).abs().sum(1) for s in self.squeezers]
        return torch.stack(dists).max(0).values


def build_squeezers(names: tuple[str, ...], bits: int, median_size: int, bounds: tuple[float, float]) -> list[InputTransform]:
    return [BitDepth(bits, bounds) if n == "bit-depth" else MedianSmooth(median_size) for n in names]


class FeatureSqueezing(Defense):
    """Xu et al. 2018: detect inputs whose prediction changes when the input is squeezed."""

    name: ClassVar[str] = "feature-squeezing"

    class Config(DefenseConfig):
        mode: Literal["detect", "squeeze"] = Field(
            "detect", description="'detect': Xu et al.'s detector; 'squeeze': classify the squeezed input instead"
        )
        squeezers: tuple[Squeezer, ...] = Field(
            ("bit-depth", "median"), min_length=1, description="squeezers used (detect: each compared; squeeze: applied in order)"
        )
        bits: int = Field(1, ge=1, le=16, description="bit depth kept by 'bit-depth' (Xu et al., MNIST: 1)")
        median_size: int = Field(2, ge=2, le=15, description="window of 'median' (Xu et al., MNIST: 2x2)")
        fpr: float = Field(0.05, gt=0, lt=1, description="share of natural training examples the detector's threshold rejects")
        calibration_samples: int = Field(2000, ge=10, description="natural training examples the threshold is set on")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        c = self.config
        squeezers = build_squeezers(c.squeezers, c.bits, c.median_size, tuple(ctx.info.bounds))
        if c.mode == "squeeze":
            return nn.Sequential(*squeezers, model).to(ctx.device).eval()
        det = SqueezeDetector(model, squeezers).to(ctx.device).eval()
        det.threshold = calibrate(det, ctx.train_data, c.calibration_samples, c.fpr, ctx.device)
        return det


@torch.no_grad()
def calibrate(det: SqueezeDetector, data, samples: int, fpr: float, device: torch.device, batch_size: int = 500) -> float:
    """The score quantile that rejects a share ``fpr`` of the first ``samples`` training examples."""
    scores, seen = [], 0
    for xb, _ in iter_batches(data, batch_size):
        xb = xb[: samples - seen]
        scores.append(det.detector_score(xb.to(device)).cpu())
        seen += len(xb)
        if seen >= samples:
            break
    return float(torch.quantile(torch.cat(scores).double(), 1.0 - fpr))


class MedianFilter(Defense):
    """Median smoothing of the input before the classifier (BPDA when attacked white-box)."""

    name: ClassVar[str] = "median-filter"

    class Config(DefenseConfig):
        size: int = Field(3, ge=2, le=15, description="window size (size x size), per channel")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        return nn.Sequential(MedianSmooth(self.config.size), model).eval()


@hookimpl
def advx_register_defenses():
    return [FeatureSqueezing, MedianFilter]
