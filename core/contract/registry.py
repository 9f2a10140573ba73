"""Plugin discovery: entry points of the group ``advx`` -> pluggy -> classes by kind and name.

Built without module-global state: ``Registry.discover()`` reads the installed entry
points each time it is called, ``Registry.from_modules(...)`` builds one from modules in
hand (tests, embedding). Each entry point is loaded inside its own ``try`` so that one
broken third-party package is reported (package, entry point, error) while every other
plugin keeps working; pluggy's own ``load_setuptools_entrypoints`` stops at the first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from advx.contract import hookspecs
from advx.contract.errors import PluginConflictError, PluginLoadError, PluginNotFoundError, suggest
from advx.contract.interfaces import KINDS, Attack, Dataset, Defense, Kind, Model, Plugin
from advx.contract.threats import ThreatModel

GROUP = "advx"
BASES: dict[str, type[Plugin]] = {
    "attack": Attack,
    "defense": Defense,
    "model": Model,
    "dataset": Dataset,
    "threat": ThreatModel,
}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


@dataclass(frozen=True)
class PluginEntry:
    """A registered plugin class and where it came from."""

    kind: Kind
    name: str
    cls: type[Plugin]
    package: str  # distribution name (or module name when registered from a module)
    source: str  # "package:entry-point" or module name


@dataclass(frozen=True)
class LoadFailure:
    """An entry point that could not be loaded or whose hook failed."""

    package: str
    entry_point: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.entry_point!r} from package {self.package!r} failed to load: {self.error}"


class Registry:
    """All plugins known to one run, by kind and name."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._entries: dict[str, dict[str, PluginEntry]] = {k: {} for k in KINDS}
        self._packages: dict[str, str] = {}  # pluggy plugin name -> distribution
        self.failures: list[LoadFailure] = []
        self.conflicts: dict[tuple[str, str], str] = {}
        #: classes registered with ``add`` outside discovery (a notebook, a test): executors
        #: running cells in other processes ship them along
        self.added: list[tuple[Kind, type[Plugin], str]] = []
        #: sanity checks from ``advx_register_checks`` (``advx.check`` declarations), by name
        self.checks: dict[str, Any] = {}
        #: report section builders from ``advx_report_sections``
        self.report_sections: list[Any] = []

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def discover(cls, group: str = GROUP) -> Registry:
        """Registry of every installed plugin (entry points of ``group``).

        ``ADVX_DISABLE_PLUGINS`` (comma-separated package or entry-point names) blocks
        plugins, ``ADVX_TRACE_PLUGINS=1`` prints hook calls.
        """
        reg = cls()
        blocked = {s.strip() for s in os.environ.get("ADVX_DISABLE_PLUGINS", "").split(",") if s.strip()}
        eps = sorted(metadata.entry_points(group=group), key=lambda e: (e.dist.name if e.dist else "", e.name))
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else "?"
            if dist in blocked or ep.name in blocked:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import error must be reported, not raised
                reg.failures.append(LoadFailure(dist, ep.name, f"{type(exc).__name__}: {exc}"))
                continue
            reg._register_module(module, dist, f"{dist}:{ep.name}")
        if os.environ.get("ADVX_TRACE_PLUGINS"):
            reg.pm.trace.root.setwriter(print)
            reg.pm.enable_tracing()
        reg._collect()
        return reg

    @classmethod
    def from_modules(cls, *modules: ModuleType | Any, package: str | None = None) -> Registry:
        """Registry built from plugin modules (or objects with hook functions) in hand."""
        reg = cls()
        for mod in modules:
            name = getattr(mod, "__name__", None) or type(mod).__name__
            reg._register_module(mod, package or name.split(".")[0], name)
        reg._collect()
        return reg

    def _register_module(self, module: Any, package: str, plugin_name: str) -> None:
        try:
            self.pm.register(module, name=plugin_name)
            self._packages[plugin_name] = package
        except Exception as exc:  # noqa: BLE001 - e.g. a hook with a misspelled name
            self.failures.append(LoadFailure(package, plugin_name, f"{type(exc).__name__}: {exc}"))

    def _collect(self) -> None:
        """Call every registration hook, attributing each class to its package."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin = getattr(exc, "plugin", None)
            pname = self.pm.get_name(plugin) if plugin is not None else "?"
            self.failures.append(LoadFailure(self._packages.get(pname or "", "?"), pname or "?", str(exc)))
            if plugin is not None:
                self.pm.unregister(plugin)
        for impl in self.pm.hook.advx_report_sections.get_hookimpls():
            try:
                self.report_sections += [b for b in impl.function() or [] if callable(b)]
            except Exception as exc:  # noqa: BLE001
                package = self._packages.get(impl.plugin_name, impl.plugin_name)
                self.failures.append(LoadFailure(package, impl.plugin_name, f"{type(exc).__name__}: {exc}"))
        for impl in self.pm.hook.advx_register_checks.get_hookimpls():
            package = self._packages.get(impl.plugin_name, impl.plugin_name)
            try:
                for chk in impl.function() or []:
                    if not (callable(chk) and isinstance(getattr(chk, "name", None), str)):
                        raise PluginLoadError(f"advx_register_checks returned {chk!r}, not a function declared with advx.check")
                    self.checks[chk.name] = chk
            except Exception as exc:  # noqa: BLE001
                self.failures.append(LoadFailure(package, impl.plugin_name, f"{type(exc).__name__}: {exc}"))
        for kind in KINDS:
            caller = getattr(self.pm.hook, hookspecs.HOOKS_BY_KIND[kind])
            for impl in caller.get_hookimpls():
                package = self._packages.get(impl.plugin_name, impl.plugin_name)
                try:
                    classes = list(impl.function() or [])
                except Exception as exc:  # noqa: BLE001
                    self.failures.append(LoadFailure(package, impl.plugin_name, f"{type(exc).__name__}: {exc}"))
                    continue
                for plugin_cls in classes:
                    try:
                        self.add(kind, plugin_cls, package=package, source=impl.plugin_name)
                    except PluginConflictError as exc:
                        # Recorded, not raised: every other plugin keeps working, and
                        # using the contested name gives this message.
                        self.conflicts[(kind, plugin_cls.name)] = str(exc)
                    except PluginLoadError as exc:
                        self.failures.append(LoadFailure(package, impl.plugin_name, str(exc)))

    def add(self, kind: Kind, plugin_cls: type[Plugin], package: str = "__main__", source: str = "") -> None:
        """Register one class (also usable directly, e.g. from a notebook)."""
        base = BASES[kind]
        if not (isinstance(plugin_cls, type) and issubclass(plugin_cls, base)):
            raise PluginLoadError(f"{hookspecs.HOOKS_BY_KIND[kind]} returned {plugin_cls!r}, not a subclass of advx.{base.__name__}")
        name = getattr(plugin_cls, "name", None)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise PluginLoadError(f"{plugin_cls.__qualname__} has no valid kebab-case 'name' (got {name!r})")
        existing = self._entries[kind].get(name)
        if existing is not None and existing.cls is not plugin_cls:
            raise PluginConflictError(
                f"two packages register the {kind} {name!r}: {existing.package!r} "
                f"({existing.cls.__module__}.{existing.cls.__qualname__}) and {package!r} "
                f"({plugin_cls.__module__}.{plugin_cls.__qualname__}); uninstall one, or block it "
                f"with ADVX_DISABLE_PLUGINS={package}"
            )
        self._entries[kind][name] = PluginEntry(kind, name, plugin_cls, package, source or package)
        if not source:
            self.added.append((kind, plugin_cls, package))

    # -- lookup -----------------------------------------------------------------------------

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: Kind | None = None) -> list[PluginEntry]:
        kinds = [kind] if kind else list(KINDS)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def get(self, kind: Kind, name: str) -> type[Plugin]:
        """The class registered as ``name``; a one-line error with suggestions otherwise."""
        if kind not in self._entries:
            raise PluginNotFoundError(f"unknown plugin kind {kind!r}{suggest(kind, KINDS)}")
        if (kind, name) in self.conflicts:
            raise PluginConflictError(self.conflicts[(kind, name)])
        try:
            return self._entries[kind][name].cls
        except KeyError:
            pass
        hint = suggest(name, self._entries[kind])
        failed = [f for f in self.failures if name in f.entry_point]
        extra = f"; note: {failed[0]}" if failed else ""
        known = ", ".join(self.names(kind)) or "none"
        raise PluginNotFoundError(f"no {kind} named {name!r}{hint}; known: {known}{extra}") from None

    def create(self, kind: Kind, name: str, params: dict[str, Any] | None = None) -> Plugin:
        """Instantiate plugin ``name`` with validated ``params``."""
        cls = self.get(kind, name)
        return cls(cls.validate_config(dict(params or {})))

    def attack(self, name: str, **params: Any) -> Attack:
        return self.create("attack", name, params)  # type: ignore[return-value]

    def model(self, name: str, **params: Any) -> Model:
        return self.create("model", name, params)  # type: ignore[return-value]

    def threat(self, name: str, **params: Any) -> ThreatModel:
        return self.create("threat", name, params)  # type: ignore[return-value]

    def dataset(self, name: str, **params: Any) -> Dataset:
        return self.create("dataset", name, params)  # type: ignore[return-value]

    def defense(self, name: str, **params: Any) -> Defense:
        return self.create("defense", name, params)  # type: ignore[return-value]


def iter_kinds(kind: str | None) -> Iterable[Kind]:
    if kind is None:
        return KINDS
    k = kind.rstrip("s")
    if k not in KINDS:
        raise PluginNotFoundError(f"unknown plugin kind {kind!r}{suggest(k, KINDS)}; kinds: {', '.join(KINDS)}")
    return (k,)  # type: ignore[return-value]
