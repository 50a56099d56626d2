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

import threading
from collections.abc import Hashable

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

# (step, side) -> the endpoint method the kernel would call
CALLBACKS: dict[tuple[str, str], str] = {
    ("add", "producer"): "add_consumer",
    ("add", "consumer"): "add_producer",
    ("del", "producer"): "del_consumer",
    ("del", "consumer"): "del_producer",
    ("stop", "producer"): "stop",
    ("stop", "consumer"): "stop",
    ("start", "producer"): "start",
    ("start", "consumer"): "start",
}

_Failures = list[tuple[str, BaseException]]


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
        self._lock = threading.Lock()
        self._owner: int | None = None

    # -- registering -------------------------------------------------------

    def register_producer(self, producer: Producer) -> None:
        """Register ``producer``; if a consumer holds its token, connect them.

        Raises InvalidEndpointError (EINVAL), TokenInUseError or
        AlreadyRegisteredError (EBUSY), ConnectError (not registered), or
        CallbackError (registered and paired, but a stop/start raised).
        """
        token = _token_of(producer, "producer")
        self._enter()
        try:
            held = self._producers.get(token)
            if held is not None:
                raise _busy(producer, held, "producer")
            failures: _Failures = []
            consumer = self._consumers.get(token)
            if consumer is not None:
                self._connect(producer, consumer, failures)
            self._producers[token] = producer
        finally:
            self._exit()
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
        token = _token_of(consumer, "consumer")
        missing = missing_consumer_callbacks(consumer)
        if missing:
            raise InvalidEndpointError(
                f"consumer {_name(consumer)} lacks the required callback(s) {', '.join(missing)}"
            )
        self._enter()
        try:
            held = self._consumers.get(token)
            if held is not None:
                raise _busy(consumer, held, "consumer")
            failures: _Failures = []
            producer = self._producers.get(token)
            if producer is not None:
                self._connect(producer, consumer, failures, registering="consumer")
            self._consumers[token] = consumer
        finally:
            self._exit()
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
        return self._unregister(producer, "producer")

    def unregister_consumer(self, consumer: Consumer) -> bool:
        """Unregister ``consumer`` (this very object), disconnecting it first."""
        return self._unregister(consumer, "consumer")

    def _unregister(self, endpoint: Producer | Consumer, side: str) -> bool:
        token = getattr(endpoint, "token", None)
        try:
            hash(token)
        except TypeError:
            return False
        own, other = (
            (self._producers, self._consumers)
            if side == "producer"
            else (self._consumers, self._producers)
        )
        self._enter()
        try:
            if token is None or own.get(token) is not endpoint:
                return False
            failures: _Failures = []
            partner = other.get(token)
            if partner is not None:
                if side == "producer":
                    self._disconnect(endpoint, partner, failures)  # type: ignore[arg-type]
                else:
                    self._disconnect(partner, endpoint, failures)  # type: ignore[arg-type]
            del own[token]
        finally:
            self._exit()
        if failures:
            state = f"{side} {endpoint.name!r} was unregistered"
            if partner is not None:
                state += f" and disconnected from {partner.name!r}"
            raise _callback_error(state, failures)
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
        return [(p, consumers[t]) for t, p in list(self._producers.items()) if t in consumers]

    def find_producer(self, token: Hashable) -> Producer | None:
        return self._producers.get(token)

    def find_consumer(self, token: Hashable) -> Consumer | None:
        return self._consumers.get(token)

    def is_registered(self, endpoint: Producer | Consumer) -> bool:
        table: dict[Hashable, Producer] | dict[Hashable, Consumer] = (
            self._producers if isinstance(endpoint, Producer) else self._consumers
        )
        return table.get(endpoint.token) is endpoint

    def __len__(self) -> int:
        return len(self._producers) + len(self._consumers)

    # -- the lock ----------------------------------------------------------

    def _enter(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise ReentrantCallError(
                "a callback called back into the IRQ bypass manager that is running it; "
                "the manager's lock is held during callbacks, so this would deadlock. "
                "Defer the call until the callback has returned"
            )
        self._lock.acquire()
        self._owner = me

    def _exit(self) -> None:
        self._owner = None
        self._lock.release()

    # -- connect and disconnect ------------------------------------------

    def _call(self, step: str, endpoint: object, side: str, partner: object = None) -> None:
        method = getattr(endpoint, CALLBACKS[step, side], None)
        if method is None:
            return
        hooks = self.plugins.wrapped
        if step in hooks:
            hook = hooks[step]
            if partner is None:
                hook(endpoint=endpoint, side=side)
            else:
                hook(endpoint=endpoint, partner=partner, side=side)
        elif partner is None:
            method()
        else:
            method(partner)

    def _void(
        self, failures: _Failures, step: str, endpoint: object, side: str, partner: object = None
    ) -> None:
        """Call a callback that cannot fail in the kernel; record a failure."""
        try:
            self._call(step, endpoint, side, partner)
        except BaseException as exc:
            failures.append((_label(step, endpoint, side), exc))

    def _connect(
        self,
        producer: Producer,
        consumer: Consumer,
        failures: _Failures,
        registering: str = "producer",
    ) -> None:
        failure: tuple[str, BaseException] | None = None
        self._void(failures, "stop", producer, "producer")
        self._void(failures, "stop", consumer, "consumer")
        try:
            self._call("add", producer, "producer", consumer)
        except BaseException as exc:
            failure = (_label("add", producer, "producer"), exc)
        else:
            try:
                self._call("add", consumer, "consumer", producer)
            except BaseException as exc:
                failure = (_label("add", consumer, "consumer"), exc)
                self._void(failures, "del", producer, "producer", consumer)
        self._void(failures, "start", consumer, "consumer")
        self._void(failures, "start", producer, "producer")
        if failure is None:
            producer._consumer = consumer
            consumer._producer = producer
            return
        label, cause = failure
        _reraise_interrupts([cause] + [exc for _, exc in failures])
        mine, theirs = (producer, consumer) if registering == "producer" else (consumer, producer)
        message = (
            f"connecting {registering} {mine.name!r} to {theirs.side} {theirs.name!r} "
            f"failed: {label} raised {_brief(cause)}; {mine.name!r} was not registered "
            f"and {theirs.name!r} stays registered, unpaired"
        )
        if failures:
            message += "; also " + "; ".join(f"{lab} raised {_brief(e)}" for lab, e in failures)
        raise ConnectError(message, errors=[cause] + [e for _, e in failures]) from cause

    def _disconnect(self, producer: Producer, consumer: Consumer, failures: _Failures) -> None:
        self._void(failures, "stop", producer, "producer")
        self._void(failures, "stop", consumer, "consumer")
        self._void(failures, "del", consumer, "consumer", producer)
        self._void(failures, "del", producer, "producer", consumer)
        self._void(failures, "start", consumer, "consumer")
        self._void(failures, "start", producer, "producer")
        producer._consumer = None
        consumer._producer = None


def _token_of(endpoint: object, side: str) -> Hashable:
    token = getattr(endpoint, "token", None)
    check_token(token, f"{side} {_name(endpoint)}")
    return token  # check_token refused everything else


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


def _label(step: str, endpoint: object, side: str) -> str:
    return f"{side} {_name(endpoint)}.{CALLBACKS[step, side]}()"


def _brief(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reraise_interrupts(errors: list[BaseException]) -> None:
    """KeyboardInterrupt and friends pass through as themselves, once the
    manager is consistent again."""
    for exc in errors:
        if not isinstance(exc, Exception):
            raise exc


def _callback_error(state: str, failures: _Failures) -> CallbackError:
    errors = [exc for _, exc in failures]
    _reraise_interrupts(errors)
    details = "; ".join(f"{label} raised {_brief(exc)}" for label, exc in failures)
    error = CallbackError(
        f"{state}, but {details}. The state is as the kernel would leave it; "
        "check the endpoint named",
        errors=errors,
    )
    error.__cause__ = errors[0]
    return error
