"""Plugins: the pluggy host, entry-point discovery, and the broken-plugin report.

Discovery follows pytest and llm. Plugins are found through the entry-point group
``irqbypass``; they load after the core's own implementation. The user's
environment narrows it where the program made no choice (``allow=None``):
``IRQBYPASS_DISABLE_PLUGIN_AUTOLOAD`` (any non-empty value) loads none,
``IRQBYPASS_LOAD_PLUGINS`` (comma-separated distribution names; empty means
none) loads only those. An ``allow`` list the program passes wins over both, as
pytest's ``-p`` wins over its autoload switch: a VMM that needs its plugins gets
them whatever the shell exports. A block list (config ``[plugins] block`` or ``--block``)
names plugins or distributions to skip. A plugin that fails to load is recorded
with its name, distribution and error, and the others keep working; ``strict``
makes the first failure fatal. One distribution seen twice (an editable install
beside a regular one, a ``lib64`` symlink) loads once.

Every plugin left out is recorded with why (:attr:`PluginHost.filtered`), and so
is every load-list entry that matches nothing (:attr:`PluginHost.unmatched`), so
that ``irqbypass plugins`` and an unknown kind's error can say so. A plugin that
implements a hook no spec declares (``irqbypass_stopp``, or a hook of another
release) is refused, as pytest refuses one. A plugin whose distribution requires
another core release (``Requires-Dist: irqbypass>=0.2``) is refused before it is
imported (:mod:`irqbypass.requires`). ``load_module`` registers a module by
import name without packaging it (``irqbypass -p MODULE``, like pytest's ``-p``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, cast

import pluggy

from . import __version__
from . import _hookspecs as hookspecs
from ._errors import IrqBypassError, PluginError, printable
from ._hookspecs import HookRelay, hookimpl
from ._kinds import KindRegistrar, KindRegistry
from ._options import Options, show_error, show_exception, show_value
from ._requires import core_requirement

GROUP = "irqbypass"
ENV_LOAD = "IRQBYPASS_LOAD_PLUGINS"
ENV_DISABLE = "IRQBYPASS_DISABLE_PLUGIN_AUTOLOAD"
CORE_PLUGIN = "irqbypass.core"

_STEPS = ("add", "del", "stop", "start")
_log = logging.getLogger("irqbypass.plugins")


class _CoreCallbacks:
    """The innermost implementation of each lifecycle hook: call the method."""

    @hookimpl(trylast=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> None:
        (endpoint.add_consumer if side == "producer" else endpoint.add_producer)(partner)

    @hookimpl(trylast=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> None:
        (endpoint.del_consumer if side == "producer" else endpoint.del_producer)(partner)

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
    #: where the plugin's code is: its module (``irqbypass_mock``) or class
    module: str | None = None
    #: the formatted traceback of a failure to load (shown with ``-v``)
    traceback: str | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The plugin as ``irqbypass plugins --json`` shows it."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "kinds": self.kinds,
            "hooks": self.hooks,
            "error": self.error,
        }


@dataclass(frozen=True)
class FilteredPlugin:
    """An installed plugin that was not loaded, and why."""

    name: str
    distribution: str | None
    version: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Source:
    distribution: str | None
    version: str | None
    #: why the distribution's metadata cannot be read (None: it can)
    unreadable: str | None = None


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
        #: installed plugins left out by the environment, a load list or a block list
        self.filtered: list[FilteredPlugin] = []
        #: load-list entries that named no installed plugin or distribution
        self.unmatched: list[str] = []
        #: what looks wrong in a plugin but stops nothing: a function named like a
        #: hook but not marked, an entry point in the wrong group
        self.warnings: list[str] = []
        self._sources: dict[str, _Source] = {}
        self._kinds: KindRegistry | None = None
        self._kind_failures: dict[str, str] = {}
        self.wrapped: dict[str, Callable[..., Any]] = {}
        #: ``irqbypass_pair`` when some plugin implements it, else None
        self.pairing: Callable[..., Any] | None = None
        self._refresh()

    @property
    def hook(self) -> HookRelay:
        """The hooks, to call them: ``host.hook.irqbypass_stop(endpoint=e, side="producer")``."""
        return cast("HookRelay", self.pm.hook)

    # -- registration ------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module in-process (tests, embedders)."""
        if name is not None and not isinstance(name, str):
            raise PluginError(f"plugin name {show_value(name)} is not a string; pass a str or None")
        what = repr(name) if name is not None else show_value(plugin)
        try:
            registered = self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"plugin {what} cannot be registered: {_invalid(self.pm, exc)}"
            ) from exc
        except ValueError as exc:
            raise PluginError(f"plugin {what} cannot be registered: {show_error(exc)}") from exc
        except Exception as exc:  # a hostile object's attributes can raise anything
            raise PluginError(f"plugin {what} cannot be registered: {show_exception(exc)}") from exc
        # a hook no spec declares (of another irqbypass release, or misspelt) would
        # never be called: the plugin is refused, as pytest refuses one
        unknown = sorted(
            caller.name
            for caller in self.pm.get_hookcallers(plugin) or []
            if caller.spec is None
            and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls())
        )
        if unknown:
            self.pm.unregister(plugin)
            raise PluginError(
                f"plugin {registered or name!r} cannot be registered: it implements "
                f"{'hook' if len(unknown) == 1 else 'hooks'} {', '.join(map(repr, unknown))}, "
                f"which irqbypass {__version__} does not have: it was written for another "
                f"irqbypass release or the name is misspelt; the hooks of irqbypass "
                f"{__version__} are {', '.join(_hook_names())} (mark a hook of another "
                "project's with @irqbypass.plugin.hookimpl(optionalhook=True))"
            )
        self._refresh()
        plugin_name = registered if registered is not None else str(name)
        for warning in _unmarked_hooks(self.pm, plugin, plugin_name):
            _log.info("%s", warning)  # the CLI warns of host.warnings
            self.warnings.append(warning)
        return plugin_name

    def unregister(self, plugin: object | None = None, name: str | None = None) -> None:
        """Unregister a plugin, by object or by name; one that is not registered is left
        alone."""
        if name is not None and not isinstance(name, str):
            raise PluginError(f"plugin name {show_value(name)} is not a string; pass a str or None")
        try:
            if (name is not None and self.pm.get_plugin(name) is None) or (
                name is None and not self.pm.is_registered(plugin)
            ):
                return  # not registered: nothing to do, as for the manager's endpoints
            self.pm.unregister(plugin, name=name)
        except Exception as exc:
            raise PluginError(
                f"plugin {show_value(name or plugin)} cannot be unregistered: {show_exception(exc)}"
            ) from exc
        finally:
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
        pairing = self.pm.hook.irqbypass_pair
        self.pairing = pairing if pairing.get_hookimpls() else None

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

        ``allow`` (distribution or plugin names) loads only those, whatever the
        environment says; with ``allow=None`` the environment (``environ``,
        by default ``os.environ``) decides (see the module doc). ``entry_points``
        is a seam for tests.
        """
        env = os.environ if environ is None else environ
        if entry_points is None:  # every group's, so that a plugin in the wrong group is seen
            every = _installed_entry_points(self.warnings)
        else:
            every = list(entry_points())
        found = [ep for ep in every if getattr(ep, "group", GROUP) == GROUP]
        for misplaced in _misplaced(every):
            self.filtered.append(misplaced)
            label = _dist_label(misplaced.distribution, misplaced.version)
            warning = f"plugin {misplaced.name} ({label}) is not loaded: {misplaced.reason}"
            _log.info("%s", warning)  # the CLI warns of host.warnings
            self.warnings.append(warning)
        chosen, unmatched = _choose(found, env, allow, block)
        failures = []
        for ep, source, reason in chosen:
            info = _load_one(self, ep, source, reason)
            if info is not None:
                failures.append(info)
                if strict:
                    raise PluginError(_failure_message(info))
        self.unmatched += unmatched
        self.failures.extend(failures)
        self._kinds = None  # the left-out list changed
        return failures

    def load_module(self, module: str) -> None:
        """Import ``module`` and register it as a plugin named after it, as
        pytest's ``-p`` does; a failure is recorded like a broken entry point,
        but no such module at all is a PluginError (a typo on the command line).
        A module its entry point already loaded is loaded once."""
        if self.pm.has_plugin(module):
            return
        try:
            plugin = importlib.import_module(module)
            if self.pm.is_registered(plugin):  # installed too: its entry point loaded it
                _log.info(
                    "plugin module %s is already loaded as plugin %r",
                    module,
                    self.pm.get_name(plugin),
                )
                return
            self.register(plugin, name=module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(f"{exc.name}.")):
                self._module_failed(module, exc)  # the module is there; its own import failed
                return
            raise PluginError(
                f"-p {module}: no module named {exc.name!r}; check the name, or add the "
                "directory that holds it to PYTHONPATH"
            ) from None
        except (Exception, SystemExit) as exc:
            self._module_failed(module, exc)
            return
        self._sources[module] = _Source(None, None)
        _log.info("loaded plugin module %s", module)

    def _module_failed(self, module: str, exc: BaseException) -> None:
        info = PluginInfo(
            name=module, error=f"{type(exc).__name__}: {exc}", traceback=_traceback(exc)
        )
        self.failures.append(info)
        self._kinds = None  # an unknown kind's message names the failure
        _log.info("plugin module %s failed to load: %s", module, info.error)

    # -- kinds -------------------------------------------------------------

    @property
    def kinds(self) -> KindRegistry:
        """Every kind the registered plugins provide (computed once per change), with
        what was left out and what failed: an unknown kind's error names them."""
        if self._kinds is not None:
            return self._kinds
        registry = KindRegistry()
        registry.left_out = [
            f"{f.name} ({f.distribution or 'no distribution'}): {f.reason}" for f in self.filtered
        ] + list(self.unmatched)
        failures = {}
        for impl in self.pm.hook.irqbypass_register_kinds.get_hookimpls():
            try:
                impl.function(register=KindRegistrar(impl.plugin_name, registry))
            except (Exception, SystemExit) as exc:  # sys.exit() (argparse in a plugin) too
                registry.remove_plugin(impl.plugin_name)
                failures[impl.plugin_name] = (
                    f"irqbypass_register_kinds raised {show_exception(exc)}"
                )
        registry.failed = [
            f"plugin {i.name!r} ({_dist_label(i.distribution, i.version)})" for i in self.failures
        ] + [f"plugin {name!r} (in irqbypass_register_kinds)" for name in sorted(failures)]
        self._kinds, self._kind_failures = registry, failures
        return registry

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

    # -- settings ----------------------------------------------------------

    def configure(
        self, tables: Mapping[str, Mapping[str, Any]], *, file: str | None = None
    ) -> list[str]:
        """Hand each plugin its own ``[plugins.NAME]`` table (empty when the
        file has none) through its ``irqbypass_configure`` hook; return a
        warning for each table that names no registered plugin. A plugin's
        ConfigError is raised as it is; anything else it raises is a
        PluginError naming it. A table of a plugin without the hook is warned
        of too: nothing reads it."""
        for impl in self.pm.hook.irqbypass_configure.get_hookimpls():
            name = impl.plugin_name
            options = Options(tables.get(name, {}), where=f"plugins.{name}", file=file)
            try:
                impl.function(options=options)
            except IrqBypassError:
                raise
            except (Exception, SystemExit) as exc:
                raise PluginError(
                    f"plugin {name!r}: irqbypass_configure raised {show_exception(exc)}; "
                    "this is a bug in that plugin"
                ) from exc
        readers = {impl.plugin_name for impl in self.pm.hook.irqbypass_configure.get_hookimpls()}
        registered = {name for name, _ in self.pm.list_name_plugin()}
        return [_unread_table(name, registered) for name in tables if name not in readers]

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
            # where the plugin's code is: its module's name, or its class's
            module = getattr(plugin, "__name__", None)
            if not isinstance(module, str) or not isinstance(plugin, type(sys)):
                module = f"{type(plugin).__module__}.{type(plugin).__qualname__}"
            result.append(
                PluginInfo(
                    name=name,
                    distribution=source.distribution,
                    version=source.version,
                    kinds={k: v for k, v in registry.of_plugin(name).items() if v},
                    hooks=sorted(c.name for c in self.pm.get_hookcallers(plugin) or []),
                    error=self._kind_failures.get(name) or conflicts.get(name),
                    module=module,
                )
            )
        return sorted(result + self.failures, key=lambda i: i.name)


