"""The rendezvous: pairs producers and consumers by token.

This follows the kernel's ``virt/lib/irqbypass.c`` rule by rule (see
``docs/semantics.md``): one producer and one consumer per token, found in O(1)
through two dicts (the kernel's two xarrays); registering inserts the endpoint
first and erases it again if connecting fails, as the kernel does; connecting
runs stop, stop, add, add (rolling back the producer's half if the consumer's
add fails), start, start; disconnecting runs stop, stop, del, del, start, start.
One lock serializes every change and is held while callbacks run, as the
kernel's mutex is.

Where the kernel stays silent, this manager reports: an ``add`` failure is a
:class:`~irqbypass.exceptions.ConnectError` raised from the callback's exception; a
``stop``/``start``/``del`` failure cannot change the outcome (those callbacks
cannot fail in the kernel, and the sequence runs on exactly as the kernel's
does), so the operation completes and then a :class:`~irqbypass.exceptions.CallbackError`
says what happened.

Signals: the bookkeeping runs in :func:`~irqbypass.signalsafe.signal_safe`
sections, so a Ctrl-C landing in the manager's own code waits until the state is
consistent; one landing in a callback interrupts that callback (a hang stays
escapable), the sequence completes, and the ``KeyboardInterrupt`` is re-raised
with a note naming the callback.

Every callback goes through a pluggy lifecycle hook when some plugin implements
that hook; otherwise the endpoint's method is called directly (the fast path).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Hashable, Sequence
from threading import RLock
from typing import Any

from ._endpoints import NO_TOKEN, REQUIRED_CONSUMER_CALLBACKS, Consumer, Producer
from ._errors import (
    AlreadyRegisteredError,
    CallbackError,
    ConnectError,
    InvalidEndpointError,
    IrqBypassError,
    ReentrantCallError,
    TokenInUseError,
    with_notes,
)
from ._options import show_value
from ._plugins import CORE_PLUGIN, PluginHost
from ._signals import (
    _DEFERRED,  # read on every call: a dict's truth costs nothing
    calling_out,
    callout,
    deliver_deferred_signals,
    hold,
    hold_interrupt_guard,
    release_interrupt_guard,
    signal_safe,
)

#: callback method -> the lifecycle hook step it goes through
STEPS: dict[str, str] = {
    "add_consumer": "add",
    "add_producer": "add",
    "del_consumer": "del",
    "del_producer": "del",
    "stop": "stop",
    "start": "start",
    "pair": "pair",  # not a callback: the irqbypass_pair hook, before them
}

#: the callbacks whose failure fails a connect (the others' are reported after it)
_ADDS = ("add_consumer", "add_producer")
#: (endpoint, callback name, what it raised)
_Failure = tuple[Any, str, BaseException]
_Failures = tuple[_Failure, ...]


class Manager:
    """The IRQ bypass manager: register endpoints, and matching tokens pair up.

    ``plugins`` is the :class:`~irqbypass.PluginHost` whose lifecycle hooks wrap
    the callbacks; by default a host with no plugin at all (use
    :func:`~irqbypass.load_plugins` for the installed ones).

    Created in the main thread while SIGINT has Python's default handler, it
    puts :func:`~irqbypass.signalsafe.guard_signals`' guard in front of that handler, so
    that a Ctrl-C waits for the manager's bookkeeping; once every manager that
    did so is gone (garbage), Python's handler is back. ``guard_sigint=False``:
    the manager never touches a signal handler (the program guards its own
    handlers with :func:`~irqbypass.signalsafe.guard_signals`, or accepts that a Ctrl-C
    landing in the bookkeeping can leave the manager inconsistent).
    """

    def __init__(self, plugins: PluginHost | None = None, *, guard_sigint: bool = True) -> None:
        if not isinstance(guard_sigint, bool):
            raise IrqBypassError(f"guard_sigint={show_value(guard_sigint)} is not True or False")
        if plugins is not None and not isinstance(plugins, PluginHost):
            raise IrqBypassError(
                f"Manager: plugins must be an irqbypass.PluginHost (irqbypass.load_plugins() "
                f"makes one) or None, not {type(plugins).__name__} {show_value(plugins)}"
            )
        self.plugins = plugins if plugins is not None else PluginHost()
        # token -> Producer and token -> Consumer; typed Any so that one body
        # per direction can work on either side's pair of indexes
        self._producers: dict[Hashable, Any] = {}
        self._consumers: dict[Hashable, Any] = {}
        # Reentrant only so that a callback calling back in is told so: the
        # thread inside finds _running set and raises ReentrantCallError.
        self._lock = RLock()
        self._running = False
        if guard_sigint:
            # given back when this manager is garbage: no handler outlives the managers
            weakref.finalize(self, release_interrupt_guard, hold_interrupt_guard())

    # -- registering -------------------------------------------------------
    #
    # The public methods check what they are given, call the signal-safe
    # section that does the work (one per direction, for both sides), and
    # deliver any signal that waited in it. The section takes the lock: a free
    # one at once, a contended one through hold() (a Ctrl-C ends the wait).

    def register_producer(self, producer: Producer) -> None:
        """Register ``producer``; if a consumer holds its token, connect them.

        Raises InvalidEndpointError (EINVAL), TokenInUseError or
        AlreadyRegisteredError (EBUSY), ConnectError (not registered), or
        CallbackError (registered and paired, but a stop/start raised).
        """
        if not isinstance(producer, Producer):
            raise _not_an_endpoint(producer, "producer")
        try:
            self._register(producer, True, self._producers, self._consumers)
        finally:
            if _DEFERRED:
                deliver_deferred_signals()

    def register_consumer(self, consumer: Consumer) -> None:
        """Register ``consumer``; if a producer holds its token, connect them.

        The same errors as :meth:`register_producer`; a consumer without
        ``add_producer``/``del_producer`` is refused with EINVAL.
        """
        if not isinstance(consumer, Consumer):
            raise _not_an_endpoint(consumer, "consumer")
        if consumer.add_producer is None or consumer.del_producer is None:
            raise _lacking(consumer)
        try:
            self._register(consumer, False, self._consumers, self._producers)
        finally:
            if _DEFERRED:
                deliver_deferred_signals()

    def unregister_producer(self, producer: Producer) -> bool:
        """Unregister ``producer`` (this very object), disconnecting it first.

        Returns False, changing nothing, when it is not registered. Raises
        CallbackError, after unregistering, when a disconnect callback raised.
        """
        try:
            return self._unregister(producer, True, self._producers, self._consumers)
        finally:
            if _DEFERRED:
                deliver_deferred_signals()

    def unregister_consumer(self, consumer: Consumer) -> bool:
        """Unregister ``consumer`` (this very object), disconnecting it first."""
        try:
            return self._unregister(consumer, False, self._consumers, self._producers)
        finally:
            if _DEFERRED:
                deliver_deferred_signals()

    @signal_safe
    def _register(
        self, endpoint: Any, producing: bool, mine: dict[Hashable, Any], theirs: dict[Hashable, Any]
    ) -> None:
        try:
            token = endpoint._token
        except AttributeError:
            raise _uninitialised(endpoint) from None
        if token is None:
            raise _invalid_token(endpoint)
        if not (got := self._lock.acquire(False)) or self._running:
            self._wait_or_refuse(got)
        self._running = True
        try:
            try:
                held = mine.get(token)
            except Exception as exc:  # a token whose __hash__ or __eq__ raises
                raise _invalid_token(endpoint, exc) from exc
            if held is not None:
                raise _busy(endpoint, held)
            try:
                mine[token] = endpoint  # the kernel's xa_insert, before connecting
                partner = theirs.get(token)
            except Exception as exc:
                _forget(mine, endpoint)
                raise _invalid_token(endpoint, exc) from exc
            if partner is None:
                return
            producer, consumer = (endpoint, partner) if producing else (partner, endpoint)
            plugins = self.plugins
            failure = None
            if plugins.pairing is not None:  # a veto, before any callback
                failure = self._veto(producer, consumer, endpoint)
            failures: _Failures = ()
            if failure is None:
                p, c = producer, consumer
                if plugins.wrapped:
                    p, c = self._hooked(producer, consumer)
                failures = _sequence(producer, consumer, p, c, True)
                if failures and failures[0][1] in _ADDS:
                    failure, *rest = failures
                    failures = tuple(rest)
            if failure is not None:
                del mine[token]  # the kernel's xa_erase after a failed connect
                raise _connect_error(
                    producer, consumer, endpoint, failure, failures, self._blamable()
                )
        finally:
            self._running = False
            self._lock.release()
        if failures:
            state = (
                f"{_side(endpoint)} {_name(endpoint)} was registered and paired with "
                f"{_side(partner)} {_name(partner)}"
            )
            raise _callback_error(state, failures, self.plugins.wrapped)

    @signal_safe
    def _unregister(
        self, endpoint: Any, producing: bool, mine: dict[Hashable, Any], theirs: dict[Hashable, Any]
    ) -> bool:
        try:
            token = endpoint._token
        except AttributeError:
            return False  # not an endpoint (or never initialised): never registered
        if not (got := self._lock.acquire(False)) or self._running:
            self._wait_or_refuse(got)
        self._running = True
        try:
            try:
                registered = mine.get(token) is endpoint
            except Exception:
                registered = False  # unhashable or hostile: never registered
            if not registered:
                return False
            # the partner is the one it is linked to, as the kernel disconnects
            # through producer->consumer, when that one is registered here (a
            # pair on two fds of one eventfd, one closed: a closed Eventfd equals
            # only itself); else the token's other side
            link = endpoint._consumer if producing else endpoint._producer
            try:
                linked = link is not None and theirs.get(link._token) is link
            except Exception:  # a partner whose token's hash or eq raises
                linked = False
            partner = link if linked else theirs.get(token)
            failures: _Failures = ()
            if partner is not None:
                producer, consumer = (endpoint, partner) if producing else (partner, endpoint)
                p, c = producer, consumer
                if self.plugins.wrapped:
                    p, c = self._hooked(producer, consumer)
                failures = _sequence(producer, consumer, p, c, False)
            del mine[token]
        finally:
            self._running = False
            self._lock.release()
        if failures:
            state = f"{_side(endpoint)} {_name(endpoint)} was unregistered"
            if partner is not None:
                state += f" and disconnected from {_name(partner)}"
            raise _callback_error(state, failures, self.plugins.wrapped)
        return True

    def _wait_or_refuse(self, got: bool) -> None:
        """The slow way into a section, which takes the lock. Not ``got``:
        another thread holds it; waited for as hold() does (a Ctrl-C ends the
        wait, and leaves the lock free). ``got`` while running: the thread
        inside, called back by a callback (the RLock let it in), is refused."""
        if not got:
            hold(self._lock).__enter__()  # its __exit__: the section's release
            return
        self._lock.release()
        raise _reentered()

    def _hooked(self, producer: Any, consumer: Any) -> tuple[_Hooked, _Hooked]:
        """Stand-ins that route each callback through the lifecycle hook a plugin
        implements, for the sequences to call instead of the endpoints."""
        hooks = self.plugins.wrapped
        return _Hooked(producer, "producer", hooks), _Hooked(consumer, "consumer", hooks)

    @signal_safe
    def _veto(self, producer: Any, consumer: Any, registering: Any) -> _Failure | None:
        """The irqbypass_pair hook: what it raised, if anything."""
        hook = self.plugins.pairing
        assert hook is not None
        try:
            callout(functools.partial(hook, producer=producer, consumer=consumer))
        except BaseException as exc:
            return (registering, "pair", exc)
        return None

    def _blamable(self) -> dict[str, Callable[..., Any]]:
        """The hooks some plugin implements, by step (an error names their plugin)."""
        if (pairing := self.plugins.pairing) is not None:
            return {**self.plugins.wrapped, "pair": pairing}
        return self.plugins.wrapped

    # -- looking -----------------------------------------------------------

    def producers(self) -> list[Producer]:
        """The registered producers (a snapshot, safe to call from callbacks)."""
        return list(self._producers.values())

    def consumers(self) -> list[Consumer]:
        """The registered consumers (a snapshot)."""
        return list(self._consumers.values())

    def pairs(self) -> list[tuple[Producer, Consumer]]:
        """Every connected (producer, consumer)."""
        return [(p, c) for p in list(self._producers.values()) if (c := p._consumer) is not None]

    def find_producer(self, token: Hashable) -> Producer | None:
        """The producer registered for ``token``, or None (an unhashable token holds none)."""
        try:
            return self._producers.get(token)
        except Exception:
            return None  # unhashable or hostile: no producer can hold it

    def find_consumer(self, token: Hashable) -> Consumer | None:
        """The consumer registered for ``token``, or None (an unhashable token holds none)."""
        try:
            return self._consumers.get(token)
        except Exception:
            return None

    def is_registered(self, endpoint: Producer | Consumer) -> bool:
        """Whether this very endpoint (identity, not token) is registered: the state after a
        CallbackError."""
        if isinstance(endpoint, Producer):
            table = self._producers
        elif isinstance(endpoint, Consumer):
            table = self._consumers
        else:
            return False
        try:
            return table.get(getattr(endpoint, "_token", None)) is endpoint
        except Exception:
            return False  # an unhashable token cannot have been registered

    def __len__(self) -> int:
        return len(self._producers) + len(self._consumers)


# The kernel's __connect() and __disconnect() in one function, callback by
# callback as the kernel writes them (they differ only in the middle). ``p``
# and ``c`` are the endpoints, or the stand-ins of Manager._hooked. It calls
# nothing but callbacks, so a signal passes inside a callback and waits on its
# own lines (irqbypass.signals.calling_out): a callout() frame per callback
# would cost more than the manager's own work. Each callback is read inside
# its try: one that raises when read (a property) fails as that callback.


@calling_out
def _sequence(producer: Any, consumer: Any, p: Any, c: Any, connect: bool) -> _Failures:
    """Connect: stop, stop, add, add (the producer's add rolled back if the
    consumer's fails), start, start; the pair linked if both adds succeeded.
    Disconnect: stop, stop, del, del, start, start; the pair unlinked. Returns
    what raised, the add that failed (if one did) first."""
    failure: _Failure | None = None
    failures: _Failures = ()
    undo = not connect  # the producer's del: the disconnect's, or a failed connect's rollback
    try:
        if (fn := p.stop) is not None:
            fn()
    except BaseException as exc:
        failures += ((producer, "stop", exc),)
    try:
        if (fn := c.stop) is not None:
            fn()
    except BaseException as exc:
        failures += ((consumer, "stop", exc),)
    if connect:
        try:
            if (fn := p.add_consumer) is not None:
                fn(consumer)
        except BaseException as exc:
            failure = (producer, "add_consumer", exc)
        else:
            try:
                c.add_producer(producer)
            except BaseException as exc:
                failure = (consumer, "add_producer", exc)
                undo = True
    else:
        try:
            c.del_producer(producer)
        except BaseException as exc:
            failures += ((consumer, "del_producer", exc),)
    if undo:
        try:
            if (fn := p.del_consumer) is not None:
                fn(consumer)
        except BaseException as exc:
            failures += ((producer, "del_consumer", exc),)
    try:
        if (fn := c.start) is not None:
            fn()
    except BaseException as exc:
        failures += ((consumer, "start", exc),)
    try:
        if (fn := p.start) is not None:
            fn()
    except BaseException as exc:
        failures += ((producer, "start", exc),)
    if failure is not None:
        return (failure, *failures)
    if connect:
        producer._consumer = consumer
        consumer._producer = producer
    else:
        producer._consumer = None
        consumer._producer = None
    return failures


class _Hooked:
    """Stands in for an endpoint while some plugin implements a lifecycle hook.

    ``stand_in.stop`` is None when the endpoint has no ``stop`` (no hook fires
    for an absent callback, as the kernel calls no NULL pointer); otherwise it
    is a callable that goes through ``irqbypass_stop`` when a plugin implements
    it, or the method itself when none does. All are found when the stand-in
    is made (in a section): the sequences only call them.
    """

    def __init__(self, endpoint: Any, side: str, hooks: dict[str, Callable[..., Any]]) -> None:
        partner = "consumer" if side == "producer" else "producer"
        for name in (f"add_{partner}", f"del_{partner}", "stop", "start"):
            setattr(self, name, _route(endpoint, side, name, STEPS[name], hooks))


def _route(
    endpoint: Any, side: str, name: str, step: str, hooks: dict[str, Callable[..., Any]]
) -> Callable[..., Any] | None:
    try:
        method: Callable[..., Any] | None = getattr(endpoint, name)
    except Exception as exc:  # read raising (a property): the callback fails as it is called
        return functools.partial(_raise, exc)
    hook = hooks.get(step)
    if method is None or hook is None:
        return method
    if step in ("add", "del"):
        return lambda partner: hook(endpoint=endpoint, partner=partner, side=side)
    return lambda: hook(endpoint=endpoint, side=side)


def _raise(exc: BaseException, *args: object) -> None:
    """A callback that could not be read: calling it raises what reading it did."""
    raise exc


# -- messages ---------------------------------------------------------------
#
# Built on error paths only, from whatever the endpoints are: a name property
# that raises, a name with control characters or an exception whose str()
# raises still give a message.


def _invalid_token(endpoint: object, cause: BaseException | None = None) -> InvalidEndpointError:
    """The EINVAL for a token that is None (no ``cause``), or unhashable, or whose
    hash/eq raises (``cause``: what it raised)."""
    what = f"{_side(endpoint)} {_name(endpoint)}"
    if cause is not None:
        return InvalidEndpointError(
            f"{what}: its token {show_value(getattr(endpoint, '_token', None))} cannot be used "
            f"as a key ({_brief(cause)}); use an Eventfd, a string, an int or another value "
            "whose hash and equality work"
        )
    return InvalidEndpointError(f"{what}: {NO_TOKEN}")


def _forget(table: dict[Hashable, Any], endpoint: object) -> None:
    """Remove ``endpoint`` from ``table`` without trusting its token's hash or eq."""
    kept = [(key, value) for key, value in table.items() if value is not endpoint]
    if len(kept) != len(table):
        table.clear()
        table.update(kept)


def _lacking(consumer: object) -> InvalidEndpointError:
    missing = [n for n in REQUIRED_CONSUMER_CALLBACKS if not callable(getattr(consumer, n, None))]
    return InvalidEndpointError(
        f"consumer {_name(consumer)} lacks the required callback(s) {', '.join(missing)}"
    )


def _uninitialised(endpoint: object) -> InvalidEndpointError:
    return InvalidEndpointError(
        f"{_side(endpoint)} {_name(endpoint)} has no token: its class's __init__ did not "
        f"call super().__init__(token=...); call it before registering"
    )


def _not_an_endpoint(endpoint: object, side: str) -> InvalidEndpointError:
    cls = "Producer" if side == "producer" else "Consumer"
    return InvalidEndpointError(
        f"{show_value(endpoint)} is not an irqbypass.{cls}; subclass irqbypass.{cls} to register "
        f"it as a {side}"
    )


def _reentered() -> ReentrantCallError:
    return ReentrantCallError(
        "a callback called back into the IRQ bypass manager that is running it; "
        "the manager's lock is held during callbacks, so this would deadlock. "
        "Defer the call until the callback has returned"
    )


def _side(endpoint: object) -> str:
    return "producer" if isinstance(endpoint, Producer) else "consumer"


def _name(endpoint: object) -> str:
    try:
        name = getattr(endpoint, "name", None)
    except Exception:
        name = None
    return show_value(name if isinstance(name, str) else type(endpoint).__name__)


def _busy(endpoint: Any, held: Any) -> AlreadyRegisteredError | TokenInUseError:
    side = _side(endpoint)
    if held is endpoint:
        return AlreadyRegisteredError(
            f"{side} {_name(endpoint)} is already registered; unregister it first"
        )
    return TokenInUseError(
        f"token {show_value(endpoint._token)} is already held by {side} {_name(held)}; one "
        f"{side} per token: unregister that one first, or use another token"
    )


def _blame(exc: BaseException, hook: Callable[..., Any] | None) -> str | None:
    """The plugin whose hook implementation raised ``exc`` (None: the endpoint did).

    The innermost traceback frame that runs a hook implementation tells: the
    core's own implementation is the one that calls the endpoint's method.
    """
    get_impls = getattr(hook, "get_hookimpls", None)
    if get_impls is None:
        return None
    owners = {impl.function.__code__: impl.plugin_name for impl in get_impls()}
    blamed = None
    tb = exc.__traceback__
    while tb is not None:
        owner = owners.get(tb.tb_frame.f_code)
        if owner is not None:
            blamed = owner
        tb = tb.tb_next
    return None if blamed in (None, CORE_PLUGIN) else blamed


def _describe(failure: _Failure, hooks: dict[str, Callable[..., Any]]) -> str:
    endpoint, callback, exc = failure
    label = f"{_side(endpoint)} {_name(endpoint)}.{callback}()"
    if callback == "pair":
        label = f"the pairing of {_side(endpoint)} {_name(endpoint)}"
    plugin = _blame(exc, hooks.get(STEPS[callback]))
    if plugin is not None:
        bug = (
            ""
            if isinstance(exc, (IrqBypassError, OSError)) or not isinstance(exc, Exception)
            else f" (this is a bug in plugin {plugin!r}: raise an irqbypass.IrqBypassError, "
            "such as irqbypass.Veto)"
        )
        return (
            f"plugin {plugin!r} raised {_brief(exc)} in its irqbypass_{STEPS[callback]} hook "
            f"around {label}{bug}"
        )
    if isinstance(exc, (IrqBypassError, OSError)) or not isinstance(exc, Exception):
        return f"{label} raised {_brief(exc)}"
    cls = type(endpoint)  # the endpoint's own code: its class names the plugin's module
    return (
        f"{label} raised {_brief(exc)} (a bug in {cls.__module__}.{cls.__qualname__}, "
        "which should raise an irqbypass error)"
    )


def _connect_error(
    producer: Any,
    consumer: Any,
    registering: Any,
    failure: _Failure,
    failures: _Failures,
    hooks: dict[str, Callable[..., Any]],
) -> ConnectError:
    mine, theirs = (producer, consumer) if registering is producer else (consumer, producer)
    state = (
        f"{_name(mine)} was not registered and {_side(theirs)} {_name(theirs)} stays "
        "registered, unpaired"
    )
    everything = (failure, *failures)
    _reraise_interrupts(everything, state, hooks)
    details = (
        f"connecting {_side(mine)} {_name(mine)} to {_side(theirs)} {_name(theirs)} "
        f"failed: {_describe(failure, hooks)}"
    )
    if failures:
        details += "; also " + "; ".join(_describe(f, hooks) for f in failures)
    cause = failure[2]
    error = ConnectError(f"{details}; {state}", errors=[exc for _, _, exc in everything])
    error.details = details  # a Topology undoes the partner too, and says so itself
    error.__cause__ = cause
    return error


def _brief(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reraise_interrupts(
    failures: Sequence[_Failure], state: str, hooks: dict[str, Callable[..., Any]]
) -> None:
    """KeyboardInterrupt and friends pass through as themselves, once the
    manager is consistent again, with a note naming what they interrupted."""
    for failure in failures:
        exc = failure[2]
        if not isinstance(exc, Exception):
            raise with_notes(
                exc, [f"irqbypass: interrupted in {_describe(failure, hooks)}; {state}"]
            )


def _callback_error(
    state: str, failures: Sequence[_Failure], hooks: dict[str, Callable[..., Any]]
) -> CallbackError:
    _reraise_interrupts(failures, state, hooks)
    details = "; ".join(_describe(f, hooks) for f in failures)
    errors = [exc for _, _, exc in failures]
    error = CallbackError(
        f"{state}, but {details}. The registration state is as the kernel would leave "
        "it; check (or unregister) the endpoint whose callback raised",
        errors=errors,
    )
    error.details = details
    error.__cause__ = errors[0]
    return error
