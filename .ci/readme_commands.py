"""Print one of the README's commands, so that CI runs exactly what the README shows.

The README marks each command a user types with ``<!-- ci: NAME -->`` before its fenced
block (``setup``: the set-up and first run; ``test``: the test command). ``.ci/run`` runs
them from here instead of keeping copies that could drift from the README.

Usage: ``python3 .ci/readme_commands.py setup|test`` (standard library only: it runs before
any virtual environment exists).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def command(name: str, text: str | None = None) -> str:
    """The one-line command of the fenced block after ``<!-- ci: name -->`` in the README."""
    text = README.read_text() if text is None else text
    m = re.search(rf"<!-- ci: {re.escape(name)} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    if m is None:
        raise SystemExit(f"README.md has no command marked <!-- ci: {name} -->")
    lines = [ln for ln in m.group(1).splitlines() if ln.strip()]
    if len(lines) != 1:
        raise SystemExit(f"the README's command {name!r} must be one line, found {len(lines)}")
    return lines[0].strip()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: readme_commands.py setup|test")
    print(command(sys.argv[1]))
