"""``python``: a network built by the user's own installed code, plus a weights file.

``factory = "package.module:callable"`` names a function (or class) importable where
advx runs, called with ``kwargs`` to build the network; ``weights`` (optional) is its
state_dict. This is the one place a spec names code to run, and its author writes it:
advx imports exactly the module named in ``factory``. Weights, data and results files
are never executed (see ``_loaded``).

By default the built network is evaluated as it is (``pretrained = true``: with
``weights`` loaded, or weights the factory loaded itself); ``pretrained = false`` lets
advx train it with the model's ``train`` table like a built-in architecture (starting
from ``weights`` when given). Changes to the user's code are not seen by the cell key
(the weights file's content is, through ``sha256``): change a ``kwargs`` value or run with
``--rerun`` after editing the code.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from advx import ConfigError, DatasetInfo, Model, hookimpl

from ._loaded import WeightsConfig, adapt, checked_file, first_line, load_weights, read_state_dict

FACTORY_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"


def import_factory(plugin: str, factory: str) -> Any:
    """The callable named ``module:qualname``; a one-line ``ConfigError`` when it cannot be had."""
    module_name, qualname = factory.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - missing, or failing while importing: the user's code
        raise ConfigError(f'model "{plugin}": factory: cannot import {module_name!r} ({first_line(exc)})') from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f'model "{plugin}": factory: {module_name!r} has no {qualname!r}')
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f'model "{plugin}": factory: {factory!r} is a {type(obj).__name__}, not a callable')
    return obj


class PythonConfig(WeightsConfig):
    factory: str = Field(
        pattern=FACTORY_PATTERN,
        description="'package.module:callable' building the network (imported from your installed code; the only code a spec runs)",
    )
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the factory")
    pretrained: bool = Field(
        True,
        description="evaluate the network as built (with weights when given); false: advx trains it with the model's train table",
    )


class PythonModel(Model):
    """A network from your own code (factory = 'module:callable'), with optional weights."""

    name: ClassVar[str] = "python"
    Config = PythonConfig

    @property
    def pretrained(self) -> bool:
        return self.config.pretrained

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        fn = import_factory(self.name, c.factory)
        try:
            net = fn(**c.kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's factory failing is reported in one line
            raise ConfigError(f'model "{self.name}": factory {c.factory!r} raised {first_line(exc)}') from None
        if not isinstance(net, nn.Module):
            raise ConfigError(f'model "{self.name}": factory {c.factory!r} returned a {type(net).__name__}, not a torch.nn.Module')
        if c.weights is not None:
            path = checked_file(self.name, "weights", c.weights, c.sha256)
            state = read_state_dict(self.name, path, c.key, c.strip_prefix)
            load_weights(self.name, net, state, path, f"the network of {c.factory}")
        return adapt(self.name, net, c, info)


@hookimpl
def advx_register_models():
    return [PythonModel]
