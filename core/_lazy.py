"""Lazy attribute resolution (PEP 562) for the public facades.

``advx`` and its tier modules (``advx.sdk``, ``advx.embed``, ``advx.matrix``,
``advx.testing``' names) list their public names with the module that defines each;
the first use of a name imports that module, so ``import advx`` and the CLI's
``--version`` do not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str], submodules: frozenset[str] = frozenset()) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``exports`` (name -> absolute module) on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
            importlib.import_module(package).__dict__[name] = value
            return value
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def tier(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` of a public tier module listing ``exports``."""
    names = list(exports)
    return names, lazy_getattr(package, exports), lambda: sorted(names)
