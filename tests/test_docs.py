"""The README's promises: every hook documented and tested, its examples are the tested code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


def _readme_commands():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_readme_commands_as_they_are():
    """``.ci/run`` reads the README's two commands and runs them: it installs nothing of its own
    before the README's test command, so CI cannot pass where a fresh clone would not."""
    commands = _readme_commands()
    setup, tests = commands.command("setup"), commands.command("test")
    assert setup == "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e '.[test]' && .venv/bin/advx run"
    assert tests == ".venv/bin/python -m pytest -q"
    # the command as the README shows it, in the block right after its marker
    assert f"<!-- ci: setup -->\n```bash\n{setup}\n```" in README and f"<!-- ci: test -->\n```bash\n{tests}\n```" in README
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    run_setup = lines.index('bash -euo pipefail -c "$setup"')
    run_tests = next(i for i, ln in enumerate(lines) if ln.endswith('bash -euo pipefail -c "$tests"'))
    assert "setup=$(python3 .ci/readme_commands.py setup)" in lines and "tests=$(python3 .ci/readme_commands.py test)" in lines
    assert run_setup < run_tests
    assert not any("pip " in ln or "pytest" in ln for ln in lines[:run_tests]), "CI installs or tests something before the README's commands"


def test_a_command_that_is_not_one_line_is_refused():
    commands = _readme_commands()
    assert commands.command("x", "<!-- ci: x -->\n```bash\necho a\n```\n") == "echo a"
    with pytest.raises(SystemExit, match="must be one line"):
        commands.command("x", "<!-- ci: x -->\n```bash\necho a\necho b\n```\n")
    with pytest.raises(SystemExit, match="no command marked"):
        commands.command("y", "<!-- ci: x -->\n```bash\necho a\n```\n")


def test_skips_for_a_missing_package_are_recorded_for_ci(tmp_path):
    """What CI runs again after installing the extras: tests and modules skipped by importorskip
    or for an optional package, not those skipped for other reasons."""
    import os
    import subprocess
    import sys

    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_a.py").write_text(
        "import pytest\n"
        "def test_extra():\n    pytest.importorskip('advx_no_such_package')\n"
        "def test_optional():\n    pytest.skip('torchvision is optional')\n"
        "def test_other():\n    pytest.skip('needs a CUDA device')\n"
        "def test_runs():\n    pass\n"
    )
    (tmp_path / "test_b.py").write_text("import pytest\npytest.importorskip('advx_no_such_package')\ndef test_never():\n    pass\n")
    out = tmp_path / "skipped.txt"
    env = {**os.environ, "ADVX_SKIPPED_FOR_EXTRAS": str(out)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "1 passed, 4 skipped" in run.stdout, run.stdout + run.stderr
    assert sorted(out.read_text().splitlines()) == ["test_a.py::test_extra", "test_a.py::test_optional", "test_b.py"]


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


def test_the_readme_maps_other_libraries_calls_to_valid_advx_attacks():
    """Every ``("name", {params})`` the README's section for users of torchattacks, AutoAttack
    and ART gives is an attack advx validates, and every spec table it names is a plugin."""
    import advx

    section = README[README.index("## Coming from another library") :]
    section = section[: section.index("\n## ", 1)]
    registry = advx.Registry.discover()
    calls = re.findall(r'\("([a-z0-9-]+)", (\{[^}]*\})\)', section)
    assert {name for name, _ in calls} >= {"pgd", "suite", "fgsm"}
    for name, params in calls:
        registry.create("attack", name, eval(params, {"__builtins__": {}}))  # e.g. {"eps": 8/255}: our own README
    for name in re.findall(r'`name = "([a-z0-9-]+)"`', section):
        assert any(e.name == name for e in registry.entries()), name
    for path in re.findall(r"`(tests/plugins/attacks/[a-z_]+\.py)`", section):
        assert (ROOT / path).is_file(), path


# -- docs/plugins.md: the protocol examples run, the metric keys come from the declarations ------

PLUGINS_PAGE = ROOT / "docs" / "plugins.md"


def page_block(marker: str) -> str:
    text = PLUGINS_PAGE.read_text()
    start = text.index(marker)
    m = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert m, f"no python block after {marker}"
    return m.group(1)


def _defenses_of(marker: str) -> list:
    namespace: dict = {"__name__": f"docs_{marker}"}
    exec(compile(page_block(f"<!-- protocol-example: {marker} -->"), "docs/plugins.md", "exec"), namespace)  # our own page
    return namespace["advx_register_defenses"]()


def test_the_protocol_examples_run_and_the_kernel_recognises_them(tmp_path):
    """The page's input transform, detector and ensemble, each run in a matrix: the transform is
    attacked through BPDA with EOT (10 draws, each counted), the detector's scores are recorded
    and the detector-aware attacker applies, the ensemble's member threat models apply."""
    import advx

    registry = advx.Registry.discover()
    names = {}
    for marker in ("input-transform", "detector", "ensemble"):
        (cls,) = _defenses_of(marker)
        registry.add("defense", cls, package="docs")
        names[marker] = cls.name
    spec = {
        "matrix": {"name": "protocols", "samples": 40, "batch_size": 40, "cache_dir": str(tmp_path / "cache")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 2}}],
        "defenses": [{"name": n} for n in names.values()],
        "threats": [{"name": "white-box"}, {"name": "detector-aware"}, {"name": "member", "index": 1}, {"name": "member-mean"}],
        "attacks": [{"name": "fgsm", "eps": 0.1}],
    }
    result = advx.run_matrix(spec, registry=registry)
    assert result.failed == 0, [r.error for r in result.rows if r.error]
    status = {(r.defense, r.threat): r.status for r in result.rows}
    expected_done = {
        names["input-transform"]: {"white-box"},
        names["detector"]: {"white-box", "detector-aware"},
        names["ensemble"]: {"white-box", "member(index=1)", "member-mean"},
    }
    for (defense, threat), st in status.items():
        assert st == ("done" if threat in expected_done[defense] else "not-applicable"), (defense, threat, st)
    rows = {(r.defense, r.threat): r for r in result.rows}
    quantized = rows[(names["input-transform"], "white-box")]
    assert quantized.details["diagnostics"]["eot"] == 10 and quantized.metric("forwards_per_sample") == 10.0
    assert quantized.details["diagnostics"]["gradients"]["zero_share"] == 0.0  # BPDA: the rounding does not stop the gradient
    detector = rows[(names["detector"], "white-box")]
    assert detector.metric("detection_auc") is not None and 0 < detector.metric("detection_fpr") < 0.5


