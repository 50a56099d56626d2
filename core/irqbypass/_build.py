"""Building a topology's endpoints: each entry's kind makes its endpoint.

A :class:`Builder` asks each kind's factory for the endpoint of an entry
(validation only, no device touched), on the eventfd of its token held from
the ledger's token table, and refuses what a factory returns that could not
work (another side, token or name: the plugin's bug, said so). Every entry is
tried, so a file's every error is told at once. Building opens nothing; the
transaction opens what was built.
"""

from __future__ import annotations

import logging
import sysconfig
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._config import Config, EndpointConfig
from ._endpoints import Consumer, Producer
from ._errors import ConfigError, IrqBypassError, PluginError, TopologyError
from ._eventfd import Eventfd
from ._kinds import EndpointSpec
from ._ledger import Ledger, Placed
from ._options import show_exception, show_value
from ._plugins import PluginHost
from ._signals import callout, deliver_deferred_signals, signal_safe
from ._tokens import TokenTable

_log = logging.getLogger("irqbypass.topology")


def log_traceback(exc: BaseException, whose: str) -> None:
    """Where in a plugin's code ``exc`` was raised, with its traceback, logged
    at INFO (``irqbypass -v``): the error line says what; this says where."""
    if _log.isEnabledFor(logging.INFO):
        _log.info("%s raised %s at %s:", whose, type(exc).__name__, _where(exc), exc_info=exc)