def _unread_table(name: str, registered: set[str]) -> str:
    """The warning for ``[plugins.NAME]`` that no irqbypass_configure reads."""
    if name in registered:
        return (
            f"plugins.{name}: plugin {name!r} has no irqbypass_configure hook, so it takes no "
            "settings and nothing reads this table; remove it, or set the option where the "
            "plugin reads it (an entry's options)"
        )
    close = difflib.get_close_matches(name, sorted(registered), n=1)
    return f"plugins.{name}: no plugin named {name!r} is loaded, so nothing reads this table" + (
        f"; did you mean {close[0]!r}?" if close else ""
    )


def load_plugins(
    *,
    block: Iterable[str] = (),
    allow: Sequence[str] | None = None,
    strict: bool = False,
    modules: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> PluginHost:
    """A :class:`PluginHost` with the installed plugins loaded, then ``modules``
    by import name. Failures are in ``host.failures`` unless ``strict``.

    Which plugins: ``allow`` (distribution or plugin names) when the program
    passes it, whatever the environment says; otherwise the user's environment
    decides (``IRQBYPASS_LOAD_PLUGINS``, ``IRQBYPASS_DISABLE_PLUGIN_AUTOLOAD``),
    read from ``environ`` (by default ``os.environ``; ``{}`` ignores it), and
    without either, every installed plugin. ``block`` applies in every case."""
    block = _names(block, "block")
    allow = None if allow is None else _names(allow, "allow")
    modules = _names(modules, "modules")
    if not isinstance(strict, bool):
        raise PluginError(f"strict={show_value(strict)} is not True or False")
    if environ is not None and not isinstance(environ, Mapping):
        raise PluginError(
            f"environ={show_value(environ)} is not a mapping; pass a dict such as os.environ, "
            "or None"
        )
    host = PluginHost()
    host.load_entry_points(block=block, allow=allow, strict=strict, environ=environ)
    for module in modules:
        host.load_module(module)
        if strict and host.failures:
            raise PluginError(_failure_message(host.failures[-1]))
    host.check_kinds(strict=strict)
    return host


def _load_one(
    host: PluginHost, ep: metadata.EntryPoint, source: _Source, reason: str | None
) -> PluginInfo | None:
    """One chosen entry point: left out (``reason``, or a plugin of its name is
    registered already), refused (its distribution's metadata cannot be read,
    or it requires another core release), or loaded and registered; what
    failed, or None."""
    dist, version = source.distribution, source.version
    if reason is None and host.pm.has_plugin(ep.name):
        reason = f"a plugin named {ep.name!r} is already registered"
    if reason is not None:
        host.filtered.append(FilteredPlugin(ep.name, dist, version, reason))
        _log.info("plugin %s (%s) not loaded: %s", ep.name, dist, reason)
        return None

    def failed(message: str, why: str, error: BaseException | None = None) -> PluginInfo:
        _log.info("plugin %s (%s %s) %s: %s", ep.name, dist, version, why, message)
        return PluginInfo(
            name=ep.name,
            distribution=dist,
            version=version,
            module=getattr(ep, "value", None),
            error=message,
            traceback=_traceback(error) if error is not None else None,
        )

    if source.unreadable is not None:
        return failed(source.unreadable, "not loaded")
    # a distribution that requires another core release is refused before its
    # code is imported, with what to install (unreadable metadata: the import tells)
    try:
        requires = ep.dist.requires if ep.dist is not None else None
    except Exception:
        requires = None
    requirement = core_requirement(requires, GROUP)
    problem = requirement.problem(__version__) if requirement is not None else None
    if requirement is not None and problem is not None:
        return failed(
            f"{problem}; install a release of {dist} made for irqbypass {__version__} "
            f"(pip install --upgrade {dist}) or an irqbypass it supports "
            f"(pip install '{requirement.text}'), or block it (--block {dist})",
            "not loaded",
        )
    try:
        plugin = ep.load()
        host.register(plugin, name=ep.name)
    except (Exception, SystemExit) as exc:  # sys.exit() at import is a failed plugin too
        # a refused registration reports pluggy's own error, or the core's reason
        error = exc.__cause__ if isinstance(exc, PluginError) and exc.__cause__ else exc
        message = show_exception(error)
        if error is exc and isinstance(exc, PluginError):  # "plugin 'x' cannot be ...: why"
            message = str(exc).split(": ", 1)[-1]
        return failed(message, "failed to load", error)
    host._sources[ep.name] = source
    _log.info("loaded plugin %s (%s %s)", ep.name, dist, version)
    return None


def _choose(
    found: Iterable[metadata.EntryPoint],
    env: Mapping[str, str],
    allow: Sequence[str] | None,
    block: Iterable[str],
) -> tuple[list[tuple[metadata.EntryPoint, _Source, str | None]], list[str]]:
    """Which installed plugins load: the program's ``allow`` list, else the
    user's environment (see the module doc); then the block list. Each entry
    point comes once, sorted, with its distribution and why it is left
    out (None: it loads): one distribution seen twice (an editable install
    beside a regular one, a ``lib64`` symlink) loads once, and each METADATA is
    parsed once. Then the load-list entries that named no plugin or
    distribution seen."""
    disabled = False
    source = "the allow list"
    if allow is None:
        disabled = bool(env.get(ENV_DISABLE))
        if ENV_LOAD in env:
            allow = [n for n in (s.strip() for s in env[ENV_LOAD].split(",")) if n]
            source = ENV_LOAD
    allowed = None if allow is None else {_normalize(n) for n in allow}
    blocked = {_normalize(n) for n in block}
    found = list(found)
    sources = {id(ep): _source(ep) for ep in found}
    seen: set[tuple[str, str]] = set()
    matched: set[str] = set()  # every name seen, to tell the load-list entries that named none
    chosen: list[tuple[metadata.EntryPoint, _Source, str | None]] = []
    for ep in sorted(found, key=lambda e: (sources[id(e)].distribution or "", e.name)):
        dist = sources[id(ep)].distribution
        key = (_normalize(dist or ""), ep.name)
        if key in seen:
            continue
        seen.add(key)
        names = {_normalize(ep.name), _normalize(dist or "")}
        matched |= names
        reason = None
        if disabled:
            reason = f"{ENV_DISABLE} is set"
        elif allowed is not None and not names & allowed:
            reason = f"not in {source} ({', '.join(allow or ()) or 'empty'})"
        elif names & blocked:
            reason = "blocked (config [plugins] block or --block)"
        chosen.append((ep, sources[id(ep)], reason))
    unmatched = [
        f"{source} names {name!r}, which is no installed plugin or distribution"
        for name in (() if allow is None or disabled else allow)
        if _normalize(name) not in matched
    ]
    return chosen, unmatched


# -- a plugin's hooks, checked beyond what pluggy checks ----------------------


def _unmarked_hooks(pm: pluggy.PluginManager, plugin: object, name: str) -> list[str]:
    """A function named like a hook (``irqbypass_*``) that is no hook
    implementation: pluggy ignores it, so it would never be called."""
    marked = {
        caller.name
        for caller in pm.get_hookcallers(plugin) or []
        if any(impl.plugin is plugin for impl in caller.get_hookimpls())
    }
    known = sorted(n for n in dir(hookspecs) if n.startswith(f"{hookspecs.PROJECT}_"))
    found = []
    try:
        attributes = [a for a in dir(plugin) if a.startswith(f"{hookspecs.PROJECT}_")]
        for attribute in attributes:
            if attribute in marked:
                continue
            function = inspect.getattr_static(plugin, attribute)
            if isinstance(function, staticmethod | classmethod):
                function = function.__func__
            if inspect.isfunction(function):
                found.append((attribute, function))
    except Exception:  # a hostile object's attributes: pluggy took it, so do we
        return []
    warnings = []
    for attribute, function in found:
        code = function.__code__
        where = f"{code.co_filename}:{code.co_firstlineno}"
        if attribute in known:
            what = "so pluggy never calls it; decorate it with @irqbypass.plugin.hookimpl"
        else:
            close = difflib.get_close_matches(attribute, known, n=1)
            what = (
                f"but no hook has that name (did you mean {close[0]!r}?)"
                if close
                else f"but no hook has that name (the hooks are {', '.join(known)})"
            )
            what += "; rename it, or mark a hook with @irqbypass.plugin.hookimpl"
        warnings.append(
            f"plugin {name!r}: function {attribute} ({where}) is named like a hook but "
            f"not marked with @irqbypass.plugin.hookimpl, {what}"
        )
    return warnings


def _invalid(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    """pluggy's refusal on one line: a hook whose arguments this core does
    not pass (written for another release) says what this core passes."""
    lines = str(exc).splitlines()  # pluggy's own text: it prints
    text = printable("; ".join(line.strip() for line in lines if line.strip()))
    hook = re.search(r"for hook '(\w+)'", text)
    caller = getattr(pm.hook, hook.group(1), None) if hook else None
    if caller is None or caller.spec is None:
        return text
    return (
        f"{text}; irqbypass {__version__} calls {caller.name}"
        f"({', '.join(caller.spec.argnames)}): the plugin was written for another "
        "irqbypass release (plugin guide: Versions and compatibility)"
    )


def _names(value: object, what: str) -> list[str]:
    """A list of plugin or distribution names, or a PluginError saying why not."""
    if isinstance(value, str):
        raise PluginError(
            f"{what}={show_value(value)} is one string; pass a list of names, such as "
            f"[{show_value(value)}]"
        )
    try:
        names: list[object] = list(value)  # type: ignore[call-overload]
    except Exception as exc:
        raise PluginError(
            f"{what}={show_value(value)} is not a list of names ({show_exception(exc)})"
        ) from exc
    for name in names:
        if not isinstance(name, str):
            raise PluginError(f"{what} holds {show_value(name)}, which is not a name (a str)")
    return [str(name) for name in names]


def _misplaced(every: Iterable[metadata.EntryPoint]) -> list[FilteredPlugin]:
    """Entry points of a distribution that declares none in group ``irqbypass``
    but some in a group named like it (``irqbypass.plugins``, ``irqbypas``),
    or, for a distribution named ``irqbypass-*``, close to it: a plugin that is
    never loaded. Read from the metadata; nothing is imported. Only the
    distributions of such groups have their name read: a name is a parse of
    the distribution's METADATA, and every installed distribution's entry
    points are here (hundreds in a development environment)."""
    every = list(every)
    near: dict[str, bool] = {}  # group head -> named like GROUP (each head compared once)
    candidates = []
    for ep in every:
        group = getattr(ep, "group", GROUP)
        if group == GROUP:
            continue
        head = re.split(r"[-_.]", group, maxsplit=1)[0].lower()
        if head not in near:
            near[head] = bool(difflib.get_close_matches(head, [GROUP], cutoff=0.75))
        if near[head]:  # head == GROUP is close too
            candidates.append((ep, group, head))
    if not candidates:
        return []
    declaring = {
        _normalize(_dist_name(ep) or "") for ep in every if getattr(ep, "group", GROUP) == GROUP
    }
    found = []
    for ep, group, head in candidates:
        dist = _normalize(_dist_name(ep) or "")
        if dist in declaring or not (head == GROUP or dist.startswith(f"{GROUP}-")):
            continue
        found.append(
            (
                dist,
                FilteredPlugin(
                    ep.name,
                    _dist_name(ep),
                    ep.dist.version if ep.dist is not None else None,
                    f"its entry point {ep.name} = {getattr(ep, 'value', '?')!r} is in group "
                    f"{group!r}, which irqbypass does not read; plugins are found in group "
                    f"{GROUP!r} ([project.entry-points.{GROUP}] in its pyproject.toml)",
                ),
            )
        )
    return [plugin for _, plugin in sorted(found, key=lambda pair: pair[0])]


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith(f"{hookspecs.PROJECT}_"))


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    return _source(ep).distribution


def _source(ep: metadata.EntryPoint) -> _Source:
    dist = getattr(ep, "dist", None)
    return _Source(None, None) if dist is None else _read_source(dist)


def _read_source(dist: metadata.Distribution) -> _Source:
    """A distribution's name and version, from one parse of its METADATA;
    one that cannot be read (not UTF-8, say) says so, never raises."""
    try:
        read = dist.metadata
        return _Source(read["Name"], read["Version"])
    except Exception as exc:
        return _Source(None, None, f"the metadata of its distribution ({_where(dist)}) cannot "
                       f"be read ({show_exception(exc)}); reinstall it, or block it")  # fmt: skip


def _installed_entry_points(warnings: list[str]) -> list[metadata.EntryPoint]:
    """Every installed distribution's entry points, of every group. One whose
    entry_points.txt cannot be read (a line without "=", bytes not UTF-8) is
    a warning in ``warnings``, never the end of the discovery: any
    distribution's, not only a plugin's, would hide every plugin."""
    found: list[metadata.EntryPoint] = []
    for dist in metadata.distributions():
        try:
            found += dist.entry_points
        except Exception as exc:
            name = _read_source(dist).distribution or "(unnamed)"
            warning = (
                f"distribution {name} ({_where(dist)}): its entry_points.txt cannot be read "
                f"({show_exception(exc)}), so any plugin it holds is not loaded; reinstall it"
            )
            _log.info("%s", warning)  # the CLI warns of host.warnings
            warnings.append(warning)
    return found


def _where(dist: metadata.Distribution) -> str:
    """Where a distribution's metadata is (its dist-info directory, when known)."""
    return printable(str(getattr(dist, "_path", None) or "an unknown place"))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _dist_label(distribution: str | None, version: str | None) -> str:
    return " ".join(filter(None, [distribution, version])) or "no distribution"


def _failure_message(info: PluginInfo) -> str:
    dist = " ".join(filter(None, [info.distribution, info.version])) or "unknown"
    return f"plugin {info.name!r} (distribution {dist}) failed to load: {info.error}"
