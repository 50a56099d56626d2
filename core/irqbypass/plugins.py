"""Plugins: the pluggy host, entry-point discovery, and the broken-plugin report.

Discovery follows pytest and llm. Plugins are found through the entry-point group
``irqbypass``; they load after the core's own implementation. The environment
narrows it: ``IRQBYPASS_DISABLE_PLUGIN_AUTOLOAD`` (any non-empty value) loads
none, ``IRQBYPASS_LOAD_PLUGINS`` (comma-separated distribution names; empty means
none) loads only those. A block list (config ``[plugins] block`` or ``--block``)
names plugins or distributions to skip. A plugin that fails to load is recorded
with its name, distribution and error, and the others keep working; ``strict``
makes the first failure fatal. One distribution seen twice (an editable install
beside a regular one, a ``lib64`` symlink) loads once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .hookspecs import hookimpl
from .kinds import KindRegistrar, KindRegistry

GROUP = "irqbypass"
ENV_LOAD = "IRQBYPASS_LOAD_PLUGINS"
ENV_DISABLE = "IRQBYPASS_DISABLE_PLUGIN_AUTOLOAD"
CORE_PLUGIN = "irqbypass.core"

_STEPS = ("add", "del", "stop", "start")


class _CoreCallbacks:
    """The innermost implementation of each lifecycle hook: call the method."""

    @hookimpl(trylast=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> None:
        if side == "producer":
            endpoint.add_consumer(partner)
        else:
            endpoint.add_producer(partner)

    @hookimpl(trylast=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> None:
        if side == "producer":
            endpoint.del_consumer(partner)
        else:
            endpoint.del_producer(partner)

    @hookimpl(trylast=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> None:
        endpoint.stop()

    @hookimpl(trylast=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> None:
        endpoint.start()


@dataclass
class PluginInfo:
    """One plugin as ``irqbypass plugins`` shows it."""

    name: str
    distribution: str | None = None
    version: str | None = None
    kinds: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "kinds": self.kinds,
            "hooks": self.hooks,
            "error": self.error,
        }


@dataclass(frozen=True)
class _Source:
    distribution: str | None
    version: str | None


class PluginHost:
    """Owns the pluggy ``PluginManager``, the loaded plugins and their kinds.

    ``Manager`` reads :attr:`wrapped` to know which lifecycle hooks some plugin
    implements; it is recomputed on every register and unregister, so the
    manager's hot path costs one dict lookup per callback.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(_CoreCallbacks(), name=CORE_PLUGIN)
        self.failures: list[PluginInfo] = []
        self._sources: dict[str, _Source] = {}
        self._kinds: KindRegistry | None = None
        self._kind_failures: dict[str, str] = {}
        self.wrapped: dict[str, Callable[..., Any]] = {}
        self._refresh()

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- registration ------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module in-process (tests, embedders)."""
        try:
            registered = self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name or plugin!r} cannot be registered: {exc}") from exc
        self._refresh()
        return registered if registered is not None else str(name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> None:
        self.pm.unregister(plugin, name=name)
        self._refresh()

    @contextmanager
    def registered(self, plugin: object, name: str | None = None) -> Iterator[str]:
        """Register ``plugin`` for the duration of a ``with`` block."""
        plugin_name = self.register(plugin, name)
        try:
            yield plugin_name
        finally:
            self.unregister(name=plugin_name)

    def _refresh(self) -> None:
        self._kinds = None
        wrapped = {}
        for step in _STEPS:
            caller = getattr(self.pm.hook, f"irqbypass_{step}")
            impls = caller.get_hookimpls()
            if any(impl.plugin_name != CORE_PLUGIN for impl in impls):
                wrapped[step] = caller
        self.wrapped = wrapped

    # -- discovery ---------------------------------------------------------

    def load_entry_points(
        self,
        *,
        block: Iterable[str] = (),
        allow: Sequence[str] | None = None,
        strict: bool = False,
        environ: Mapping[str, str] | None = None,
        entry_points: Callable[[], Iterable[metadata.EntryPoint]] | None = None,
    ) -> list[PluginInfo]:
        """Load the installed plugins; return the ones that failed.

        ``allow`` (distribution or plugin names) restricts loading like
        ``IRQBYPASS_LOAD_PLUGINS``, which wins when set. ``entry_points`` is a
        seam for tests.
        """
        env = os.environ if environ is None else environ
        if env.get(ENV_DISABLE):
            return []
        if ENV_LOAD in env:
            allow = [n for n in (s.strip() for s in env[ENV_LOAD].split(",")) if n]
        allowed = None if allow is None else {_normalize(n) for n in allow}
        blocked = {_normalize(n) for n in block}
        found = entry_points() if entry_points is not None else _group_entry_points()
        failures = []
        seen: set[tuple[str, str]] = set()
        for ep in sorted(found, key=lambda e: (_dist_name(e) or "", e.name)):
            dist = _dist_name(ep)
            key = (_normalize(dist or ""), ep.name)
            if key in seen:
                continue  # the same distribution seen twice
            seen.add(key)
            names = {_normalize(ep.name), _normalize(dist or "")}
            if allowed is not None and not names & allowed:
                continue
            if names & blocked or self.pm.has_plugin(ep.name):
                continue
            info = self._load_one(ep, dist)
            if info is not None:
                failures.append(info)
                if strict:
                    raise PluginError(_failure_message(info))
        self.failures.extend(failures)
        return failures

    def _load_one(self, ep: metadata.EntryPoint, dist: str | None) -> PluginInfo | None:
        version = ep.dist.version if ep.dist is not None else None
        try:
            plugin = ep.load()
            self.pm.register(plugin, name=ep.name)
        except (Exception, SystemExit) as exc:  # sys.exit() at import is a failed plugin too
            return PluginInfo(
                name=ep.name,
                distribution=dist,
                version=version,
                error=f"{type(exc).__name__}: {exc}",
            )
        self._sources[ep.name] = _Source(dist, version)
        self._refresh()
        return None

    # -- kinds -------------------------------------------------------------

    @property
    def kinds(self) -> KindRegistry:
        """Every kind the registered plugins provide (computed once per change)."""
        if self._kinds is None:
            self._kinds, self._kind_failures = self._collect_kinds()
        return self._kinds

    def _collect_kinds(self) -> tuple[KindRegistry, dict[str, str]]:
        registry = KindRegistry()
        failures = {}
        caller = self.pm.hook.irqbypass_register_kinds
        for impl in caller.get_hookimpls():
            registrar = KindRegistrar(impl.plugin_name, registry)
            try:
                impl.function(register=registrar)
            except Exception as exc:
                registry.remove_plugin(impl.plugin_name)
                failures[impl.plugin_name] = (
                    f"irqbypass_register_kinds raised {type(exc).__name__}: {exc}"
                )
        return registry, failures

    def check_kinds(self, *, strict: bool = False) -> list[str]:
        """Problems with kinds: plugins whose registration raised, and names two
        plugins claim. ``strict`` raises the first instead."""
        registry = self.kinds
        problems = [f"plugin {n!r}: {e}" for n, e in sorted(self._kind_failures.items())]
        problems += [
            f"{side} kind {name!r} is registered by plugins "
            f"{' and '.join(map(repr, plugins))}; it is refused until one is blocked"
            for side, name, plugins in registry.conflicts()
        ]
        if strict and problems:
            raise PluginError(problems[0])
        return problems

    # -- reporting ---------------------------------------------------------

    def info(self) -> list[PluginInfo]:
        """Every plugin, loaded or failed, for ``irqbypass plugins``."""
        registry = self.kinds
        conflicts = {
            plugin: f"{side} kind {name!r} is also registered by "
            f"{', '.join(repr(p) for p in plugins if p != plugin)}"
            for side, name, plugins in registry.conflicts()
            for plugin in plugins
        }
        result = []
        for name, plugin in self.pm.list_name_plugin():
            if name == CORE_PLUGIN or plugin is None:
                continue
            source = self._sources.get(name, _Source(None, None))
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
            result.append(
                PluginInfo(
                    name=name,
                    distribution=source.distribution,
                    version=source.version,
                    kinds={k: v for k, v in registry.of_plugin(name).items() if v},
                    hooks=hooks,
                    error=self._kind_failures.get(name) or conflicts.get(name),
                )
            )
        return sorted(result + self.failures, key=lambda i: i.name)


def load_plugins(
    *,
    block: Iterable[str] = (),
    allow: Sequence[str] | None = None,
    strict: bool = False,
) -> PluginHost:
    """A :class:`PluginHost` with the installed plugins loaded (see the module
    docstring for the environment variables). Failures are in ``host.failures``
    unless ``strict``."""
    host = PluginHost()
    host.load_entry_points(block=block, allow=allow, strict=strict)
    host.check_kinds(strict=strict)
    return host


def _group_entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=GROUP)


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _failure_message(info: PluginInfo) -> str:
    dist = " ".join(filter(None, [info.distribution, info.version])) or "unknown"
    return f"plugin {info.name!r} (distribution {dist}) failed to load: {info.error}"
