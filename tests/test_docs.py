"""The README's promises: every hook documented and tested, its examples are the tested code."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from advx import hookspecs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block_after(marker: str) -> str:
    start = README.index(marker)
    m = re.search(r"```python\n(.*?)```", README[start:], re.S)
    assert m, f"no python block after {marker}"
    return m.group(1)


def test_every_hook_is_documented_and_exercised():
    hooks = [n for n in dir(hookspecs) if n.startswith("advx_register_")]
    assert len(hooks) == 4
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    plugins = "\n".join(p.read_text() for p in (ROOT / "plugins").rglob("*.py"))
    for hook in hooks:
        assert f"`{hook}()`" in README, f"{hook} missing from the README"
        assert hook in tests or hook in plugins, f"{hook} has no implementation exercised by tests"


def test_readme_plugin_example_is_the_installed_fixture():
    fixture = (ROOT / "tests" / "fixtures" / "advx-noise" / "advx_noise" / "__init__.py").read_text()
    assert block_after("<!-- plugin-example -->").strip() == fixture.strip()


def test_readme_embedding_example_runs(capsys):
    code = block_after("<!-- embed-example -->")
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # our own README, not data
    out = capsys.readouterr().out
    assert "fgsm: clean" in out and "bim: clean" in out


def test_readme_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in README and ".venv/bin/python -m pytest -q" in ci
    assert "torch==2.13.0 -e '.[test]'" in README and "torch==2.13.0 -e '.[test]'" in ci


def test_every_experiment_spec_validates():
    import advx

    reg = advx.Registry.discover()
    # every TOML in experiments/ is a matrix spec, except the declaration of the document's tables
    specs = sorted(p for p in (ROOT / "experiments").rglob("*.toml") if p.name != "reproductions.toml")
    assert len(specs) >= 6
    for path in specs:
        cells = advx.plan(advx.MatrixSpec.from_toml(path), reg)
        assert cells, path


def test_every_public_name_has_a_docstring_and_is_documented():
    import advx

    page = (ROOT / "docs" / "plugins.md").read_text()
    for name in advx.__all__:
        if name == "__version__":
            continue
        obj = getattr(advx, name)
        assert (getattr(obj, "__doc__", None) or "").strip(), f"advx.{name} has no docstring"
        assert f"`{name}" in page or f"{name}(" in page or f" {name} " in page, f"advx.{name} is not in docs/plugins.md"
