"""The ``vhost-user`` producer: one virtqueue's call interrupt of a back-end
in another process.

The VMM hands the virtqueue's call eventfd to the back-end with
``VHOST_USER_SET_VRING_CALL`` and registers the same eventfd as a KVM irqfd:
the back-end's completion interrupts reach the guest without passing through
the VMM. ``open()`` binds the token that way; ``close()`` unbinds to a holding
eventfd (never the no-fd flag: libvhost-user panics on it at the next
completion). ``stop()`` on a ring this producer owns with nothing in flight
only defers what it publishes; otherwise it swaps to the holding eventfd and
``start()`` replays what it caught, as QEMU's masked notifier does; with
REPLY_ACK the swap is synchronous, without it a GET_FEATURES round trip makes
it so. The back-end signals every new call fd once (libvhost-user's reconnect
kick, so qemu-storage-daemon, virtiofsd and others): the first bind of an
owned connection goes to the holding eventfd and learns whether it does.

That life (open/close from any state, the quiesce and its deferral, the kick
and loss accounting, signal safety) is :class:`irqbypass.plugin.DeviceProducer`'s.
What is vhost-user's own has a module each, which this one composes: the
options, one checked value (:class:`~._settings.VhostUserSettings`); the
virtqueue's call, the :class:`irqbypass.plugin.DeviceInterrupt` it composes
(:class:`~._interrupt.VirtqueueCall`: the connection, the negotiation, the
claim, the drain before GET_VRING_BASE); the ring this
producer may feed (:class:`~._vring.OwnedRing`); and its own block load
(:class:`~._load.BlkLoad`).

Two ways, as the other producers: own the connection (``socket``: connect,
negotiate, give it the memory and a ring this producer makes, or ``spawn`` a
private qemu-storage-daemon) or take the VMM's established connection
(``connection``) and only bind the virtqueue's call.
"""

from __future__ import annotations

import errno
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

import irqbypass
import irqbypass.plugin

from ._interrupt import VirtqueueCall
from ._load import BlkLoad
from ._settings import VhostUserSettings
from .blk import BlkDriver
from .connection import Connection
from .daemon import StorageDaemon
from .errors import BackendGoneError, VhostUserError
from .ring import GuestMemory, SplitRing

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._settings import VhostUserOptions

__all__ = ["VhostUserProducer"]