def test_the_keys_of_attack_report_metrics_are_the_declared_metrics():
    """The table on the page is generated from the metric declarations (``python tests/test_docs.py``
    writes it), so that a metric added or renamed cannot leave the page behind."""
    text = PLUGINS_PAGE.read_text()
    begin, end = "<!-- metrics: begin (generated: python tests/test_docs.py) -->\n", "<!-- metrics: end -->"
    assert begin in text and end in text
    assert text[text.index(begin) + len(begin) : text.index(end)] == metrics_table(), "docs/plugins.md: run python tests/test_docs.py"


def test_attack_report_metrics_has_exactly_those_keys(digits_cnn, digits):
    import advx
    from advx.analysis.metrics import METRICS

    _, info, x, y = digits
    (report,) = advx.evaluate(digits_cnn, (x[:16], y[:16]), ["fgsm"], bounds=info.bounds)
    assert list(report.metrics) == [m.name for m in METRICS]
    assert set(report.per_class["0"]) == {m.name for m in METRICS if m.breakdown}


#: words of the project's own history, which a user has no use for: study numbers ("seed 002"),
#: the catalog of sources, issue numbers, and the folders of the machines it was developed on
INTERNAL_HISTORY = re.compile(r"\bseeds? 00\d\b|catalog|\bissues? #?\d+|\.\./shared/|/work/", re.I)


def test_the_documents_a_user_reads_speak_to_users():
    """README, docs/plugins.md, docs/reproductions.md and experiments/README.md name papers
    and files, not the project's history. The metric table is left out: it is generated from the metric
    declarations, where a description that names a study (robust_accuracy's, today) is fixed."""
    begin, end = "<!-- metrics: begin", "<!-- metrics: end -->"
    for path in (ROOT / "README.md", PLUGINS_PAGE, ROOT / "docs" / "reproductions.md", ROOT / "experiments" / "README.md"):
        text = path.read_text()
        if begin in text:
            text = text[: text.index(begin)] + text[text.index(end) :]
        found = [m.group(0) for m in INTERNAL_HISTORY.finditer(text)]
        assert not found, f"{path.relative_to(ROOT)}: {found}"


def metrics_table() -> str:
    """The page's table of metrics: name, per class and bucket or not, description."""
    from advx.analysis.metrics import METRICS

    lines = ["| key | per class / bucket | what it is |", "|---|---|---|"]
    for m in METRICS:
        lines.append(f"| `{m.name}` | {'yes' if m.breakdown else 'no'} | {m.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # rewrite the generated table of docs/plugins.md
    page = PLUGINS_PAGE.read_text()
    begin, end = "<!-- metrics: begin (generated: python tests/test_docs.py) -->\n", "<!-- metrics: end -->"
    head, rest = page.split(begin)
    PLUGINS_PAGE.write_text(head + begin + metrics_table() + end + rest.split(end, 1)[1])
    print(f"{PLUGINS_PAGE}: {metrics_table().count(chr(10)) - 2} metrics")

