"""Discovery: entry points, broken packages, duplicate names, unknown names."""

from __future__ import annotations

import types
from importlib import metadata

import pytest

import advx
from advx.contract import registry as registry_mod


def make_attack(name: str, module: str = "fake"):
    from advx import Attack, AttackConfig

    def perturb(self, model, x, y, bounds, targeted=False):
        return x

    cls = type("FakeAttack", (Attack,), {"name": name, "Config": AttackConfig, "perturb": perturb, "__module__": module})
    return cls


def plugin_module(modname: str, *attacks):
    mod = types.ModuleType(modname)

    @advx.hookimpl
    def advx_register_attacks():
        return list(attacks)

    mod.advx_register_attacks = advx_register_attacks
    return mod


class FakeDist:
    def __init__(self, name):
        self.name = name
        self.metadata = {"Name": name}


class FakeEP:
    """Quacks like importlib.metadata.EntryPoint (name, group, dist, load)."""

    group = "advx"

    def __init__(self, name, dist, loader):
        self.name = name
        self.dist = FakeDist(dist)
        self._loader = loader

    def load(self):
        return self._loader()


@pytest.fixture
def fake_entry_points(monkeypatch):
    eps: list[FakeEP] = []

    def entry_points(group=None, **kw):
        return [e for e in eps if group in (None, e.group)]

    monkeypatch.setattr(registry_mod.metadata, "entry_points", entry_points)
    return eps


def test_builtins_are_registered_through_entry_points():
    eps = metadata.entry_points(group="advx")
    names = {e.name for e in eps}
    assert {"attacks-fgsm", "attacks-bim", "datasets-digits", "models-mnist-cnn", "defenses-none"} <= names
    reg = advx.Registry.discover()
    for kind, name in [("attack", "fgsm"), ("attack", "bim"), ("dataset", "digits"), ("dataset", "synthetic"),
                       ("model", "mnist-cnn"), ("model", "mlp"), ("defense", "none")]:
        entry = next(e for e in reg.entries(kind) if e.name == name)
        assert entry.package == "advx"
        assert entry.source.startswith("advx:")


def test_broken_plugin_is_reported_and_others_keep_working(fake_entry_points):
    good = plugin_module("good_pkg", make_attack("good-attack", "good_pkg"))

    def broken():
        raise ImportError("No module named 'torchvision'")

    fake_entry_points += [FakeEP("good", "advx-good", lambda: good), FakeEP("bad", "advx-bad", broken)]
    reg = advx.Registry.discover()
    assert reg.names("attack") == ["good-attack"]
    assert len(reg.failures) == 1
    msg = str(reg.failures[0])
    assert "advx-bad" in msg and "bad" in msg and "torchvision" in msg


def test_hook_that_raises_or_returns_junk_is_reported(fake_entry_points):
    mod = types.ModuleType("junk_pkg")

    @advx.hookimpl
    def advx_register_attacks():
        return [object]

    @advx.hookimpl
    def advx_register_models():
        raise RuntimeError("boom")

    mod.advx_register_attacks = advx_register_attacks
    mod.advx_register_models = advx_register_models
    fake_entry_points.append(FakeEP("junk", "advx-junk", lambda: mod))
    reg = advx.Registry.discover()
    errors = " | ".join(str(f) for f in reg.failures)
    assert "not a subclass of advx.Attack" in errors
    assert "RuntimeError: boom" in errors


def test_misspelled_hook_is_reported(fake_entry_points):
    mod = types.ModuleType("typo_pkg")

    @advx.hookimpl
    def advx_register_atacks():
        return []

    mod.advx_register_atacks = advx_register_atacks
    good = plugin_module("good_pkg", make_attack("good-attack", "good_pkg"))
    fake_entry_points += [FakeEP("typo", "advx-typo", lambda: mod), FakeEP("good", "advx-good", lambda: good)]
    reg = advx.Registry.discover()
    assert reg.names("attack") == ["good-attack"]
    assert any("advx_register_atacks" in str(f) for f in reg.failures)


def test_two_packages_claiming_one_name(fake_entry_points):
    a = plugin_module("pkg_a", make_attack("pgd", "pkg_a"))
    b = plugin_module("pkg_b", make_attack("pgd", "pkg_b"))
    other = plugin_module("pkg_c", make_attack("other", "pkg_c"))
    fake_entry_points += [
        FakeEP("a", "advx-a", lambda: a),
        FakeEP("b", "advx-b", lambda: b),
        FakeEP("c", "advx-c", lambda: other),
    ]
    reg = advx.Registry.discover()
    assert reg.get("attack", "other").name == "other"  # unaffected
    with pytest.raises(advx.PluginConflictError) as exc:
        reg.get("attack", "pgd")
    msg = str(exc.value)
    assert "'advx-a'" in msg and "'advx-b'" in msg and "\n" not in msg


def test_disable_plugins_env(fake_entry_points, monkeypatch):
    a = plugin_module("pkg_a", make_attack("pgd", "pkg_a"))
    b = plugin_module("pkg_b", make_attack("pgd", "pkg_b"))
    fake_entry_points += [FakeEP("a", "advx-a", lambda: a), FakeEP("b", "advx-b", lambda: b)]
    monkeypatch.setenv("ADVX_DISABLE_PLUGINS", "advx-b")
    reg = advx.Registry.discover()
    assert reg.get("attack", "pgd").__module__ == "pkg_a"


def test_unknown_name_suggests_closest(registry):
    with pytest.raises(advx.PluginNotFoundError) as exc:
        registry.get("attack", "fgms")
    msg = str(exc.value)
    assert "did you mean 'fgsm'" in msg and "\n" not in msg
    with pytest.raises(advx.PluginNotFoundError, match="did you mean 'digits'"):
        registry.get("dataset", "digit")


def test_from_modules_without_entry_points():
    mod = plugin_module("inline", make_attack("inline-attack", "inline"))
    reg = advx.Registry.from_modules(mod)
    assert reg.names("attack") == ["inline-attack"]
    assert reg.names("dataset") == []


def test_invalid_plugin_name_is_rejected():
    reg = advx.Registry()
    with pytest.raises(advx.PluginLoadError, match="kebab-case"):
        reg.add("attack", make_attack("Bad Name"))
