"""advx: plugin-based adversarial robustness evaluation.

The public API, in four tiers, one module and one list each (docs/plugins.md lists them):

* ``advx.sdk``: plugin authors (the plugin classes, hooks, configs, services);
* ``advx.embed``: embedders (``evaluate`` your own model on your own data);
* ``advx.matrix``: engine users (plan and run matrices, read results files);
* ``advx.testing``: the contract checks a plugin package runs in its own tests.

Every name of the first three is also importable as ``from advx import NAME``. Names are
resolved lazily (PEP 562): ``import advx`` and the CLI's ``--version`` and ``--help`` do
not import torch; the first use of a name imports the module that defines it.

The kernel's subpackages are its layers, each importing only from those below it
(``tests/core/test_layering.py`` pins this): ``contract`` (interfaces, protocols,
registry, hook specs, errors, threat model base), ``runtime`` (data, training, the defense
context, guards, crafting), ``analysis`` (records, metrics, scoring, diagnostics, sanity
checks, the typed row), ``store`` (the results file, its schema and migrations),
``engine`` (specs, planning, executing cells, executors, the embedding pipeline), and the
two faces, ``report`` and ``cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import embed as _embed
from . import matrix as _matrix
from . import sdk as _sdk
from ._lazy import lazy_getattr
from ._version import __version__

#: public name -> the module that defines it: the union of the three tiers' lists
_EXPORTS: dict[str, str] = {**_sdk.EXPORTS, **_embed.EXPORTS, **_matrix.EXPORTS}

#: subpackages and modules reachable as attributes (``advx.analysis.metrics``) without an import
_SUBMODULES = frozenset(
    {"contract", "runtime", "analysis", "store", "engine", "report", "cli", "testing", "sdk", "embed", "matrix"}
)

__all__ = ["__version__", *_EXPORTS]
__getattr__ = lazy_getattr(__name__, _EXPORTS, _SUBMODULES)


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .sdk import *  # noqa: F403
    from .embed import *  # noqa: F403
    from .matrix import *  # noqa: F403
