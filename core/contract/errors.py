"""Errors the kernel raises on bad input.

Every error here is meant to be shown to a person as one line (the CLI prints
``[Type]: message`` and exits non-zero), so messages name the thing that is wrong
(a config field, a file, a plugin) and, where possible, what to do instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AdvxError(Exception):
    """Base class of every error advx raises for bad input or a failed check."""


class ConfigError(AdvxError, ValueError):
    """A config value (spec file, plugin config, CLI flag) is invalid."""


class PluginNotFoundError(AdvxError, LookupError):
    """No plugin of that kind has that name."""


class PluginConflictError(AdvxError):
    """Two packages register a plugin of the same kind under the same name."""


class PluginLoadError(AdvxError):
    """A plugin's entry point could not be imported or returned something invalid."""


class BudgetViolationError(AdvxError):
    """An attack returned examples outside its declared eps-ball or the valid input range."""


class ModelCheckError(AdvxError):
    """The model handed to an evaluation is not usable as it is (training mode, probabilities...)."""


class DataError(AdvxError):
    """A dataset file is missing, truncated, corrupted or of the wrong format."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest names, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def format_validation_error(prefix: str, exc: Exception, names: dict[str, str] | None = None) -> str:
    """Turn a pydantic ``ValidationError`` into one line naming every bad field.

    ``names`` shows a field under another name: a value of a swept list as ``eps[1]``."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return f"{prefix}: {exc}"
    names = names or {}
    parts = []
    for err in errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in names:
            loc[0] = names[loc[0]]
        loc = ".".join(loc) or "(config)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return f"{prefix}: " + "; ".join(parts)
