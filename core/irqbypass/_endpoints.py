"""Producers and consumers: the two ends of an IRQ bypass.

They mirror ``struct irq_bypass_producer`` and ``struct irq_bypass_consumer``.
The callbacks are plain methods that a subclass defines; in the base classes they
are ``None``, so that "not defined" means "absent", exactly as a NULL function
pointer does in the kernel (and the manager's check is one attribute load):

- producer, all optional: ``add_consumer(consumer)``, ``del_consumer(consumer)``,
  ``stop()``, ``start()``;
- consumer: ``add_producer(producer)`` and ``del_producer(producer)`` required,
  ``stop()`` and ``start()`` optional.

Beside the manager, an endpoint has a life of its own: :meth:`Endpoint.open`
attaches it to its device so that its eventfd carries interrupts, and
:meth:`Endpoint.close` detaches it. Registering with a :class:`~irqbypass.Manager`
only adds the pairing (the bypass) on top.

A class whose device can attach many endpoints in one operation (KVM writes a
VM's whole GSI routing table with one ioctl) may also define the optional
classmethods ``open_group(endpoints)`` and ``close_group(endpoints)``; a
:class:`~irqbypass.Topology` then opens and closes all its endpoints of that
class on one side together. ``None`` (the default) means absent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ._errors import InvalidEndpointError

if TYPE_CHECKING:
    from ._eventfd import Eventfd
from ._options import show_exception, show_value

#: The callbacks a consumer must define (the kernel refuses one without them).
REQUIRED_CONSUMER_CALLBACKS = ("add_producer", "del_producer")

_E = TypeVar("_E", bound="Endpoint")


#: what a None token is told (by the constructor, and by a manager given one)
NO_TOKEN = (
    "token is None; pass the eventfd (or any hashable value) that pairs this endpoint "
    "with its partner"
)


#: numbers the default names of unnamed endpoints (next() on a count is atomic)
_UNNAMED = itertools.count(1)


class Endpoint:
    """What producers and consumers share: a token, a name, open and close."""

    side: str = "endpoint"

    #: Optional classmethods; None means absent. ``open_group(endpoints)`` opens
    #: endpoints of this class all or nothing (on failure none stays open, and
    #: the error names the one that failed); ``close_group(endpoints)`` closes
    #: every one of them even if one fails, then raises.
    open_group: ClassVar[Callable[..., None] | None] = None
    close_group: ClassVar[Callable[..., None] | None] = None
    #: the callbacks a subclass must define, checked when an endpoint is made
    _required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, token: Hashable, name: str | None = None) -> None:
        missing = ", ".join(n for n in self._required if not callable(getattr(self, n, None)))
        if missing:
            raise InvalidEndpointError(
                f"{type(self).__name__} lacks the required {self.side} callback(s) {missing}; "
                "define them as methods"
            )
        if name is not None and not isinstance(name, str):
            raise InvalidEndpointError(
                f"{type(self).__name__}: name must be a str or None, not {type(name).__name__}"
            )
        what = f"{type(self).__name__}({name or ''})"
        if token is None:
            raise InvalidEndpointError(f"{what}: {NO_TOKEN}")
        if not isinstance(token, Hashable):
            raise InvalidEndpointError(
                f"{what}: token {show_value(token)} is not hashable; use an Eventfd, "
                "a string, an int or another hashable value"
            )
        try:
            hash(token)  # the manager's index needs it: refused here, not on registering
        except Exception as exc:  # a hostile __hash__ can raise anything
            raise InvalidEndpointError(
                f"{what}: token {show_value(token)} is not hashable ({show_exception(exc)})"
            ) from exc
        self._token = token
        #: the name in every message; unnamed endpoints get distinct ones
        #: ("MockProducer-1", "MockProducer-2"), or two messages would read alike
        self.name: str = name if name is not None else f"{type(self).__name__}-{next(_UNNAMED)}"

    @property
    def token(self) -> Hashable:
        """The value that pairs this endpoint with its partner (read-only)."""
        return self._token

    def open(self) -> None:
        """Attach to the device so the eventfd carries interrupts (default: no-op)."""

    def close(self) -> None:
        """Detach from the device; undo :meth:`open` (default: no-op)."""

    def stats(self) -> Mapping[str, int]:
        """Counters for status output. Producers report ``fired``, consumers
        ``delivered``; anything else is shown as it is."""
        return {}

    @property
    def problem(self) -> str | None:
        """What went wrong while open that the endpoint gave up on (its loop
        callback raised, its back-end went away), as a message saying what to
        do; None when all is well. ``irqbypass run``'s summary shows it."""
        return None

    @property
    def finished(self) -> bool:
        """True once the endpoint has nothing more to do (a producer that fired
        its whole count). A run ends early when every producer is finished."""
        return False

    def __enter__(self: _E) -> _E:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} token={self._token!r}>"


class Producer(Endpoint):
    """An interrupt source, such as a device vector (``irq_bypass_producer``)."""

    side = "producer"

    #: Optional callbacks; None means absent (the kernel's NULL pointer).
    add_consumer: Callable[[Consumer], None] | None = None
    del_consumer: Callable[[Consumer], None] | None = None
    stop: Callable[[], None] | None = None
    start: Callable[[], None] | None = None

    #: the paired consumer, set by the manager (None: unpaired)
    _consumer: Consumer | None = None

    def __init__(self, *, token: Hashable, irq: int = 0, name: str | None = None) -> None:
        super().__init__(token=token, name=name)
        self.irq = irq

    @property
    def consumer(self) -> Consumer | None:
        """The paired consumer, or None while unpaired. Set by the manager."""
        return self._consumer

    def offer_direct_path(self, deliver: Callable[[], None] | None) -> bool:
        """A consumer offers a way to deliver without the eventfd (``None``
        withdraws it). Return True to use it; the default declines, so the
        producer keeps signalling its eventfd."""
        return False


class Consumer(Endpoint):
    """An interrupt sink, such as a hypervisor's injection path
    (``irq_bypass_consumer``). Subclasses must define ``add_producer`` and
    ``del_producer``."""

    side = "consumer"

    #: Required: a subclass must define these two (None is refused, EINVAL,
    #: when the consumer is made).
    add_producer: Callable[[Producer], None] | None = None
    del_producer: Callable[[Producer], None] | None = None
    _required = REQUIRED_CONSUMER_CALLBACKS
    #: Optional; None means absent.
    stop: Callable[[], None] | None = None
    start: Callable[[], None] | None = None
    #: the paired producer, set by the manager (None: unpaired)
    _producer: Producer | None = None

    @property
    def producer(self) -> Producer | None:
        """The paired producer, or None while unpaired. Set by the manager."""
        return self._producer

    @property
    def eoi_eventfd(self) -> Eventfd | None:
        """The eventfd this consumer signals when the guest ends a
        level-triggered interrupt (its EOI: KVM's resample eventfd), for a
        producer whose device holds the line masked until then to unmask on
        (a vfio INTx producer hands it to vfio-pci in ``add_consumer``, as
        QEMU does); None (the default): it signals none."""
        return None
