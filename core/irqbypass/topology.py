"""A topology: endpoints built from a configuration, applied all-or-nothing,
changed while it runs.

Building asks each kind's factory for its endpoint (validation only, no device
touched); the topology takes the :class:`~irqbypass.Eventfd` of each token name
from its :class:`~irqbypass.TokenTable` (its own, or one shared with other
topologies on the same manager) and hands the same one to both ends of a pair.
Applying opens each endpoint, then registers it with the manager (unless
``bypass = false``), consumers first, as KVM assigns its irqfd before the
device's vector is routed. If any step fails, everything this apply did is
undone in reverse (unregister, then close) and a :class:`~irqbypass.TopologyError`
names the endpoint, the step and the cause. Teardown runs in reverse the same way.

A running topology changes in place: :meth:`Topology.attach` and
:meth:`Topology.detach` plug and unplug entries, :meth:`Topology.reconcile`
turns it into a new configuration. Each is all or nothing and leaves every other
pair alone (no callback runs on it). The counters of an entry add up across
every re-open (:attr:`Placed.totals`).
"""

from __future__ import annotations

import contextlib
import logging
import operator
import sysconfig
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from . import _plan
from ._plan import Changes as Changes
from ._plan import differences as differences
from .collector import without_collection
from .config import Config, EndpointConfig
from .endpoints import Consumer, Endpoint, Producer
from .errors import (
    CallbackError,
    ConfigError,
    ConnectError,
    IrqBypassError,
    PluginError,
    TopologyError,
    Veto,
    with_notes,
)
from .eventfd import Eventfd
from .kinds import EndpointSpec
from .manager import Manager
from .options import show_error, show_exception, show_value
from .plugins import PluginHost
from .signals import deliver_deferred_signals, signal_safe
from .status import PairStatus
from .tokens import CheckTokens, TokenTable

_log = logging.getLogger("irqbypass.topology")

#: The counters the core adds up across re-opens; every other stat is a
#: per-open figure (or a gauge, such as ``pending``) and is shown as it is.
COUNTERS = ("fired", "delivered", "coalesced", "reads", "direct", "eventfd")
#: How many removed entries' totals are kept, for a device plugged in again
#: under the same name (the oldest are forgotten first): bounded.
RETIRED_KEPT = 4096


@dataclass
class Totals:
    """What an entry's endpoints counted over every open, this one excepted."""

    opens: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def retire(self, stats: Mapping[str, object]) -> None:
        """Add what an endpoint that closed counted (its counters: ``fired``,
        ``delivered``, ``coalesced``, ``reads``, ``direct``, ``eventfd``)."""
        counters = self.counters
        for key in COUNTERS:
            value = stats.get(key)
            if value is None:  # most endpoints have two or three of them
                continue
            if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
                counters[key] = counters.get(key, 0) + value


@dataclass
class Placed:
    """One endpoint of the topology and how far it got."""

    #: the entry of the configuration this endpoint was built from
    config: EndpointConfig
    #: the endpoint its kind's factory built
    endpoint: Endpoint
    #: its ``open()`` succeeded and no ``close()`` ran since
    opened: bool = False
    #: it is registered with the topology's manager
    registered: bool = False
    #: the counts of this entry's earlier endpoints (re-opened, re-plugged)
    history: Totals = field(default_factory=Totals)
    #: the eventfd of its token, held from the token table until released
    token: Eventfd | None = None
    # internal: its token was given back to the token table (never twice)
    released: bool = False
    # internal: the order it was placed in, undone in the reverse order
    serial: int = 0
    #: the plugin whose kind built the endpoint
    plugin: str = ""
    #: what the plugin's ``stats()`` or ``finished`` raised, by call (the first
    #: time only): the run goes on and reports it once, instead of crashing
    faults: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``side 'name' (kind K)``: how messages name this endpoint."""
        return _plan.label(self.config)

    def stats(self) -> dict[str, int]:
        """The endpoint's stats, its counters (:data:`COUNTERS`) added up over
        every open of this entry; ``endpoint.stats()`` has this open's alone.
        A ``stats()`` that raises or returns no mapping counts ``{}`` (the
        fault is recorded in :attr:`faults`)."""
        try:
            current = {k: v for k, v in self.endpoint.stats().items() if isinstance(v, int)}
        except Exception as exc:
            self._fault("stats()", exc)
            return {}
        for key, earlier in self.history.counters.items():
            current[key] = current.get(key, 0) + earlier
        return current

    @property
    def finished(self) -> bool:
        """The endpoint's ``finished``; False when it raises (recorded in
        :attr:`faults`): a run then lasts its duration."""
        try:
            return bool(self.endpoint.finished)
        except Exception as exc:
            self._fault("finished", exc)
            return False

    def _fault(self, call: str, exc: Exception) -> None:
        if call not in self.faults:
            self.faults[call] = (
                f"{self.label}: its {call} raised {show_exception(exc)}; "
                f"this is a bug in plugin {self.plugin or '?'}"
            )

    @property
    def opens(self) -> int:
        """How many times this entry was opened (re-plugs and changes count)."""
        return self.history.opens + (1 if self.opened else 0)


def _open(unit: list[Placed]) -> None:
    """Open one endpoint, or a group through its class's ``open_group``."""
    first = unit[0].endpoint
    open_group = type(first).open_group
    if open_group is None:
        first.open()
    else:
        open_group([placed.endpoint for placed in unit])


