"""A topology: endpoints built from a configuration, applied all-or-nothing.

Building asks each kind's factory for its endpoint (validation only, no device
touched); the topology owns one :class:`~irqbypass.Eventfd` per token name and
hands the same one to both ends of a pair. Applying opens each endpoint, then
registers it with the manager (unless ``bypass = false``), consumers first, as
KVM assigns its irqfd before the device's vector is routed. If any step fails,
everything this apply did is undone in reverse (unregister, then close) and a
:class:`~irqbypass.TopologyError` names the endpoint, the step and the cause.
Teardown runs in reverse the same way. Every per-endpoint step is O(1) (10,000
pairs apply and tear down in seconds); both report progress to a callback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from .config import Config, EndpointConfig
from .endpoints import Consumer, Endpoint, Producer
from .errors import ConfigError, IrqBypassError, PluginError, TopologyError, with_notes
from .eventfd import Eventfd
from .kinds import EndpointSpec
from .manager import Manager
from .options import show_error, show_exception, show_value
from .plugins import PluginHost
from .signals import deliver_deferred_signals, signal_safe


@dataclass
class Placed:
    """One endpoint of the topology and how far it got."""

    config: EndpointConfig
    endpoint: Endpoint
    opened: bool = False
    registered: bool = False

    @property
    def label(self) -> str:
        return f"{self.config.side} {self.config.name!r} (kind {self.config.kind})"


@dataclass(frozen=True)
class PairStatus:
    """What a status table shows for one token."""

    token: str
    producer: Placed | None
    consumer: Placed | None
    paired: bool

    @property
    def fired(self) -> int | None:
        return _stat(self.producer, "fired")

    @property
    def delivered(self) -> int | None:
        return _stat(self.consumer, "delivered")

    @property
    def lost(self) -> int | None:
        if self.fired is None or self.delivered is None:
            return None
        return max(0, self.fired - self.delivered)


def _open(unit: list[Placed]) -> None:
    """Open one endpoint, or a group through its class's ``open_group``."""
    endpoints = [placed.endpoint for placed in unit]
    open_group = type(endpoints[0]).open_group
    if open_group is None:
        endpoints[0].open()
    else:
        open_group(endpoints)


def _close(unit: list[Placed]) -> None:
    """Close endpoints (last opened first), through ``close_group`` if defined."""
    endpoints = [placed.endpoint for placed in unit]
    close_group = type(endpoints[0]).close_group
    if close_group is None:
        for endpoint in endpoints:
            endpoint.close()
    else:
        close_group(endpoints)


def _interrupt(exc: BaseException) -> BaseException | None:
    """``exc`` if it is an interrupt (KeyboardInterrupt, SIGTERM's, SystemExit)."""
    return None if isinstance(exc, Exception) else exc


def _failure(exc: BaseException) -> str:
    if isinstance(exc, Exception):
        return show_error(exc)
    return f"interrupted by {type(exc).__name__} (the rest was still torn down)"


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


def _stat(placed: Placed | None, key: str) -> int | None:
    if placed is None:
        return None
    value = placed.endpoint.stats().get(key)
    return value if isinstance(value, int) else None


