"""Helpers every section uses: values from typed rows, number formats, threat constraints, provenance."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from advx.report.blocks import PLACE


def _cfg(row: dict[str, Any], key: str) -> dict[str, Any]:
    v = row.get(key)
    if isinstance(v, str):
        return json.loads(v)
    return dict(v or {})


def _fmt(v: Any, fmt: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return format(v, fmt)
    return str(v)


def _heat(v: float | None) -> str | None:
    """Background colour of an accuracy in [0, 1]: red (0) through yellow to green (1)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    v = min(max(float(v), 0.0), 1.0)
    hue = 120 * v  # 0 red, 60 yellow, 120 green
    return f"hsl({hue:.0f}, 70%, 78%)"


def _place(row: dict[str, Any], cols: Sequence[str] = PLACE) -> str:
    return " / ".join(str(row.get(c)) for c in cols)


def _flags_of(row: dict[str, Any], flags: Sequence[Any]) -> list[Any]:
    """The sanity flags that name this row's cell (``Flag.cells``)."""
    return [f for f in flags if row.get("cell_key") in getattr(f, "cells", ())]


def _git_commit(path: Path) -> str | None:
    """The last commit of ``path`` in its git work tree (with ``+modified`` when it differs), or None."""
    try:
        folder = str(path.resolve().parent)
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", path.name], cwd=folder, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path.name], cwd=folder, capture_output=True, timeout=10)
        return commit + ("+modified" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def spec_provenance(spec_path: str | Path | None) -> dict[str, Any]:
    """What ``advx run`` records about a spec file: its path and git commit (when in a git work tree)."""
    if spec_path is None:
        return {"path": None, "git_commit": None}
    p = Path(spec_path)
    return {"path": str(p), "git_commit": _git_commit(p)}
