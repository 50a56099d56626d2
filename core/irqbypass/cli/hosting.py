"""The plugins a command runs with: loading them (with the file's [plugins]
and each plugin's own table), ``irqbypass plugins``, and run's header line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Generator
from typing import Any, TextIO

from .. import __version__
from .._config import Config
from .._errors import ConfigError, IrqBypassError
from .._hookspecs import hookimpl
from .._plugins import ENV_DISABLE, ENV_LOAD, PluginHost, PluginInfo, load_plugins
from .output import fit_to_screen, is_tty, print_table, print_warning, say

#: plugins the CLI itself registers (tracing, metrics): not listed as the user's
_CORE_PLUGINS = ("irqbypass.trace", "irqbypass.metrics")


class _Trace:
    """-vv: logs every callback the manager makes, through the lifecycle hooks."""

    log = logging.getLogger("irqbypass.trace")

    @hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: add %r", side, endpoint.name, partner.name)
        return (yield)

    @hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: del %r", side, endpoint.name, partner.name)
        return (yield)

    @hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: stop", side, endpoint.name)
        return (yield)

    @hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: start", side, endpoint.name)
        return (yield)


def plugin_host(
    args: argparse.Namespace, config: Config | None = None, collect: bool = False
) -> PluginHost:
    """The plugins, loaded and given their ``[plugins.NAME]`` tables. With
    ``collect``, a table's error (with its line) is left in
    ``args.table_errors`` for the caller to report with the file's other
    errors (see :func:`table_errors`); otherwise it is raised."""
    settings = config.plugins if config is not None else None
    strict = args.strict or (settings.strict if settings else False)
    # the user's environment wins over the file's [plugins] load (docs/configuration.md):
    # an allow list passed to load_plugins would win over the environment
    from_env = ENV_LOAD in os.environ or bool(os.environ.get(ENV_DISABLE))
    host = load_plugins(
        block=[*args.block, *(settings.block if settings else ())],
        allow=settings.load if settings and not from_env else None,
        strict=strict,
        modules=args.plugin_modules,
    )
    for failure in host.failures:
        print_warning(_describe_failure(failure) + "; the other plugins are loaded")
        if args.verbose and failure.traceback:
            say(failure.traceback.rstrip("\n"), sys.stderr)
    for problem in [*host.warnings, *host.check_kinds(), *host.unmatched]:
        print_warning(problem)
    if config is not None:  # each plugin's own [plugins.NAME] table
        try:
            for problem in host.configure(config.plugins.tables, file=config.file):
                print_warning(problem)
        except ConfigError as exc:
            if exc.line is not None or not exc.key or exc.file != config.file:
                raise
            error = config.error(exc.key, exc.problem)  # with the line of its key
            if not collect:
                raise error from exc
            args.table_errors = [error]
    if args.verbose >= 2:
        host.register(_Trace(), name="irqbypass.trace")
    return host


def table_errors(args: argparse.Namespace) -> list[IrqBypassError]:
    """What :func:`plugin_host` collected of the plugin tables' errors (none: [])."""
    found: list[IrqBypassError] = getattr(args, "table_errors", None) or []
    return found


def _describe_failure(info: PluginInfo) -> str:
    dist = " ".join(filter(None, [info.distribution, info.version])) or "no distribution"
    return f"plugin {info.name!r} ({dist}) failed to load: {info.error}"


def _kind_table(host: PluginHost) -> list[dict[str, Any]]:
    """Every kind with its plugin and whether it can work on this machine."""
    rows = []
    for side in ("producer", "consumer"):
        for name in host.kinds.names(side):
            try:
                kind = host.kinds.get(side, name)
            except IrqBypassError as exc:  # claimed twice
                rows.append({"side": side, "name": name, "plugin": None, "unavailable": str(exc)})
                continue
            rows.append(
                {
                    "side": side,
                    "name": name,
                    "plugin": kind.plugin,
                    "unavailable": kind.unavailable_reason(),
                }
            )
    return rows


def cmd_plugins(args: argparse.Namespace) -> int:
    host = plugin_host(args)
    infos = [i for i in host.info() if i.name not in _CORE_PLUGINS]
    kinds = _kind_table(host)
    if args.json:
        doc = {
            "irqbypass": __version__,
            "python": sys.version.split()[0],
            "plugins": [i.as_dict() for i in infos],
            "kinds": kinds,
            "filtered": [f.as_dict() for f in host.filtered],
            "unmatched": host.unmatched,
        }
        say(json.dumps(doc, indent=2), sys.stdout)
        return 0
    say(f"irqbypass {__version__} (Python {sys.version.split()[0]})", sys.stdout)
    if not infos:
        why = "all of them were left out (below)" if host.filtered else "none is installed"
        say(f"no plugins loaded: {why}", sys.stdout)
    for info in infos:
        version_ = f" {info.version}" if info.version else ""
        say(f"{info.name} ({info.distribution or 'no distribution'}{version_})", sys.stdout)
        if info.module:
            say(f"  module: {info.module}", sys.stdout)
        for side, names in info.kinds.items():
            say(f"  {side} kinds: {', '.join(names)}", sys.stdout)
        say(f"  hooks: {', '.join(info.hooks) or '-'}", sys.stdout)
        if info.error:
            say(f"  error: {info.error}", sys.stdout)
            if args.verbose and info.traceback:
                say("  " + info.traceback.rstrip().replace("\n", "\n  "), sys.stdout)
    if kinds:
        say("kinds here:", sys.stdout)
        table = []
        for k in kinds:
            state = "yes" if k["unavailable"] is None else f"no: {k['unavailable']}"
            table.append(((k["side"], k["name"], k["plugin"] or "-", state), False))
        print_table(("SIDE", "KIND", "PLUGIN", "AVAILABLE"), table, sys.stdout)
    if host.filtered:
        say("not loaded:", sys.stdout)
        for f in host.filtered:
            dist = " ".join(filter(None, [f.distribution, f.version])) or "no distribution"
            say(f"  {f.name} ({dist}): {f.reason}", sys.stdout)
    return 0


def print_header(host: PluginHost, out: TextIO) -> None:
    """One line, as pytest's ``plugins:`` line: what this run is made of."""
    loaded = [
        f"{i.name} {i.version}" if i.version else i.name
        for i in host.info()
        if i.error is None and i.name not in _CORE_PLUGINS
    ]
    line = f"irqbypass {__version__}; plugins: {', '.join(loaded) or 'none'}"
    if is_tty(out):  # wrapped at a plugin name, not in the middle of one
        line = fit_to_screen(line, out)
    say(line, out)