#: the order endpoints were placed in (undone in reverse)
_SERIAL = operator.attrgetter("serial")


def _close(unit: list[Placed]) -> None:
    """Close endpoints (last opened first), through ``close_group`` if defined."""
    close_group = type(unit[0].endpoint).close_group
    if close_group is None:
        for placed in unit:
            placed.endpoint.close()
    else:
        close_group([placed.endpoint for placed in unit])


def _final_stats(placed: Placed) -> Mapping[str, object]:
    """What a just-closed endpoint counted; a stats() that raises counts nothing."""
    try:
        return placed.endpoint.stats()
    except Exception:
        return {}


def _interrupt(exc: BaseException) -> BaseException | None:
    """``exc`` if it is an interrupt (KeyboardInterrupt, SIGTERM's, SystemExit)."""
    return None if isinstance(exc, Exception) else exc


def _failure(exc: BaseException, plugin: str = "") -> str:
    if isinstance(exc, (CallbackError, ConnectError)):  # the topology tells the state itself
        return exc.details
    if isinstance(exc, Exception):
        return _plugin_error(exc, plugin)
    return f"interrupted by {type(exc).__name__} (the rest was still torn down)"


def _plugin_error(exc: BaseException, plugin: str) -> str:
    """What a plugin's ``open``/``close`` raised: an irqbypass error or an
    OSError as it says, anything else as the bug in that plugin it is."""
    if plugin and isinstance(exc, Exception):
        _log_traceback(exc, f"plugin {plugin}")
    if not plugin or isinstance(exc, (IrqBypassError, OSError)) or not isinstance(exc, Exception):
        return show_error(exc)
    return (
        f"{show_exception(exc)}; this is a bug in plugin {plugin} "
        "(it should raise an irqbypass.IrqBypassError)"
    )


def _log_traceback(exc: BaseException, whose: str) -> None:
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


def _deliver(interrupt: BaseException | None) -> BaseException | None:
    """Run the handlers of signals deferred by a safe section; the first
    interrupt, the one already caught or the one a handler raises now."""
    try:
        deliver_deferred_signals()
    except BaseException as exc:
        return interrupt or exc
    return interrupt


def _tell(progress: Callable[[int], object], left: int) -> None:
    """Report teardown progress; a failing callback never stops a teardown."""
    with contextlib.suppress(Exception):  # advisory output only
        progress(left)


def _group_label(unit: list[Placed]) -> str:
    first = unit[0].config
    names = ", ".join(repr(placed.config.name) for placed in unit)
    return f"the group of {len(unit)} {first.side}s of kind {first.kind} ({names})"


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


def _units(placed: Iterable[Placed]) -> list[list[Placed]]:
    """What is opened together: one endpoint, or every endpoint of one side
    whose class defines ``open_group``, at the place of the first of them."""
    units: list[list[Placed]] = []
    groups: dict[tuple[str, type], list[Placed]] = {}
    for one in placed:
        cls = type(one.endpoint)
        if cls.open_group is None:
            units.append([one])
            continue
        key = (one.config.side, cls)
        if key not in groups:
            groups[key] = []
            units.append(groups[key])
        groups[key].append(one)
    return units


def _consumers_first(entries: Iterable[EndpointConfig]) -> list[EndpointConfig]:
    """The sink is ready before the source can fire."""
    entries = list(entries)
    return [e for e in entries if e.side == "consumer"] + [
        e for e in entries if e.side == "producer"
    ]


