"""Hook specifications of advx: what a plugin module implements.

A plugin package declares an entry point in the group ``advx`` that names a module; the
module implements any of the hooks below, decorated with ``advx.hookimpl``. Each hook
returns the plugin *classes* it contributes; the kernel validates configs and
instantiates them. Returning classes (rather than calling a ``register`` callback) lets
the kernel attribute every class to the package that registered it, which is what makes
"two packages claim 'pgd'" a clear error instead of a silent override.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from advx.contract.interfaces import Attack, Dataset, Defense, Model
    from advx.contract.threats import ThreatModel

PROJECT = "advx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def advx_register_attacks() -> Iterable[type[Attack]]:
    """Called once at discovery. Return the ``Attack`` subclasses this module provides."""


@hookspec
def advx_register_defenses() -> Iterable[type[Defense]]:
    """Called once at discovery. Return the ``Defense`` subclasses this module provides."""


@hookspec
def advx_register_models() -> Iterable[type[Model]]:
    """Called once at discovery. Return the ``Model`` subclasses this module provides."""


@hookspec
def advx_register_datasets() -> Iterable[type[Dataset]]:
    """Called once at discovery. Return the ``Dataset`` subclasses this module provides."""


@hookspec
def advx_register_threats() -> Iterable[type[ThreatModel]]:
    """Called once at discovery. Return the ``ThreatModel`` subclasses this module provides."""


@hookspec
def advx_register_checks() -> Iterable[object]:
    """Called once at discovery. Return sanity checks: functions decorated with ``advx.check``
    (each reads finished rows and returns flags; see ``advx.analysis.checks``)."""


@hookspec
def advx_report_sections() -> Iterable[object]:
    """Called when a report is built. Return section builders: ``fn(ctx) -> Section | None``
    (``ctx``: ``advx.SectionContext``); a study's or a plugin's own section (e.g. the rotation
    study's curves) is contributed this way, never written into the kernel's report."""


HOOKS_BY_KIND = {
    "attack": "advx_register_attacks",
    "defense": "advx_register_defenses",
    "model": "advx_register_models",
    "dataset": "advx_register_datasets",
    "threat": "advx_register_threats",
}
