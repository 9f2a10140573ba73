"""The kernel's subpackages are layers: no module imports from a layer above its own.

``advx/__init__``'s docstring names the layers. An upward import is how a kernel grows
into a tangle (the store reaching into the engine, a contract class needing the CLI);
this test reads every module's imports, those inside functions and ``TYPE_CHECKING``
blocks included, and fails naming the first offending line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"

#: layer of each top-level part of the package, lowest first
LAYERS = {
    "_version": 0, "_lazy": 0, "contract": 0,
    "runtime": 1,
    "analysis": 2,
    "store": 3,
    "engine": 4,
    "_lifeline": 4,  # the first module of the engine's worker processes (stdlib only until it hands over)
    "report": 5,
    "cli": 6,
    # the facades: the public API tiers, free to import any layer
    "__init__": 7, "__main__": 7, "sdk": 7, "embed": 7, "matrix": 7, "testing": 7,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported advx module path without the 'advx.' prefix) for every import in the file."""
    tree = ast.parse(path.read_text())
    me = _module(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
                names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            elif node.module and (node.module == "advx" or node.module.startswith("advx.")):
                mod = node.module[5:]
                names = [mod] if mod else [a.name for a in node.names]
            else:
                continue
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name[5:]) for a in node.names if a.name.startswith("advx.")]
    return out


def _layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def test_every_kernel_module_belongs_to_a_layer():
    for path in CORE.rglob("*.py"):
        assert _layer(_module(path)) is not None, f"{path.relative_to(CORE)} is in no layer; add its package to LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        mine = _layer(_module(path))
        for line, target in _imports(path):
            theirs = _layer(target)
            if target.startswith("plugins"):
                bad.append(f"{path.relative_to(CORE)}:{line} imports the built-in plugins ({target}); the kernel never does")
            elif theirs is not None and mine is not None and theirs > mine:
                bad.append(f"{path.relative_to(CORE)}:{line} (layer {mine}) imports {target} (layer {theirs})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself can fail: a contract module importing the engine is caught."""
    fake = CORE / "contract" / "interfaces.py"
    found = [t for _, t in _imports(fake)]
    assert found and all(_layer(t) == 0 for t in found)
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from advx.engine.run import run_matrix\n")
    tree_targets = []
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.ImportFrom):
            tree_targets.append(node.module[5:])
    assert _layer(tree_targets[0]) == 4 > _layer("contract.interfaces")


@pytest.mark.parametrize("name", ["sdk", "embed", "matrix"])
def test_each_tier_lists_names_that_resolve(name):
    import importlib

    tier = importlib.import_module(f"advx.{name}")
    for public in tier.__all__:
        assert getattr(tier, public) is not None


def test_every_layer_has_its_test_folder():
    """Tests are laid out like the code: tests/core/<subpackage>/ for each of core's subpackages."""
    tests = Path(__file__).resolve().parent
    for pkg in sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").exists()):
        files = list((tests / pkg).glob("test_*.py"))
        assert files, f"core/{pkg} has no tests/core/{pkg}/test_*.py"
