"""``timm``: any timm architecture by name, with a local weights file.

``arch`` is a name ``timm.create_model`` knows (``resnet18``, ``vit_tiny_patch16_224``,
...); the network is created with ``pretrained=False`` (advx never downloads weights),
``num_classes`` and ``in_chans`` from the dataset, plus ``kwargs``, and ``weights`` is
loaded into it (``state_dict``, ``weights_only=True``, or safetensors). timm is an
optional extra (``pip install 'advx[timm]'``); without it, building is a one-line error
naming the extra, and the plugin is still listed.

Standardisation: timm's networks expect inputs standardised with their architecture's
statistics (``model.pretrained_cfg["mean"]``/``["std"]``: ImageNet's for most, 0.5 for
some), which timm's own training and validation scripts apply outside the network. That
is the default here, as a layer in front of the network; ``mean``/``std`` override it
(``mean = [0.0], std = [1.0]`` for none), and ``input_range`` or ``normalize`` turn it off;
it applies where the statistics have one value per input channel.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from advx import ConfigError, DatasetInfo, hookimpl

from ._loaded import PretrainedModel, WeightsConfig, adapt, checked_file, first_line, load_weights, read_state_dict


def _timm(plugin: str) -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError as exc:
        raise ConfigError(f"model \"{plugin}\" needs timm, which is not importable ({exc}): pip install 'advx[timm]'") from None


class TimmConfig(WeightsConfig):
    arch: str = Field(min_length=1, description="a timm architecture name, e.g. 'resnet18' (timm.list_models() lists them)")
    weights: str = Field(description="path of the state_dict file for the architecture (never downloaded)")  # type: ignore[assignment]
    kwargs: dict[str, Any] = Field({}, description="further keyword arguments of timm.create_model, e.g. drop_rate")


class TimmModel(PretrainedModel):
    """A timm architecture (arch) with a local weights file; needs timm."""

    name: ClassVar[str] = "timm"
    Config = TimmConfig

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        timm = _timm(self.name)
        path = checked_file(self.name, "weights", c.weights, c.sha256)
        args = {"num_classes": info.num_classes, **({"in_chans": info.input_shape[0]} if len(info.input_shape) == 3 else {}), **c.kwargs}
        try:
            net = timm.create_model(c.arch, pretrained=False, **args)
        except Exception as exc:  # noqa: BLE001 - unknown architecture or bad kwargs
            raise ConfigError(f'model "{self.name}": arch: timm.create_model({c.arch!r}) failed ({first_line(exc)})') from None
        load_weights(self.name, net, read_state_dict(self.name, path, c.key, c.strip_prefix), path, f"timm's {c.arch}")
        cfg = getattr(net, "pretrained_cfg", None) or {}
        channels = info.input_shape[0] if len(info.input_shape) == 3 else 1
        if c.mean is None and not c.normalize and c.input_range is None and len(cfg.get("mean") or ()) == channels and cfg.get("std"):
            c = c.model_copy(update={"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])})
        return adapt(self.name, net, c, info)


@hookimpl
def advx_register_models():
    return [TimmModel]
