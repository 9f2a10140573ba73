"""The README's promises: every hook documented and tested, its examples are the tested code."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from advx.contract import hookspecs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block_after(marker: str) -> str:
    start = README.index(marker)
    m = re.search(r"```python\n(.*?)```", README[start:], re.S)
    assert m, f"no python block after {marker}"
    return m.group(1)


def test_every_hook_is_documented_and_exercised():
    """Every hook is in the README's table and has an implementation that discovery really
    calls and that returns something (a mention of its name somewhere is not enough)."""
    import advx

    hooks = [n for n in dir(hookspecs) if n.startswith("advx_") and callable(getattr(hookspecs, n))]
    assert len(hooks) == 7
    reg = advx.Registry.discover()
    fixtures = advx.Registry.from_modules(*_fixture_modules())
    for hook in hooks:
        assert f"`{hook}()`" in README, f"{hook} missing from the README"
        impls = [*getattr(reg.pm.hook, hook).get_hookimpls(), *getattr(fixtures.pm.hook, hook).get_hookimpls()]
        assert impls, f"{hook} has no implementation among the built-in plugins or the test fixtures"
        assert any(list(i.function() or []) for i in impls), f"no implementation of {hook} returns anything"


def _fixture_modules():
    """The third-party fixture packages' modules, imported from their source folders."""
    import importlib.util

    out = []
    for init in sorted((ROOT / "tests" / "fixtures").glob("advx-*/advx_*/__init__.py")):
        spec = importlib.util.spec_from_file_location(init.parent.name, init)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out.append(module)
    return out


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
        cells = advx.plan(advx.MatrixSpec.from_toml(path), reg, locate_data=False)
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


def test_each_audience_has_one_module_and_one_list():
    """The four tiers (plugin authors, embedders, engine users, tests): each name is in exactly
    one tier, ``advx.__all__`` is the union of the first three, and the page documents every one."""
    import advx
    import advx.embed
    import advx.matrix
    import advx.sdk
    import advx.testing

    tiers = {"sdk": advx.sdk.__all__, "embed": advx.embed.__all__, "matrix": advx.matrix.__all__, "testing": advx.testing.__all__}
    seen: dict[str, str] = {}
    for tier, names in tiers.items():
        for name in names:
            assert name not in seen, f"{name} is in advx.{seen[name]} and advx.{tier}"
            seen[name] = tier
    assert set(advx.__all__) - {"__version__"} == set(advx.sdk.__all__) | set(advx.embed.__all__) | set(advx.matrix.__all__)
    page = (ROOT / "docs" / "plugins.md").read_text()
    for tier in tiers:
        assert f"`advx.{tier}`" in page, tier
    for name in advx.testing.__all__:
        assert f"`{name}`" in page, f"advx.testing.{name} is not in docs/plugins.md"
        assert (getattr(advx.testing, name).__doc__ or "").strip(), name
