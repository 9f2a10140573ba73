"""``vgg19`` and ``inception-v3``: ImageNet classifiers of seeds 004 and 001, from local weights.

Seed 004 runs I-defender on VGG19 (its Table 9), seed 001 attacks a pre-trained
Inception v3. advx never downloads weights: both plugins need torchvision (optional,
``pip install torchvision``) and a weights file the user already has, given as
``weights`` (a ``state_dict`` saved with ``torch.save``, e.g. torchvision's own
``vgg19-dcbb9e9d.pth`` / ``inception_v3_google-0cc3c7bd.pth``, or a dict holding one under
``"state_dict"``). It is read with ``torch.load(..., weights_only=True)``, so a file can
never run code, and mapped onto torchvision's constructor called with ``weights=None``.
The networks arrive trained: advx evaluates them as read and never trains them
(``Model.pretrained``), and the file's SHA-256 (``sha256``, checked when given, filled in
otherwise) is part of the config, so a changed file makes new cells (see ``_loaded``).

Normalisation: advx attacks work in pixel range [0, 1], and these weights expect inputs
standardised with the ImageNet mean/std. That standardisation is part of the model here:
``build`` returns ``NormalizedModel(Normalize(IMAGENET_MEAN, IMAGENET_STD), net)`` whatever
the dataset declares, because the statistics belong to the weights, not to the data fed
to them. The config's ``normalize`` is therefore fixed to ``false`` (setting it true is a
``ConfigError``), which keeps ``advx.build_model`` from stacking the dataset's
normalisation on top.

Inputs are 3x224x224 for VGG19 (its adaptive pooling accepts other sizes down to 32x32)
and 3x299x299 for Inception v3 (at least 75x75). Inception v3 is built with
``transform_input=True``, as torchvision does for the Google weights, which were trained
on inputs scaled to [-1, 1]: the net re-maps ImageNet-standardised inputs to that range.

Hidden states: VGG19's two FC 4096 layers after ReLU (``fc1``, ``fc2``); Inception v3 has
no FC hidden layer, so its 2048 pooled features before the FC layer (``pool``).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from advx import Classifier, ConfigError, DatasetInfo, Normalize, NormalizedModel, hookimpl

from ._loaded import HashedFileConfig, PretrainedModel, checked_file, load_weights, read_state_dict, sha256_field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision_models(plugin: str) -> Any:
    try:
        return importlib.import_module("torchvision.models")
    except ImportError as exc:
        raise ConfigError(f'model "{plugin}" needs torchvision, which is not importable ({exc}): pip install torchvision') from None


def _check_input(plugin: str, info: DatasetInfo, min_size: int) -> None:
    shape = info.input_shape
    if len(shape) != 3 or shape[0] != 3 or min(shape[1:]) < min_size:
        raise ConfigError(f'model "{plugin}" needs RGB inputs (3, H, W) of at least {min_size}x{min_size}, got {shape}')


class VGG19Net(Classifier):
    """torchvision's VGG19; logits from ``forward``, the two FC 4096 activations as hidden states."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, x: Tensor) -> Tensor:
        return self.vgg(x)

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        v = self.vgg
        h = torch.flatten(v.avgpool(v.features(x)), 1)
        # classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
        fc1 = v.classifier[1](v.classifier[0](h))
        fc2 = v.classifier[4](v.classifier[3](v.classifier[2](fc1)))
        return {"fc1": fc1, "fc2": fc2}


class InceptionV3Net(Classifier):
    """torchvision's Inception v3; logits only (the auxiliary head's output is dropped)."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, x: Tensor) -> Tensor:
        out = self.inception(x)
        return out.logits if hasattr(out, "logits") else out  # train mode returns (logits, aux)

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        m = self.inception
        feats: dict[str, Tensor] = {}
        handle = m.avgpool.register_forward_hook(lambda _m, _i, o: feats.__setitem__("pool", o.flatten(1)))
        try:
            m(x)
        finally:
            handle.remove()
        return feats


class TorchvisionConfig(HashedFileConfig):
    weights: str = Field(description="path of a local state_dict file for torchvision's constructor (never downloaded)")
    sha256: str | None = sha256_field("the weights file")
    normalize: Literal[False] = Field(
        False, description="always false: the model standardises with ImageNet mean/std itself, not the dataset's"
    )


class TorchvisionModel(PretrainedModel):
    """Common part of the torchvision plugins: weights read from a file, never trained by advx."""

    Config = TorchvisionConfig

    def _state(self) -> tuple[str, dict[str, Tensor]]:
        """The checked weights file and its state_dict (a dict holding one under "state_dict" too)."""
        path = checked_file(self.name, "weights", self.config.weights, self.config.sha256)
        return path, read_state_dict(self.name, path, unwrap=("state_dict",))

    def _load(self, net: nn.Module, path: str, state: dict[str, Tensor]) -> None:
        # ``net`` was built on the meta device (no memory, no random init of 100M+ weights
        # that would be overwritten anyway); ``assign`` makes the loaded tensors its own.
        load_weights(self.name, net, state, path, f"torchvision's {self.name}", assign=True)


class VGG19(TorchvisionModel):
    """VGG19 (seed 004, ImageNet) from a local weights file; needs torchvision."""

    name: ClassVar[str] = "vgg19"

    def build(self, info: DatasetInfo) -> nn.Module:
        models = _torchvision_models(self.name)
        _check_input(self.name, info, 32)
        path, state = self._state()
        with torch.device("meta"):
            vgg = models.vgg19(weights=None, num_classes=info.num_classes)
        self._load(vgg, path, state)
        return NormalizedModel(Normalize(IMAGENET_MEAN, IMAGENET_STD), VGG19Net(vgg))


class InceptionV3(TorchvisionModel):
    """Inception v3 (seed 001, ImageNet) from a local weights file; needs torchvision."""

    name: ClassVar[str] = "inception-v3"

    def build(self, info: DatasetInfo) -> nn.Module:
        models = _torchvision_models(self.name)
        _check_input(self.name, info, 75)
        path, state = self._state()
        aux = any(k.startswith("AuxLogits.") for k in state)
        with torch.device("meta"):
            net = models.inception_v3(
                weights=None, num_classes=info.num_classes, aux_logits=aux, transform_input=True, init_weights=False
            )
        self._load(net, path, state)
        return NormalizedModel(Normalize(IMAGENET_MEAN, IMAGENET_STD), InceptionV3Net(net))


@hookimpl
def advx_register_models():
    return [VGG19, InceptionV3]
