"""``none``: the undefended model, the baseline row of every matrix."""

from __future__ import annotations

from typing import ClassVar

from advx import Defense, hookimpl


class NoDefense(Defense):
    """No defense: the trained model as it is."""

    name: ClassVar[str] = "none"
    trains: ClassVar[bool] = False

    def apply(self, model, ctx):
        return model


@hookimpl
def advx_register_defenses():
    return [NoDefense]