def _where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame outside the core and
    the standard library (the plugin's own line), else of the innermost."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    skip = (str(Path(__file__).parent), sysconfig.get_paths()["stdlib"])
    own = [f for f in frames if not f.filename.startswith(skip)] or frames
    return f"{own[-1].filename}:{own[-1].lineno} in {own[-1].name}"


def _wrong_endpoint(endpoint: object, spec: EndpointSpec) -> str | None:
    """What is wrong with what a factory returned (None: nothing): not an
    endpoint of the spec's side, another token (it would never pair, and run
    unpaired where ``check`` says it pairs), or another name."""
    expected = Producer if spec.side == "producer" else Consumer
    if not isinstance(endpoint, expected):
        return (
            f"returned {type(endpoint).__name__} {show_value(endpoint)}, "
            f"which is not an irqbypass.{expected.__name__}"
        )
    try:
        token, name = endpoint._token, endpoint.name
    except Exception as exc:
        return f"returned a {spec.side} whose token or name cannot be read ({show_exception(exc)})"
    if token is not spec.token:
        return (
            f"returned a {spec.side} whose token is {show_value(token)}, not spec.token (the "
            f"eventfd of token {spec.token_name!r}): it would never pair; pass token=spec.token"
        )
    if name != spec.name:
        return (
            f"returned a {spec.side} named {show_value(name)}, not spec.name {spec.name!r}; "
            "pass name=spec.name"
        )
    return None


def _discard(endpoint: object, table: TokenTable) -> None:
    """A refused endpoint is never opened; an eventfd of its own (made instead
    of taking ``spec.token``) is closed, not leaked; one of the token table's
    (another token's) is left alone."""
    try:
        own = getattr(endpoint, "_token", None)
        if isinstance(own, Eventfd) and all(own is not table.get(name) for name in table):
            own.close()
    except Exception:  # a hostile object: refusing it is what matters
        pass


def _located(
    exc: IrqBypassError, entry: EndpointConfig, source: Config
) -> tuple[int, IrqBypassError]:
    """(its line, the error) for a build error of ``entry``: an option error
    gets the line of its key where the file shows it."""
    if isinstance(exc, ConfigError) and exc.line is None and exc.key and exc.file == source.file:
        located = source.error(exc.key, exc.problem)
        located.__cause__ = exc
        exc = located
    line = getattr(exc, "line", None) or source.error(entry.key_path, "").line
    return line or 0, exc


@dataclass(frozen=True, slots=True, eq=False)
class Builder:
    """Makes endpoints from entries through the kinds of ``plugins``, each on
    its token's eventfd from ``ledger``'s token table (released there)."""

    plugins: PluginHost
    ledger: Ledger

    def build_file(self, file: Config) -> None:
        """Build every entry of ``file`` into the ledger (its optional pairs
        that cannot work here left out), or nothing: on failure what was built
        is released. Nothing if the ledger holds endpoints (built already)."""
        ledger = self.ledger
        if ledger.by_name:
            return
        skipped = self.unavailable(file.endpoints)
        ledger.seed(file, skipped)
        built: list[Placed] = []
        try:
            self.build(file.endpoints, file, skipped, built)
            ledger.insert(built)
        except BaseException:
            ledger.release(built)
            ledger.unseed()
            raise

    def build(
        self,
        entries: Iterable[EndpointConfig],
        source: Config,
        skipped: Mapping[str, str],
        built: list[Placed],
    ) -> None:
        """Build ``entries`` (consumers first: the sink is ready before the
        source can fire) into ``built``, each holding its token; entries of a
        ``skipped`` token are validated only. Every entry is tried, so that
        every error is told at once, in file order (a ConfigError whose
        ``errors`` lists them). On failure what ``built`` holds is the
        caller's to release."""
        errors: list[tuple[int, IrqBypassError]] = []
        entries = list(entries)
        for entry in [e for e in entries if e.side == "consumer"] + [
            e for e in entries if e.side == "producer"
        ]:
            try:
                if entry.token not in skipped:
                    self._build_into(entry, source, built)
                    deliver_deferred_signals()  # a Ctrl-C that waited for the token to be held
                elif not entry.optional or self._installed(entry):
                    # a left-out pair is still validated: building opens nothing
                    probe: list[Placed] = []
                    try:
                        self._build_into(entry, source, probe)
                    finally:
                        self.ledger.release(probe)
            except IrqBypassError as exc:
                errors.append(_located(exc, entry, source))
        if errors:
            errors.sort(key=lambda pair: pair[0])  # stable: file order
            raise ConfigError.combine([error for _, error in errors])

    @signal_safe
    def _build_into(self, entry: EndpointConfig, source: Config, built: list[Placed]) -> None:
        """Build one endpoint by its kind's factory, on its token's eventfd,
        and check what the factory returned; record it in ``built`` the moment
        it holds the token (signal-safe: the token cannot leak). The factory,
        and the check of what it returned, are the plugin's code: each its own
        ``callout``."""
        try:
            kind = self.plugins.kinds.get(entry.side, entry.kind)
        except PluginError as exc:
            raise source.error(f"{entry.key_path}.kind", str(exc)) from exc
        table = self.ledger.token_table
        token = table.acquire(entry.token)
        try:
            spec = EndpointSpec(
                name=entry.name,
                kind=entry.kind,
                side=entry.side,
                token=token,
                token_name=entry.token,
                irq=entry.irq,
                bypass=entry.bypass,
                options=entry.options,
                key_path=entry.key_path,
                file=source.file,
            )
            try:
                endpoint = callout(kind.factory, spec)
            except ConfigError:
                raise
            except IrqBypassError as exc:
                raise source.error(entry.key_path, str(exc)) from exc
            except Exception as exc:
                log_traceback(exc, f"the factory of kind {entry.kind!r} (plugin {kind.plugin})")
                raise TopologyError(
                    f"{source.file}: {entry.key_path} {entry.name!r}: the factory of kind "
                    f"{entry.kind!r} (plugin {kind.plugin}) raised {show_exception(exc)}; "
                    "this is a bug in that plugin"
                ) from exc
            # what it returned is the plugin's object too (a name, a repr): a call-out
            problem = callout(_wrong_endpoint, endpoint, spec)
            if problem is not None:
                _discard(endpoint, table)
                raise TopologyError(
                    f"{source.file}: {entry.key_path} {entry.name!r}: the factory of kind "
                    f"{entry.kind!r} (plugin {kind.plugin}) {problem}; this is a bug in that plugin"
                )
        except BaseException:
            table.release(entry.token)
            raise
        built.append(Placed(entry, endpoint, token=token, plugin=kind.plugin))

    def _installed(self, entry: EndpointConfig) -> bool:
        try:
            self.plugins.kinds.get(entry.side, entry.kind)
        except PluginError:
            return False
        return True

    def unavailable(self, entries: Iterable[EndpointConfig]) -> dict[str, str]:
        """Token -> reason, for every token with an optional endpoint whose kind
        is missing or cannot work here; its whole pair is left out."""
        skipped: dict[str, str] = {}
        for entry in entries:
            if not entry.optional or entry.token in skipped:
                continue
            try:
                kind = self.plugins.kinds.get(entry.side, entry.kind)
                reason = kind.unavailable_reason(entry.options)
            except PluginError as exc:
                reason = str(exc)
            if reason is not None:
                skipped[entry.token] = f"{entry.side} {entry.name!r} (kind {entry.kind}): {reason}"
        return skipped