class VhostUserProducer(irqbypass.plugin.DeviceProducer):
    """The call interrupt of virtqueue ``queue`` of a vhost-user back-end.

    Give exactly one of ``socket`` (the back-end's UNIX socket path: this
    producer connects, negotiates, sets up ``memory`` (or a memfd it makes)
    and a ``queue_size`` ring, and closes the connection), ``spawn`` (the
    same, with a private qemu-storage-daemon it starts and stops) and
    ``connection`` (the VMM's established connection, a :class:`Connection`
    or a socket fd: only SET_VRING_CALL is sent on it; ``reply_ack`` says
    whether the VMM negotiated REPLY_ACK). ``kicks_on_set_call`` says whether
    the back-end signals each new call fd once (None: find out when owning the
    connection, assume so, as libvhost-user does, on a handed one).
    ``requests`` > 0 makes the producer itself queue that many virtio-blk
    requests, one at a time at ``rate`` per second, after ``delay`` seconds
    (the demo's load: the delay lets a topology pair it first). Every wait on the
    back-end is bounded by ``timeout`` seconds. Constructing only validates.

    The options are the fields of :class:`~._settings.VhostUserSettings`: give
    them as keywords, or ``settings`` made already (as :meth:`from_spec`
    does), not both.
    """

    kind = "vhost-user"

    def __init__(
        self,
        *,
        token: Hashable,
        queue: int | None = None,
        irq: int | None = None,
        name: str | None = None,
        settings: VhostUserSettings | None = None,
        **options: Unpack[VhostUserOptions],
    ) -> None:
        q = self.number(queue, irq) if settings is None else settings.queue
        super().__init__(token=token, irq=self.number(irq, q), name=name)
        what = f"{self.kind} producer {self.name!r}"
        if settings is None:
            with irqbypass.plugin.Settings.naming(what):
                settings = VhostUserSettings(queue=q, **options)
        elif options or queue is not None:
            given = sorted([*options, *(["queue"] if queue is not None else [])])
            raise irqbypass.InvalidEndpointError(
                f"{what}: give settings or the options ({', '.join(given)}), not both"
            )
        #: the options, checked once
        self.settings = settings
        s = settings
        load = BlkLoad(self, self.lock, requests=s.requests, rate=s.rate, delay=s.delay)
        #: the virtqueue's call interrupt: the device's side, with the load it feeds
        self._call = VirtqueueCall(self, settings, load)
        self.interrupt = self._call

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> VhostUserProducer:
        opts = spec.options_reader()
        settings = VhostUserSettings.read(opts, spec.irq)
        opts.finish()
        return cls(token=spec.token, irq=spec.irq, name=spec.name, settings=settings)

    # -- the settings, as the producer's attributes -------------------------------

    queue = irqbypass.plugin.Alias[int]("settings.queue")
    socket_path = irqbypass.plugin.Alias[str | None]("settings.socket")
    spawn = irqbypass.plugin.Alias[bool]("settings.spawn")
    timeout = irqbypass.plugin.Alias[float]("settings.timeout")
    queue_size = irqbypass.plugin.Alias[int]("settings.queue_size")
    reply_ack = irqbypass.plugin.Alias[bool]("settings.reply_ack")
    requests = irqbypass.plugin.Alias[int]("settings.requests")
    rate = irqbypass.plugin.Alias[float]("settings.rate")
    delay = irqbypass.plugin.Alias[float]("settings.delay")
    drain_timeout = irqbypass.plugin.Alias[float]("settings.drain_timeout")
    backend_uid = irqbypass.plugin.Alias[int | None]("settings.backend_uid")
    owns_connection = irqbypass.plugin.Alias[bool]("settings.owns_connection")

    # -- naming, and what the call holds while open -------------------------------

    def interrupt_name(self) -> str:
        return f"virtqueue {self.queue}"

    def where(self) -> str:
        return f"{self._call.backend_label()}, {self.interrupt_name()}"

    connection = irqbypass.plugin.Alias[Connection | None]("_call.conn")
    #: The private qemu-storage-daemon (``spawn``), while open.
    daemon = irqbypass.plugin.Alias[StorageDaemon | None]("_call.daemon")

    @property
    def memory(self) -> GuestMemory | None:
        """The memory the back-end was given (owned connections, while open)."""
        return None if self._call.own is None else self._call.own.memory

    @property
    def ring(self) -> SplitRing | None:
        """The virtqueue's ring (owned connections, while open)."""
        return None if self._call.own is None else self._call.own.ring

    @property
    def driver(self) -> BlkDriver | None:
        """The virtio-blk driver on :attr:`ring` (owned connections, while open)."""
        return None if self._call.own is None else self._call.own.driver

    #: The back-end's virtio features (GET_FEATURES of an owned connection).
    features = irqbypass.plugin.Alias[int]("_call.features")
    #: The protocol features negotiated (of those this producer asks for).
    protocol_features = irqbypass.plugin.Alias[int]("_call.protocol_features")
    #: The back-end's virtqueues (GET_QUEUE_NUM, with MQ).
    queue_count = irqbypass.plugin.Alias[int | None]("_call.queue_count")
    #: The eventfd the virtqueue's call signals: the token, or the holding eventfd while stopped;
    #: None when unbound.
    bound_to = irqbypass.plugin.Alias[int | None]("pointed_at")

    # -- the producer's own load ----------------------------------------------

    def submit(self, n: int = 1) -> int:
        """Queue ``n`` virtio-blk GET_ID requests on the producer's ring and
        kick the back-end; returns how many fitted (owned connections only)."""
        with self.lock:
            own = self._call.own
            if own is None or not own.ready:
                raise VhostUserError(
                    f"{self.describe()}: submit needs an open producer that owns its "
                    "connection (socket or spawn)",
                    errno=errno.ENOTCONN,
                )
            return own.submit(n, publish=not self.deferring)

    def reap(self) -> int:
        """Take finished requests off the used ring (not the call eventfd). A
        corrupt used ring is the back-end's fault: recorded in :attr:`problem`."""
        with self.lock:
            driver = self.driver
            if driver is None:
                return 0
            try:
                return driver.reap()
            except VhostUserError as exc:
                self.lose(exc)
                raise

    def check_alive(self) -> None:
        """Notice a back-end that hung up, without a message or a wait."""
        if self.problem_error is None and not self._call.alive():
            self.lose(
                BackendGoneError(
                    f"{self.describe()}: the back-end closed the connection: it exited or was "
                    "killed; close this producer, restart the back-end and open it again"
                )
            )

    @property
    def finished(self) -> bool:
        """With ``requests``: all completed, or the back-end went away."""
        with self.lock:
            self.check_alive()
            return self._call.load.finished()

    # -- status --------------------------------------------------------------

    def device_stats(self) -> Mapping[str, int]:
        self.check_alive()
        stats = {
            "swaps": self.swaps,
            "deferred": self._call.deferred,
            "backend_lost": self.losses,
            "opens": self._call.opens,
        }
        if self.owns_connection:
            driver = self.driver
            stats["completed"] = self._call.past["completed"] + (driver.completed if driver else 0)
            stats["failed"] = self._call.past["failed"] + (driver.failed if driver else 0)
            stats["in_flight"] = driver.in_flight if driver else 0
        return stats

    def stats(self) -> Mapping[str, int]:
        """``quiesces``: stops, ``swaps`` those that moved the call to the
        holding eventfd, ``deferred`` requests published only at start (an idle
        owned ring); ``held``/``replayed``: completions signalled while stopped and passed
        on at start (a held one the back-end's kick stood in for counts as
        ``absorbed``, in both); ``kicks``: the back-end's signals on each new
        call fd; ``phantom``: those that reached the token with no completion
        behind them; ``backend_lost``: opens whose back-end went away
        (:attr:`problem` says how). With ``requests``, ``fired`` is what the
        token was signalled (completions + phantom)."""
        stats = dict(super().stats())
        if self.requests:
            stats["fired"] = stats["completed"] + stats["phantom"]
        return stats
