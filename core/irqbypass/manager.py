"""The rendezvous: pairs producers and consumers by token.

This follows the kernel's ``virt/lib/irqbypass.c`` rule by rule (see
``docs/semantics.md``): one producer and one consumer per token, found in O(1)
through two dicts (the kernel's two xarrays); connecting runs
stop, stop, add, add (rolling back the producer's half if the consumer's add
fails), start, start; disconnecting runs stop, stop, del, del, start, start.
One lock serializes every change and is held while callbacks run, as the
kernel's mutex is.

Where the kernel stays silent, this manager reports: an ``add`` failure is a
:class:`~irqbypass.ConnectError` raised from the callback's exception; a
``stop``/``start``/``del`` failure cannot change the outcome (those callbacks
cannot fail in the kernel, and the sequence runs on exactly as the kernel's
does), so the operation completes and then a :class:`~irqbypass.CallbackError`
says what happened.

Every callback goes through a pluggy lifecycle hook when some plugin implements
that hook; otherwise the endpoint's method is called directly (the fast path).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from threading import Lock, get_ident
from typing import Any

from .endpoints import Consumer, Producer, check_token, missing_consumer_callbacks
from .errors import (
    AlreadyRegisteredError,
    CallbackError,
    ConnectError,
    InvalidEndpointError,
    ReentrantCallError,
    TokenInUseError,
)
from .plugins import PluginHost

#: callback method -> the lifecycle hook step it goes through
STEPS: dict[str, str] = {
    "add_consumer": "add",
    "add_producer": "add",
    "del_consumer": "del",
    "del_producer": "del",
    "stop": "stop",
    "start": "start",
}

_Failure = tuple[str, BaseException]
_Failures = list[_Failure]


class Manager:
    """The IRQ bypass manager: register endpoints, and matching tokens pair up.

    ``plugins`` is the :class:`~irqbypass.PluginHost` whose lifecycle hooks wrap
    the callbacks; by default a host with no plugin at all (use
    :func:`~irqbypass.load_plugins` for the installed ones).
    """

    def __init__(self, plugins: PluginHost | None = None) -> None:
        self.plugins = plugins if plugins is not None else PluginHost()
        self._producers: dict[Hashable, Producer] = {}
        self._consumers: dict[Hashable, Consumer] = {}
        self._lock = Lock()
        self._owner: int | None = None

    # -- registering -------------------------------------------------------

    def register_producer(self, producer: Producer) -> None:
        """Register ``producer``; if a consumer holds its token, connect them.

        Raises InvalidEndpointError (EINVAL), TokenInUseError or
        AlreadyRegisteredError (EBUSY), ConnectError (not registered), or
        CallbackError (registered and paired, but a stop/start raised).
        """
        if not isinstance(producer, Producer):
            raise _not_an_endpoint(producer, "producer")
        token = producer.token
        if token is None:
            raise _invalid_token(producer, "producer")
        failures: Sequence[_Failure] = ()
        me = get_ident()
        if self._owner == me:
            raise _reentered()
        self._lock.acquire()  # explicit: half the cost of a with-statement
        try:
            self._owner = me
            try:
                held = self._producers.get(token)
            except TypeError:
                raise _invalid_token(producer, "producer") from None
            if held is not None:
                raise _busy(producer, held, "producer")
            consumer = self._consumers.get(token)
            if consumer is not None:
                failures = self._connect(producer, consumer, "producer")
            self._producers[token] = producer
        finally:
            self._owner = None
            self._lock.release()
        if failures:
            raise _callback_error(
                f"producer {_name(producer)} was registered and paired with consumer "
                f"{_name(consumer)}",
                failures,
            )

    def register_consumer(self, consumer: Consumer) -> None:
        """Register ``consumer``; if a producer holds its token, connect them.

        The same errors as :meth:`register_producer`; a consumer without
        ``add_producer``/``del_producer`` is refused with EINVAL.
        """
        if not isinstance(consumer, Consumer):
            raise _not_an_endpoint(consumer, "consumer")
        token = consumer.token
        if token is None:
            raise _invalid_token(consumer, "consumer")
        if consumer.add_producer is None or consumer.del_producer is None:
            raise InvalidEndpointError(
                f"consumer {_name(consumer)} lacks the required callback(s) "
                f"{', '.join(missing_consumer_callbacks(consumer))}"
            )
        failures: Sequence[_Failure] = ()
        me = get_ident()
        if self._owner == me:
            raise _reentered()
        self._lock.acquire()  # explicit: half the cost of a with-statement
        try:
            self._owner = me
            try:
                held = self._consumers.get(token)
            except TypeError:
                raise _invalid_token(consumer, "consumer") from None
            if held is not None:
                raise _busy(consumer, held, "consumer")
            producer = self._producers.get(token)
            if producer is not None:
                failures = self._connect(producer, consumer, "consumer")
            self._consumers[token] = consumer
        finally:
            self._owner = None
            self._lock.release()
        if failures:
            raise _callback_error(
                f"consumer {_name(consumer)} was registered and paired with producer "
                f"{_name(producer)}",
                failures,
            )

    def unregister_producer(self, producer: Producer) -> bool:
        """Unregister ``producer`` (this very object), disconnecting it first.

        Returns False, changing nothing, when it is not registered. Raises
        CallbackError, after unregistering, when a disconnect callback raised.
        """
        token = getattr(producer, "token", None)
        failures: Sequence[_Failure] = ()
        me = get_ident()
        if self._owner == me:
            raise _reentered()
        self._lock.acquire()  # explicit: half the cost of a with-statement
        try:
            self._owner = me
            try:
                if self._producers.get(token) is not producer:
                    return False
            except TypeError:
                return False  # unhashable: it cannot have been registered
            consumer = self._consumers.get(token)
            if consumer is not None:
                failures = self._disconnect(producer, consumer)
            del self._producers[token]
        finally:
            self._owner = None
            self._lock.release()
        if failures:
            raise _callback_error(_unregistered(producer, consumer), failures)
        return True

    def unregister_consumer(self, consumer: Consumer) -> bool:
        """Unregister ``consumer`` (this very object), disconnecting it first."""
        token = getattr(consumer, "token", None)
        failures: Sequence[_Failure] = ()
        me = get_ident()
        if self._owner == me:
            raise _reentered()
        self._lock.acquire()  # explicit: half the cost of a with-statement
        try:
            self._owner = me
            try:
                if self._consumers.get(token) is not consumer:
                    return False
            except TypeError:
                return False  # unhashable: it cannot have been registered
            producer = self._producers.get(token)
            if producer is not None:
                failures = self._disconnect(producer, consumer)
            del self._consumers[token]
        finally:
            self._owner = None
            self._lock.release()
        if failures:
            raise _callback_error(_unregistered(consumer, producer), failures)
        return True

    # -- looking -----------------------------------------------------------

    def producers(self) -> list[Producer]:
        """The registered producers (a snapshot, safe to call from callbacks)."""
        return list(self._producers.values())

    def consumers(self) -> list[Consumer]:
        """The registered consumers (a snapshot)."""
        return list(self._consumers.values())

    def pairs(self) -> list[tuple[Producer, Consumer]]:
        """Every connected (producer, consumer)."""
        consumers = self._consumers
        return [
            (p, c) for t, p in list(self._producers.items()) if (c := consumers.get(t)) is not None
        ]

    def find_producer(self, token: Hashable) -> Producer | None:
        return self._producers.get(token)

    def find_consumer(self, token: Hashable) -> Consumer | None:
        return self._consumers.get(token)

    def is_registered(self, endpoint: Producer | Consumer) -> bool:
        table: dict[Hashable, Producer] | dict[Hashable, Consumer] = (
            self._producers if isinstance(endpoint, Producer) else self._consumers
        )
        try:
            return table.get(endpoint.token) is endpoint
        except TypeError:
            return False  # an unhashable token cannot have been registered

    def __len__(self) -> int:
        return len(self._producers) + len(self._consumers)

    # -- connect and disconnect ------------------------------------------
    #
    # The sequences are written out step by step, as in the kernel: one
    # readable place each, and no per-callback function call on the fast path.
    # ``p`` and ``c`` are the endpoints themselves, or _Hooked stand-ins that
    # route each callback through the lifecycle hook a plugin implements.

    def _connect(self, producer: Producer, consumer: Consumer, registering: str) -> _Failures:
        """Connect the pair; return what the void callbacks raised."""
        failures: _Failures = []
        p: Any = producer
        c: Any = consumer
        if hooks := self.plugins.wrapped:
            p, c = _Hooked(producer, "producer", hooks), _Hooked(consumer, "consumer", hooks)
        failure: tuple[str, BaseException] | None = None
        if (call := p.stop) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(producer, "stop"), exc))
        if (call := c.stop) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(consumer, "stop"), exc))
        try:
            if (call := p.add_consumer) is not None:
                call(consumer)
        except BaseException as exc:
            failure = (_label(producer, "add_consumer"), exc)
        else:
            try:
                c.add_producer(producer)
            except BaseException as exc:
                failure = (_label(consumer, "add_producer"), exc)
                if (call := p.del_consumer) is not None:
                    try:
                        call(consumer)
                    except BaseException as exc:
                        failures.append((_label(producer, "del_consumer"), exc))
        if (call := c.start) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(consumer, "start"), exc))
        if (call := p.start) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(producer, "start"), exc))
        if failure is None:
            producer._consumer = consumer
            consumer._producer = producer
            return failures
        raise _connect_error(producer, consumer, registering, failure, failures)

    def _disconnect(self, producer: Producer, consumer: Consumer) -> _Failures:
        """Disconnect the pair; return what the callbacks raised."""
        failures: _Failures = []
        p: Any = producer
        c: Any = consumer
        if hooks := self.plugins.wrapped:
            p, c = _Hooked(producer, "producer", hooks), _Hooked(consumer, "consumer", hooks)
        if (call := p.stop) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(producer, "stop"), exc))
        if (call := c.stop) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(consumer, "stop"), exc))
        try:
            c.del_producer(producer)
        except BaseException as exc:
            failures.append((_label(consumer, "del_producer"), exc))
        if (call := p.del_consumer) is not None:
            try:
                call(consumer)
            except BaseException as exc:
                failures.append((_label(producer, "del_consumer"), exc))
        if (call := c.start) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(consumer, "start"), exc))
        if (call := p.start) is not None:
            try:
                call()
            except BaseException as exc:
                failures.append((_label(producer, "start"), exc))
        producer._consumer = None
        consumer._producer = None
        return failures


class _Hooked:
    """Stands in for an endpoint while some plugin implements a lifecycle hook.

    ``stand_in.stop`` is None when the endpoint has no ``stop`` (no hook fires
    for an absent callback, as the kernel calls no NULL pointer); otherwise it
    is a callable that goes through ``irqbypass_stop`` when a plugin implements
    it, or the method itself when none does.
    """

    def __init__(self, endpoint: Any, side: str, hooks: dict[str, Callable[..., Any]]) -> None:
        self._endpoint = endpoint
        self._side = side
        self._hooks = hooks

    def __getattr__(self, name: str) -> Callable[..., Any] | None:
        method: Callable[..., Any] | None = getattr(self._endpoint, name)
        step = STEPS.get(name)
        hook = self._hooks.get(step) if step is not None else None
        if method is None or hook is None:
            return method
        endpoint, side = self._endpoint, self._side
        if step in ("add", "del"):
            return lambda partner: hook(endpoint=endpoint, partner=partner, side=side)
        return lambda: hook(endpoint=endpoint, side=side)


def _invalid_token(endpoint: object, side: str) -> InvalidEndpointError:
    """The EINVAL for a token that is None or unhashable."""
    try:
        check_token(getattr(endpoint, "token", None), f"{side} {_name(endpoint)}")
    except InvalidEndpointError as error:
        return error
    raise AssertionError("_invalid_token called for a valid token")  # pragma: no cover


def _not_an_endpoint(endpoint: object, side: str) -> InvalidEndpointError:
    cls = "Producer" if side == "producer" else "Consumer"
    return InvalidEndpointError(
        f"{endpoint!r} is not an irqbypass.{cls}; subclass irqbypass.{cls} to register it "
        f"as a {side}"
    )


def _reentered() -> ReentrantCallError:
    return ReentrantCallError(
        "a callback called back into the IRQ bypass manager that is running it; "
        "the manager's lock is held during callbacks, so this would deadlock. "
        "Defer the call until the callback has returned"
    )


def _name(endpoint: object) -> str:
    return repr(getattr(endpoint, "name", type(endpoint).__name__))


def _busy(endpoint: object, held: object, side: str) -> AlreadyRegisteredError | TokenInUseError:
    if held is endpoint:
        return AlreadyRegisteredError(
            f"{side} {_name(endpoint)} is already registered; unregister it first"
        )
    return TokenInUseError(
        f"token {getattr(endpoint, 'token', None)!r} is already held by {side} "
        f"{_name(held)}; one {side} per token: unregister that one first, or use "
        "another token"
    )


def _label(endpoint: object, callback: str) -> str:
    return f"{getattr(endpoint, 'side', 'endpoint')} {_name(endpoint)}.{callback}()"


def _unregistered(endpoint: Any, partner: Any) -> str:
    state = f"{endpoint.side} {_name(endpoint)} was unregistered"
    if partner is not None:
        state += f" and disconnected from {_name(partner)}"
    return state


def _connect_error(
    producer: Any,
    consumer: Any,
    registering: str,
    failure: tuple[str, BaseException],
    failures: _Failures,
) -> ConnectError:
    label, cause = failure
    _reraise_interrupts([cause] + [exc for _, exc in failures])
    mine, theirs = (producer, consumer) if registering == "producer" else (consumer, producer)
    message = (
        f"connecting {registering} {_name(mine)} to {theirs.side} {_name(theirs)} "
        f"failed: {label} raised {_brief(cause)}; {_name(mine)} was not registered "
        f"and {_name(theirs)} stays registered, unpaired"
    )
    if failures:
        message += "; also " + "; ".join(f"{lab} raised {_brief(e)}" for lab, e in failures)
    error = ConnectError(message, errors=[cause] + [e for _, e in failures])
    error.__cause__ = cause
    return error


def _brief(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reraise_interrupts(errors: list[BaseException]) -> None:
    """KeyboardInterrupt and friends pass through as themselves, once the
    manager is consistent again."""
    for exc in errors:
        if not isinstance(exc, Exception):
            raise exc


def _callback_error(state: str, failures: Sequence[_Failure]) -> CallbackError:
    errors = [exc for _, exc in failures]
    _reraise_interrupts(errors)
    details = "; ".join(f"{label} raised {_brief(exc)}" for label, exc in failures)
    error = CallbackError(
        f"{state}, but {details}. The registration state is as the kernel would leave "
        "it; check (or unregister) the endpoint whose callback raised",
        errors=errors,
    )
    error.__cause__ = errors[0]
    return error