class Topology:
    """The endpoints of one configuration, applied to one manager."""

    def __init__(self, config: Config, plugins: PluginHost, manager: Manager | None = None) -> None:
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
        self.config = config
        self.plugins = plugins
        self.manager = manager if manager is not None else Manager(plugins)
        self.tokens: dict[str, Eventfd] = {}
        self.placed: list[Placed] = []
        #: (token, reason) of every optional pair left out
        self.skipped: list[tuple[str, str]] = []

    # -- building ----------------------------------------------------------

    def build(self, *, check_only: bool = False) -> None:
        """Create the token eventfds and the endpoints; open nothing.

        ``check_only`` (``irqbypass check``): every token gets one shared
        eventfd, never signalled, so a check costs one fd however large the file;
        such a topology is for looking at, not for :meth:`apply`."""
        if self.placed:
            return
        skipped = self._optional_unavailable()
        self.skipped = sorted(skipped.items())
        try:
            self._make_tokens(self.config.token_names(), shared=check_only)
            deliver_deferred_signals()  # a Ctrl-C that waited for the tokens to be held
            # consumers first: the sink is ready before the source can fire
            for entry in self.config.consumers + self.config.producers:
                if entry.token not in skipped:
                    self.placed.append(Placed(entry, self._build_one(entry)))
                elif not entry.optional or self._kind_installed(entry):
                    # a left-out pair is still validated: building opens nothing
                    self._build_one(entry)
            for name in skipped:
                token = self.tokens.pop(name)
                if all(t is not token for t in self.tokens.values()):
                    token.close()
        except BaseException:
            self._release()
            raise

    @signal_safe
    def _make_tokens(self, names: list[str], *, shared: bool) -> None:
        """One eventfd per token name (or one for all, ``shared``), held by
        ``self.tokens`` the moment it exists: signal-safe, so a Ctrl-C cannot
        land between an eventfd's creation and its owner (it would leak)."""
        if shared and names:
            one = Eventfd()
            self.tokens = dict.fromkeys(names, one)
            return
        self.tokens = {}
        for name in names:
            self.tokens[name] = Eventfd()

    def _kind_installed(self, entry: EndpointConfig) -> bool:
        try:
            self.plugins.kinds.get(entry.side, entry.kind)
        except PluginError:
            return False
        return True

    def _optional_unavailable(self) -> dict[str, str]:
        """Token -> reason, for every token with an optional endpoint whose kind
        is missing or cannot work here; its whole pair is left out."""
        skipped: dict[str, str] = {}
        for entry in self.config.endpoints:
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

    def _build_one(self, entry: EndpointConfig) -> Endpoint:
        try:
            kind = self.plugins.kinds.get(entry.side, entry.kind)
        except PluginError as exc:
            raise self.config.error(f"{entry.key_path}.kind", str(exc)) from exc
        spec = EndpointSpec(
            name=entry.name,
            kind=entry.kind,
            side=entry.side,
            token=self.tokens[entry.token],
            token_name=entry.token,
            irq=entry.irq,
            bypass=entry.bypass,
            options=entry.options,
            key_path=entry.key_path,
            file=self.config.file,
        )
        try:
            endpoint = kind.factory(spec)
        except ConfigError:
            raise
        except IrqBypassError as exc:
            raise self.config.error(entry.key_path, str(exc)) from exc
        except Exception as exc:
            raise TopologyError(
                f"{entry.key_path} {entry.name!r}: the factory of kind {entry.kind!r} "
                f"(plugin {kind.plugin}) raised {show_exception(exc)}; "
                "this is a bug in that plugin"
            ) from exc
        expected = Producer if entry.side == "producer" else Consumer
        if not isinstance(endpoint, expected):
            raise TopologyError(
                f"{entry.key_path} {entry.name!r}: kind {entry.kind!r} (plugin {kind.plugin}) "
                f"built {type(endpoint).__name__}, which is not an irqbypass.{expected.__name__}"
            )
        return endpoint

    # -- applying ----------------------------------------------------------

    def apply(self, progress: Callable[[int, int], object] | None = None) -> None:
        """Open and register every endpoint, or undo it all and raise.

        All or nothing under Ctrl-C too: each endpoint's state is recorded
        before a signal can land (the bookkeeping is signal-safe; the plugin's
        own ``open`` and the registration stay interruptible), and the undo,
        once begun, finishes (see :meth:`teardown`). ``progress(done, total)``
        is called after each endpoint (or group) is applied, in endpoints."""
        if any(placed.opened for placed in self.placed):
            raise TopologyError(
                f"{self.config.file} is already applied; call teardown() before applying again"
            )
        doing = ["build", repr(self.config.file)]  # the step under way, and on what
        try:
            self.build()
            done, total = 0, len(self.placed)
            for unit in self._units():
                self._apply_unit(unit, doing)
                deliver_deferred_signals()  # a Ctrl-C that waited for the bookkeeping
                done += len(unit)
                if progress is not None:
                    progress(done, total)
        except BaseException as exc:
            undo_errors, interrupt = self._finish()
            interrupt = _deliver(interrupt)
            step, what = doing
            message = f"applying {self.config.file}: {step} of {what} failed: {show_error(exc)}"
            if undo_errors:
                message += "; while undoing: " + "; ".join(undo_errors)
            if not isinstance(exc, Exception):
                with_notes(exc, undo_errors)
                raise
            if step == "build":  # nothing was opened: the error as build() raised it
                raise
            if interrupt is not None:  # Ctrl-C while undoing: it wins, the failure is told
                raise with_notes(interrupt, [message]) from exc
            raise TopologyError(message, errno=getattr(exc, "errno", None)) from exc

    @signal_safe
    def _apply_unit(self, unit: list[Placed], doing: list[str]) -> None:
        """Open one unit and register its endpoints, recording each step the
        moment it is done. The calls into plugins and the manager are on
        call-out lines (``call(...)``): a signal there interrupts them, as it
        should; anywhere else it waits for :func:`deliver_deferred_signals`."""
        doing[:] = ["open", unit[0].label if len(unit) == 1 else _group_label(unit)]
        call: Callable[..., object] = _open
        call(unit)
        for placed in unit:
            placed.opened = True
        for placed in unit:
            if placed.config.bypass:
                doing[:] = ["register", placed.label]
                endpoint = placed.endpoint
                call = getattr(self.manager, f"register_{placed.config.side}")
                try:
                    call(endpoint)
                finally:
                    # a CallbackError means "registered, but a start raised": undo must see it
                    placed.registered = self.manager.is_registered(endpoint)  # type: ignore[arg-type]

    def _units(self) -> list[list[Placed]]:
        """What is opened together: one endpoint, or every endpoint of one side
        whose class defines ``open_group``, at the place of the first of them."""
        units: list[list[Placed]] = []
        groups: dict[tuple[str, type], list[Placed]] = {}
        for placed in self.placed:
            cls = type(placed.endpoint)
            if cls.open_group is None:
                units.append([placed])
                continue
            key = (placed.config.side, cls)
            if key not in groups:
                groups[key] = []
                units.append(groups[key])
            groups[key].append(placed)
        return units

    def teardown(self, progress: Callable[[int], object] | None = None) -> None:
        """Unregister and close everything, in reverse. Every step is attempted
        and, once begun, teardown finishes: a Ctrl-C or SIGTERM during it waits
        (in the bookkeeping) or interrupts only the plugin call it lands in
        (which is reported by name, and the rest goes on). Then the first
        interrupt is raised, with any failure noted on it; otherwise a
        TopologyError says what failed. ``progress(left)`` is called after each
        endpoint (or group) with how many endpoints are left; an exception it
        raises is ignored (teardown finishes)."""
        errors, interrupt = self._finish(progress)
        interrupt = _deliver(interrupt)
        if interrupt is not None:
            raise with_notes(interrupt, errors and [self._teardown_message(errors)])
        if errors:
            raise TopologyError(self._teardown_message(errors))

    def _teardown_message(self, errors: list[str]) -> str:
        return f"tearing down {self.config.file}: " + "; ".join(errors)

    @signal_safe
    def _finish(
        self, progress: Callable[[int], object] | None = None
    ) -> tuple[list[str], BaseException | None]:
        """Undo every step and release the tokens; (what failed, the first
        interrupt). Signal-safe: nothing here is left half done."""
        errors: list[str] = []
        interrupt: BaseException | None = None
        call: Callable[..., object]
        left = len(self.placed)
        for unit in reversed(self._units()):
            for placed in reversed(unit):
                if placed.registered:
                    endpoint = placed.endpoint
                    call = getattr(self.manager, f"unregister_{placed.config.side}")
                    # an unregister that a Ctrl-C cut before the manager took it
                    # is tried again (twice at most): teardown, once begun, finishes
                    for _attempt in range(3):
                        try:
                            call(endpoint)
                        except BaseException as exc:  # Ctrl-C included: recorded, and on
                            interrupt = interrupt or _interrupt(exc)
                            if isinstance(exc, Exception):
                                errors.append(f"unregister of {placed.label}: {_failure(exc)}")
                        if not self.manager.is_registered(endpoint):  # type: ignore[arg-type]
                            break
                    else:
                        errors.append(f"unregister of {placed.label}: interrupted three times")
                    placed.registered = False
            opened = [placed for placed in reversed(unit) if placed.opened]
            if opened:
                for placed in opened:
                    placed.opened = False
                call = _close
                try:
                    call(opened)
                except BaseException as exc:
                    interrupt = interrupt or _interrupt(exc)
                    what = opened[0].label if len(opened) == 1 else _group_label(opened)
                    errors.append(f"close of {what}: {_failure(exc)}")
            left -= len(unit)
            if progress is not None:
                _tell(progress, left)
        self._release()
        return errors, interrupt

    def _release(self) -> None:
        self.placed = []
        for eventfd in self.tokens.values():
            eventfd.close()
        self.tokens = {}

    # -- looking -----------------------------------------------------------

    def status(self) -> list[PairStatus]:
        """One row per token: its producer, its consumer, whether they pair
        (one pass over the endpoints: O(N), not a scan per token)."""
        ends: dict[str, dict[str, Placed]] = {}
        for placed in self.placed:
            ends.setdefault(placed.config.token, {})[placed.config.side] = placed
        rows = []
        for token in self.config.token_names():
            if token not in self.tokens:
                continue
            pair = ends.get(token, {})
            producer, consumer = pair.get("producer"), pair.get("consumer")
            paired = (
                producer is not None
                and consumer is not None
                and isinstance(producer.endpoint, Producer)
                and producer.endpoint.consumer is consumer.endpoint
            )
            rows.append(PairStatus(token, producer, consumer, paired))
        return rows

    @property
    def finished(self) -> bool:
        """Every producer is done firing."""
        producers = [p.endpoint for p in self.placed if p.config.side == "producer"]
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
