"""The dataset plugins are discovered through their entry points and follow the plugin rules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import advx

PLUGIN_DIR = Path(advx.__file__).resolve().parent.parent / "plugins" / "datasets"
MODULES = ["mnist", "cifar10", "imagenet_folder", "_files"]
NAMES = ["mnist", "fashion-mnist", "cifar-10", "imagenet-folder"]


def test_discovered_with_no_failures():
    reg = advx.Registry.discover()
    assert set(NAMES) <= set(reg.names("dataset"))
    assert not [f for f in reg.failures if "datasets" in f.entry_point]
    for name in NAMES:
        entry = next(e for e in reg.entries("dataset") if e.name == name)
        assert entry.package == "advx" and entry.source.startswith("advx:datasets-")


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_are_described(name):
    cls = advx.Registry.discover().get("dataset", name)
    assert issubclass(cls.Config, advx.DatasetConfig) and cls.summary()
    for field, info in cls.Config.model_fields.items():
        assert info.description, f"{name}.{field} has no description"
    assert {"data_dir", "class_ratios"} <= set(cls.Config.model_fields)


@pytest.mark.parametrize("module", MODULES)
def test_plugins_import_only_the_public_api(module):
    allowed_top = {"advx", "torch", "numpy", "pydantic", "PIL", "__future__"}
    tree = ast.parse((PLUGIN_DIR / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only the private helper module of this package
                assert node.module == "_files", f"{module}: from .{node.module}"
                continue
            names = [node.module]
            if node.module == "advx":
                continue
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            assert top in allowed_top or top in sys.stdlib_module_names, f"{module} imports {n}"
            assert not n.startswith("advx."), f"{module} imports advx internals: {n}"