class _Running:
    """A topology as its plans read it (:class:`irqbypass._plan.Running`)."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology

    @property
    def entries(self) -> Mapping[str, EndpointConfig]:
        return self._topology._entries

    @property
    def skipped(self) -> Sequence[tuple[str, str]]:
        return self._topology.skipped

    @property
    def file(self) -> Config | None:
        return self._topology.config if self._topology._as_file else None

    def ends(self, token: str) -> Sequence[EndpointConfig]:
        return [placed.config for placed in self._topology._by_token.get(token, {}).values()]


class Topology:
    """The endpoints of one configuration, applied to one manager.

    ``tokens``: a :class:`~irqbypass.TokenTable` shared with other topologies on
    the same ``manager`` (they then pair across files), or a mapping of token
    names to eventfds the VMM owns (an :class:`~irqbypass.Eventfd` or an fd),
    which entries naming them use; by default a table of its own.
    """

    def __init__(
        self,
        config: Config,
        plugins: PluginHost,
        manager: Manager | None = None,
        *,
        tokens: TokenTable | Mapping[str, Eventfd | int] | None = None,
    ) -> None:
        for value, cls, what in (
            (config, Config, "config (from irqbypass.load_config or parse_config)"),
            (plugins, PluginHost, "plugins (from irqbypass.load_plugins)"),
        ):
            if not isinstance(value, cls):
                raise TopologyError(
                    f"Topology: {what} must be an irqbypass.{cls.__name__}, "
                    f"not {type(value).__name__} {show_value(value)}"
                )
        if manager is not None and not isinstance(manager, Manager):
            raise TopologyError(
                f"Topology: manager must be an irqbypass.Manager or None, "
                f"not {type(manager).__name__} {show_value(manager)}"
            )
        if tokens is not None and not isinstance(tokens, TokenTable | Mapping):
            raise TopologyError(
                f"Topology: tokens must be an irqbypass.TokenTable, a mapping of token names "
                f"to eventfds, or None, not {type(tokens).__name__} {show_value(tokens)}"
            )
        self.config = config
        self.plugins = plugins
        self.manager = manager if manager is not None else Manager(plugins)
        self.token_table = (
            tokens if isinstance(tokens, TokenTable) else TokenTable(dict(tokens or {}))
        )
        #: token name -> eventfd, for the tokens this topology's endpoints use
        self.tokens: dict[str, Eventfd] = {}
        #: (token, reason) of every optional pair left out
        self.skipped: list[tuple[str, str]] = []
        #: token -> reason, for each pair a plugin's Veto(unpaired=True) left unpaired
        self._vetoed: dict[str, str] = {}
        #: entry name -> its endpoint, in the order they were placed
        self._placed: dict[str, Placed] = {}
        #: token name -> side -> the endpoint there (in the order of first use)
        self._by_token: dict[str, dict[str, Placed]] = {}
        #: every entry of the running configuration, skipped ones included
        self._entries: dict[str, EndpointConfig] = {}
        #: (side, name) -> what its earlier endpoints counted
        self._history: dict[tuple[str, str], Totals] = {}
        self._checking = False
        self._serial = 0
        #: the entries are exactly ``self.config``'s (built, and no attach,
        #: detach or change since): a reload may compare them group by group
        self._as_file = False

    @property
    def placed(self) -> list[Placed]:
        """Every endpoint of the topology, in the order it was placed."""
        return list(self._placed.values())

    @property
    def vetoed(self) -> list[tuple[str, str]]:
        """(token, reason) of every pair a hook's ``Veto(reason, unpaired=True)``
        left unpaired: both ends open, the interrupts on the eventfd path."""
        return list(self._vetoed.items())

    @property
    def applied(self) -> bool:
        """Some endpoint is open: :meth:`apply` ran and :meth:`teardown` has not finished."""
        return any(placed.opened for placed in self._placed.values())

    # -- building ----------------------------------------------------------

    def build(self, *, check_only: bool = False) -> None:
        """Take the token eventfds and create the endpoints; open nothing.

        ``check_only`` (``irqbypass check``): every token gets one shared
        eventfd, never signalled, so a check costs one fd however large the file;
        such a topology is for looking at, not for :meth:`apply`."""
        if self._placed:
            return
        if check_only:
            self.token_table, self._checking = CheckTokens(), True
        skipped = self._optional_unavailable(self.config.endpoints)
        self.skipped = sorted(skipped.items())
        # tokens listed in the file's order of first use, for status()
        for token in self.config.token_names():
            if token not in skipped:
                self._by_token[token] = {}
        built: list[Placed] = []
        try:
            self._build(self.config.endpoints, self.config, skipped, built)
            for placed in built:
                self._insert(placed)
        except BaseException:
            self._release(built)
            self._by_token.clear()
            raise
        self._entries = dict(self.config.by_name)
        self._as_file = True

    def _build(
        self,
        entries: Iterable[EndpointConfig],
        source: Config,
        skipped: Mapping[str, str],
        built: list[Placed],
    ) -> None:
        """Build ``entries`` (consumers first) into ``built``, each holding its
        token; entries of a ``skipped`` token are validated only. Every entry
        is tried, so that every error is told at once, in file order (a
        ConfigError whose ``errors`` lists them). On failure what ``built``
        holds is the caller's to release."""
        errors: list[tuple[int, IrqBypassError]] = []
        for entry in _consumers_first(entries):
            try:
                if entry.token not in skipped:
                    self._build_into(entry, source, built)
                    deliver_deferred_signals()  # a Ctrl-C that waited for the token to be held
                elif not entry.optional or self._kind_installed(entry):
                    # a left-out pair is still validated: building opens nothing
                    probe: list[Placed] = []
                    try:
                        self._build_into(entry, source, probe)
                    finally:
                        self._release(probe)
            except IrqBypassError as exc:
                errors.append(_located(exc, entry, source))
        if errors:
            errors.sort(key=lambda pair: pair[0])  # stable: file order
            raise ConfigError.combine([error for _, error in errors])

    @signal_safe
    def _build_into(self, entry: EndpointConfig, source: Config, built: list[Placed]) -> None:
        """Build one endpoint on its token's eventfd, recorded in ``built`` the
        moment it holds the token (signal-safe: the token cannot leak)."""
        token = self.token_table.acquire(entry.token)
        try:
            call: Callable[..., tuple[Endpoint, str]] = self._make
            endpoint, plugin = call(entry, source, token)
        except BaseException:
            self.token_table.release(entry.token)
            raise
        built.append(Placed(entry, endpoint, token=token, plugin=plugin))

    def _kind_installed(self, entry: EndpointConfig) -> bool:
        try:
            self.plugins.kinds.get(entry.side, entry.kind)
        except PluginError:
            return False
        return True

    def _optional_unavailable(self, entries: Iterable[EndpointConfig]) -> dict[str, str]:
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

    def _make(self, entry: EndpointConfig, source: Config, token: Eventfd) -> tuple[Endpoint, str]:
        """The entry's endpoint, checked, and the plugin whose kind built it."""
        try:
            kind = self.plugins.kinds.get(entry.side, entry.kind)
        except PluginError as exc:
            raise source.error(f"{entry.key_path}.kind", str(exc)) from exc
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
            endpoint = kind.factory(spec)
        except ConfigError:
            raise
        except IrqBypassError as exc:
            raise source.error(entry.key_path, str(exc)) from exc
        except Exception as exc:
            _log_traceback(exc, f"the factory of kind {entry.kind!r} (plugin {kind.plugin})")
            raise TopologyError(
                f"{source.file}: {entry.key_path} {entry.name!r}: the factory of kind "
                f"{entry.kind!r} (plugin {kind.plugin}) raised {show_exception(exc)}; "
                "this is a bug in that plugin"
            ) from exc
        problem = _wrong_endpoint(endpoint, spec)
        if problem is not None:
            _discard(endpoint, self.token_table)
            raise TopologyError(
                f"{source.file}: {entry.key_path} {entry.name!r}: the factory of kind "
                f"{entry.kind!r} (plugin {kind.plugin}) {problem}; this is a bug in that plugin"
            )
        return endpoint, kind.plugin

    @signal_safe
    def _insert(self, placed: Placed) -> None:
        """Make a built endpoint part of the topology (its indexes)."""
        entry = placed.config
        earlier = self._history.pop((entry.side, entry.name), None)
        if earlier is not None:  # the same name plugged again: its counts carry on
            placed.history.opens += earlier.opens
            for key, value in earlier.counters.items():
                placed.history.counters[key] = placed.history.counters.get(key, 0) + value
        self._serial += 1
        placed.serial = self._serial
        self._placed[entry.name] = placed
        self._by_token.setdefault(entry.token, {})[entry.side] = placed
        if placed.token is not None:
            self.tokens[entry.token] = placed.token

    @signal_safe
    def _release(self, built: Iterable[Placed]) -> None:
        """Forget endpoints that are closed (or never opened): out of the
        indexes, their tokens released, their counts kept for a re-plug."""
        for placed in built:
            entry = placed.config
            if self._placed.get(entry.name) is placed:
                del self._placed[entry.name]
                self._vetoed.pop(entry.token, None)  # a pair again, or no pair at all
                ends = self._by_token.get(entry.token, {})
                if ends.get(entry.side) is placed:
                    del ends[entry.side]
                if not ends:
                    self._by_token.pop(entry.token, None)
                    self.tokens.pop(entry.token, None)
            if not placed.released:
                placed.released = True  # never twice
                self.token_table.release(entry.token)
                self._retire(entry, placed.history)

    def _retire(self, entry: EndpointConfig, history: Totals) -> None:
        if not history.opens and not history.counters:
            return
        key = (entry.side, entry.name)
        self._history.pop(key, None)
        self._history[key] = history
        while len(self._history) > RETIRED_KEPT:
            del self._history[next(iter(self._history))]

    # -- applying ----------------------------------------------------------

    def apply(self, progress: Callable[[int, int], object] | None = None) -> None:
        """Open and register every endpoint, or undo it all and raise.

        All or nothing under Ctrl-C too: each endpoint's state is recorded
        before a signal can land (the bookkeeping is signal-safe; the plugin's
        own ``open`` and the registration stay interruptible), and the undo,
        once begun, finishes (see :meth:`teardown`). ``progress(done, total)``
        is called after each endpoint (or group) is applied, in endpoints.

        The cyclic garbage collector is paused meanwhile, and put back as the
        caller had it on every path: the objects made are all long-lived (a
        full collection would walk them all and free nothing)."""
        without_collection(self._apply, progress)

    def _apply(self, progress: Callable[[int, int], object] | None) -> None:
        if self._checking:
            raise TopologyError(
                f"{self.config.file} was built with check_only; build a new Topology to apply"
            )
        if self.applied:
            raise TopologyError(
                f"{self.config.file} is already applied; call teardown() before applying again"
            )
        # the step under way, on what, and the plugin whose code runs it ("": the core's)
        doing = ["build", repr(self.config.file), ""]
        try:
            self.build()
            self._open_all(self.placed, doing, progress)
        except BaseException as exc:
            undo_errors, interrupt = self._finish()
            action = f"applying {self.config.file}"
            undone = "nothing was applied: every endpoint opened was closed again"
            raise self._failed(action, doing, exc, undo_errors, interrupt, undone)  # noqa: B904 (its cause is set)

    def _open_all(
        self,
        placed: Sequence[Placed],
        doing: list[str],
        progress: Callable[[int, int], object] | None = None,
    ) -> None:
        done, total = 0, len(placed)
        for unit in _units(placed):
            self._apply_unit(unit, doing)
            deliver_deferred_signals()  # a Ctrl-C that waited for the bookkeeping
            done += len(unit)
            if progress is not None:
                progress(done, total)

    @staticmethod
    def _failed(
        action: str,
        doing: list[str],
        exc: BaseException,
        undo_errors: list[str],
        interrupt: BaseException | None,
        undone: str = "",
    ) -> BaseException:
        """The exception to raise for a failed apply, attach or change, once
        its undo is done: the error as a build raised it, an interrupt (noted
        with the failure), or a TopologyError naming the step. ``undone``: the
        state a complete undo left, said when nothing failed in it."""
        interrupt = _deliver(interrupt)
        step, what, plugin = doing
        reason = _failure(exc, plugin) if isinstance(exc, Exception) else show_error(exc)
        message = f"{action}: {step} of {what} failed: {reason}"
        if undone and not undo_errors:
            message += f"; {undone}"
        if undo_errors:
            # an undo that failed the same way (a stop() that raises at every
            # disconnect too) is told as such, not in the same words again
            undo = [e.replace(f": {reason}", ": the same error again") for e in undo_errors]
            message += "; while undoing: " + "; ".join(undo)
        if not isinstance(exc, Exception):
            return with_notes(exc, undo_errors)
        if step == "build":  # nothing was opened: the error as the build raised it
            return exc
        if interrupt is not None:  # Ctrl-C while undoing: it wins, the failure is told
            error = with_notes(interrupt, [message])
        else:
            error = TopologyError(message, errno=getattr(exc, "errno", None))
        error.__cause__ = exc
        return error

    @signal_safe
    def _apply_unit(self, unit: list[Placed], doing: list[str]) -> None:
        """Open one unit and register its endpoints, recording each step the
        moment it is done. The calls into plugins and the manager are on
        call-out lines (``call(...)``): a signal there interrupts them, as it
        should; anywhere else it waits for :func:`deliver_deferred_signals`."""
        doing[:] = ["open", unit[0].label if len(unit) == 1 else _group_label(unit), unit[0].plugin]
        call: Callable[..., object] = _open
        call(unit)
        for placed in unit:
            placed.opened = True
        for placed in unit:
            if placed.config.bypass:
                doing[:] = ["register", placed.label, ""]
                endpoint = placed.endpoint
                call = getattr(self.manager, f"register_{placed.config.side}")
                registered = False
                try:
                    call(endpoint)
                    registered = True  # it returned: registered (no lookup needed)
                except ConnectError as exc:
                    veto = exc.__cause__
                    if not (isinstance(veto, Veto) and veto.unpaired):
                        raise
                    # the plugin leaves this pair unpaired: open, on the eventfd path
                    self._vetoed[placed.config.token] = show_error(veto)
                finally:
                    # a CallbackError means "registered, but a start raised": undo must see it
                    placed.registered = registered or self.manager.is_registered(endpoint)  # type: ignore[arg-type]

    def teardown(self, progress: Callable[[int], object] | None = None) -> None:
        """Unregister and close everything, in reverse. Every step is attempted
        and, once begun, teardown finishes: a Ctrl-C or SIGTERM during it waits
        (in the bookkeeping) or interrupts only the plugin call it lands in
        (which is reported by name, and the rest goes on). Then the first
        interrupt is raised, with any failure noted on it; otherwise a
        TopologyError says what failed. ``progress(left)`` is called after each
        endpoint (or group) with how many endpoints are left; an exception it
        raises is ignored (teardown finishes). The cyclic garbage collector is
        paused meanwhile, as in :meth:`apply`."""
        errors, interrupt = without_collection(self._finish, progress)
        interrupt = _deliver(interrupt)
        if interrupt is not None:
            raise with_notes(interrupt, errors and [self._teardown_message(errors)])
        if errors:
            raise TopologyError(self._teardown_message(errors))

    def _teardown_message(self, errors: list[str]) -> str:
        return f"tearing down {self.config.file}: " + "; ".join(errors)

    def _finish(
        self, progress: Callable[[int], object] | None = None
    ) -> tuple[list[str], BaseException | None]:
        """Undo every step and release the tokens; (what failed, the first
        interrupt)."""
        result = self._undo(self.placed, progress)
        self._by_token.clear()
        self._entries.clear()
        self._as_file = False
        return result

    @signal_safe
    def _undo(
        self, placed: Sequence[Placed], progress: Callable[[int], object] | None = None
    ) -> tuple[list[str], BaseException | None]:
        """Unregister and close ``placed`` (last first), then release them; (what
        failed, the first interrupt). Signal-safe: nothing here is left half
        done, and every step is attempted."""
        errors: list[str] = []
        interrupt: BaseException | None = None
        call: Callable[..., object]
        placed = sorted(placed, key=_SERIAL)
        left = len(placed)
        unregister: dict[str, Callable[..., object]] = {
            "producer": self.manager.unregister_producer,
            "consumer": self.manager.unregister_consumer,
        }
        for unit in reversed(_units(placed)):
            for one in reversed(unit):
                if one.registered:
                    endpoint = one.endpoint
                    call = unregister[one.config.side]
                    # an unregister that a Ctrl-C cut before the manager took it
                    # is tried again (twice at most): an undo, once begun, finishes
                    for _attempt in range(3):
                        try:
                            call(endpoint)
                        except BaseException as exc:  # Ctrl-C included: recorded, and on
                            interrupt = interrupt or _interrupt(exc)
                            if isinstance(exc, Exception):
                                errors.append(f"unregister of {one.label}: {_failure(exc)}")
                        else:
                            break  # it returned: no longer registered (no lookup needed)
                        if not self.manager.is_registered(endpoint):  # type: ignore[arg-type]
                            break
                    else:
                        errors.append(f"unregister of {one.label}: interrupted three times")
                    one.registered = False
            opened = [one for one in reversed(unit) if one.opened]
            if opened:
                for one in opened:
                    one.opened = False
                    one.history.opens += 1
                call = _close
                try:
                    call(opened)
                except BaseException as exc:
                    interrupt = interrupt or _interrupt(exc)
                    what = opened[0].label if len(opened) == 1 else _group_label(opened)
                    errors.append(f"close of {what}: {_failure(exc, opened[0].plugin)}")
                for one in opened:
                    one.history.retire(_final_stats(one))
            left -= len(unit)
            if progress is not None:
                _tell(progress, left)
        self._release(placed)
        return errors, interrupt

    # -- changing a running topology -----------------------------------------

    def attach(self, entries: Config | Sequence[EndpointConfig]) -> None:
        """Open, register and pair new entries (a hot-plugged device), all or
        nothing: on failure every step of this attach is undone and a
        TopologyError (or the ConfigError of the build) names the entry, the
        step and why. Every other pair is left alone; an entry whose token an
        endpoint of the topology (or of one sharing its token table) holds
        pairs with it.

        ``entries``: a :class:`~irqbypass.Config` (a TOML fragment, parsed with
        ``parse_config``: its errors name the fragment), or EndpointConfig
        objects."""
        source = _plan.fragment(entries, "attach")
        new = list(source.endpoints)
        _plan.check_new(self._running(), new, source)

        def commit() -> None:
            for entry in new:
                self._entries[entry.name] = entry
            self._as_file = False

        self._change(source, new, [], f"attaching to {self.config.file}", commit=commit)
        deliver_deferred_signals()  # a Ctrl-C that waited for the bookkeeping

    def detach(self, names: Iterable[str]) -> None:
        """Unregister and close the named entries (a hot-unplug), last placed
        first; every other pair is left alone (the partner of a detached end
        is unpaired and keeps running). Every step is attempted, as in
        :meth:`teardown`, and then what failed is raised. An unknown name is
        refused before anything is done."""
        if isinstance(names, str):
            names = [names]
        wanted = list(dict.fromkeys(names))
        action = f"detaching from {self.config.file}"
        _plan.check_detach(self._running(), wanted, action)
        errors, interrupt = self._detach(wanted)
        interrupt = _deliver(interrupt)
        message = f"{action}: " + "; ".join(errors)
        if interrupt is not None:
            raise with_notes(interrupt, [message] if errors else [])
        if errors:
            raise TopologyError(message)

    @signal_safe
    def _detach(self, wanted: list[str]) -> tuple[list[str], BaseException | None]:
        """Undo the named entries and forget them (signal-safe: both or neither)."""
        errors, interrupt = self._undo([self._placed[n] for n in wanted if n in self._placed])
        self._as_file = False
        for name in wanted:
            entry = self._entries.pop(name)
            if any(t == entry.token for t, _ in self.skipped) and not any(
                e.token == entry.token for e in self._entries.values()
            ):
                self.skipped = [(t, r) for t, r in self.skipped if t != entry.token]
        return errors, interrupt

    def reconcile(self, new_config: Config) -> Changes:
        """Turn the running topology into ``new_config``: entries added, removed
        or changed (kind, options, token, irq, bypass or optional differ) are
        detached and attached; every other pair is left alone (not stopped, no
        interrupt lost). All or nothing: if a step fails, what this call did
        is undone, the entries it removed are built and opened again, and the
        error names the entry, the step and why.

        The work is O(changes), and so is the comparison, nearly: the new
        configuration's group digests are compared with the running one's
        (the entries are kept in groups, each with a digest: O(log N)
        comparisons of bytes per change), then the entries of the groups that differ. After an
        :meth:`attach`, :meth:`detach` or :meth:`change` the running entries
        are no file's, and every entry is compared (O(N), one comparison of
        fingerprints each), once."""
        if not isinstance(new_config, Config):
            raise TopologyError(
                f"reconcile: new_config must be an irqbypass.Config (from load_config or "
                f"parse_config), not {type(new_config).__name__} {show_value(new_config)}"
            )
        if not self.applied and self._placed:
            raise TopologyError(f"{self.config.file} is built but not applied; apply() it first")
        action = f"reloading {self.config.file} as {new_config.file}"
        plan = _plan.plan_reload(self._running(), new_config, action)
        self._carry_out(plan)
        return plan.changes

    def change(
        self,
        *,
        add: Config | Sequence[EndpointConfig] = (),
        remove: Iterable[str] = (),
        replace: Config | Sequence[EndpointConfig] = (),
    ) -> Changes:
        """Add, remove and replace entries in one step, all or nothing, as
        :meth:`reconcile` applies a new file, at a cost of O(changes) whatever
        the topology's size (nothing else is looked at): the API for a VMM that
        knows what it changes.

        ``add``: new entries (a :class:`~irqbypass.Config` of a TOML fragment,
        or EndpointConfig objects); ``remove``: names of running entries;
        ``replace``: new definitions of running entries, by name (one that
        differs in nothing is no change). Every other pair is left alone; a
        failure leaves the topology as it was. Everything is checked before
        anything is done: an unknown name, a name given twice, an added name
        the topology has, a token and side another entry holds."""
        if isinstance(remove, str):
            remove = [remove]
        removing = list(remove) if isinstance(remove, Iterable) else None
        if removing is None or not all(isinstance(n, str) for n in removing):
            raise TopologyError(f"change: remove must be entry names, not {show_value(remove)}")
        adding = _plan.fragment(add, "change: add")
        replacing = _plan.fragment(replace, "change: replace")
        action = f"changing {self.config.file}"
        plan = _plan.plan_change(self._running(), adding, removing, replacing, action)
        self._carry_out(plan)
        return plan.changes

    def _carry_out(self, plan: _plan.Plan) -> None:
        """Do ``plan``, all or nothing, in O(changes): only the pairs on the
        tokens it touches are closed and opened."""
        if not plan.touched:
            self._adopt(plan.updates, None, plan.config)
            deliver_deferred_signals()
            return
        moves = _plan.moves(plan, self._running(), self._optional_unavailable)
        self._change(
            plan.source,
            list(moves.coming),
            [self._placed[name] for name in moves.leaving],
            plan.action,
            skipped=moves.skipped,
            commit=lambda: self._adopt(plan.updates, list(moves.now_skipped), plan.config),
        )
        deliver_deferred_signals()  # a Ctrl-C that waited for the bookkeeping

    def _running(self) -> _Running:
        return _Running(self)

    @signal_safe
    def _adopt(
        self,
        updates: Mapping[str, EndpointConfig | None],
        skipped: list[tuple[str, str]] | None,
        config: Config | None,
    ) -> None:
        """Make the changed entries the running ones, in place, and ``config``
        (if any) the running file (signal-safe: all of it)."""
        for name, entry in updates.items():
            if entry is None:
                self._entries.pop(name, None)
                continue
            self._entries[name] = entry
            placed = self._placed.get(name)
            if placed is not None:  # moved in the file: its messages follow it
                placed.config = entry
        if config is not None:
            self.config = config
            self._as_file = True
        elif updates:
            self._as_file = False
        if skipped is not None:
            self.skipped = skipped

    @signal_safe
    def _change(
        self,
        source: Config,
        added: list[EndpointConfig],
        removed: list[Placed],
        action: str,
        *,
        commit: Callable[[], None],
        skipped: Mapping[str, str] | None = None,
    ) -> None:
        """Remove ``removed`` and add ``added``, all or nothing, then ``commit()``
        the bookkeeping. Signal-safe: a signal waits for the delivery points
        between steps (after each build, after each unit opened), where it
        is raised and rolls the change back; the plugins' code stays
        interruptible, as in :meth:`apply`.

        Added entries that free nothing (a new name on a token nothing leaves)
        are opened first, so their failure touches nothing else; then the
        removed ones are closed and the rest opened. On a failure the new ones
        are closed and the removed ones built again from their entries (their
        counts carry on)."""
        if skipped is None:
            skipped = self._optional_unavailable(added)
        built: list[Placed] = []
        doing = ["build", repr(source.file), ""]
        leaving_names = {p.config.name for p in removed}
        leaving_tokens = {p.config.token for p in removed}
        try:
            self._build(added, source, skipped, built)
            first = [
                p
                for p in built
                if p.config.name not in leaving_names and p.config.token not in leaving_tokens
            ]
            for placed in first:
                self._insert(placed)
            self._open_all(first, doing)
        except BaseException as exc:
            errors, interrupt = self._undo(built)
            raise self._failed(action, doing, exc, errors, interrupt)  # noqa: B904
        if not removed and len(first) == len(built):
            commit()
            return
        old = [p.config for p in removed]
        errors, interrupt = self._undo(removed)
        try:
            if interrupt is not None:
                raise interrupt
            opened = {id(p) for p in first}  # by identity: `in first` was O(N^2) in __eq__
            second = [p for p in built if id(p) not in opened]
            for placed in second:
                self._insert(placed)
            self._open_all(second, doing)
        except BaseException as exc:
            errors += self._restore(old, built)
            raise self._failed(action, doing, exc, errors, None)  # noqa: B904
        commit()
        if errors:
            raise TopologyError(
                f"{action}: the change is done, but removing the old endpoints reported: "
                + "; ".join(errors)
            )

    def _restore(self, old: list[EndpointConfig], built: list[Placed]) -> list[str]:
        """After a failed change: close what it opened, open what it closed.
        What could not be restored is returned (and is then missing)."""
        errors, _ = self._undo(built)
        again: list[Placed] = []
        doing = ["build", "the removed entries", ""]
        try:
            self._build(old, self.config, {}, again)
            for placed in again:
                self._insert(placed)
            self._open_all(again, doing)
        except BaseException as exc:
            more, _ = self._undo(again)
            lost = ", ".join(repr(e.name) for e in old)
            errors += [f"restoring {lost} failed at {doing[0]} of {doing[1]}: {show_error(exc)}"]
            errors += more
            for entry in old:
                self._entries.pop(entry.name, None)
            self._as_file = False  # they are gone: the file no longer says what runs
        return errors

    # -- looking -----------------------------------------------------------

    def status(self, *, settled: bool | None = None) -> list[PairStatus]:
        """One row per token: its producer, its consumer, whether they pair, and
        its counts (read once, when first asked). ``settled`` says every
        producer is done, so a merging consumer's shortfall is coalesced, not in
        flight; None asks :attr:`finished` (once for all rows); a reading taken
        while the topology runs passes False."""
        if settled is None:
            settled = self.finished
        rows = []
        for token, ends in self._by_token.items():
            producer, consumer = ends.get("producer"), ends.get("consumer")
            paired = (
                producer is not None
                and consumer is not None
                and isinstance(producer.endpoint, Producer)
                and producer.endpoint.consumer is consumer.endpoint
            )
            rows.append(
                PairStatus(token, producer, consumer, paired, settled, self.tokens.get(token))
            )
        return rows

    def entry(self, name: str) -> Placed | None:
        """The endpoint of the entry ``name``, or None."""
        return self._placed.get(name)

    @property
    def finished(self) -> bool:
        """Every producer is done firing."""
        producers = [p for p in self._placed.values() if p.config.side == "producer"]
        return bool(producers) and all(p.finished for p in producers)

    def __enter__(self) -> Topology:
        self.apply()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()
