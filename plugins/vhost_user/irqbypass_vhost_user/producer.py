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
and loss accounting, signal safety) is :class:`irqbypass.DeviceProducer`'s;
this module holds only what is vhost-user's own: the connection, the
negotiation, the drain before GET_VRING_BASE. The options are one checked
value (:class:`~.settings.VhostUserSettings`), the ring this producer may feed
is an :class:`~.vring.OwnedRing` and its own load a :class:`~.load.BlkLoad`.

Two ways, as the other producers: own the connection (``socket``: connect,
negotiate, give it the memory and a ring this producer makes, or ``spawn`` a
private qemu-storage-daemon) or take the VMM's established connection
(``connection``) and only bind the virtqueue's call.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING

import irqbypass

from . import _wire as wire
from .blk import BlkDriver
from .connection import Connection
from .daemon import StorageDaemon
from .errors import BackendGoneError, VhostUserError
from .load import BlkLoad
from .ring import GuestMemory, SplitRing
from .settings import VhostUserSettings
from .vring import OwnedRing

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .settings import VhostUserOptions

__all__ = ["VhostUserProducer"]

#: the requests a front-end that owns the connection asks for
WANTED_PROTOCOL = (1 << wire.ProtocolFeature.REPLY_ACK) | (1 << wire.ProtocolFeature.MQ)

_claims: dict[tuple[object, int], str] = {}
_claims_lock = threading.Lock()


class VhostUserProducer(irqbypass.DeviceProducer):
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

    The options are the fields of :class:`~.settings.VhostUserSettings`: give
    them as keywords, or ``settings`` made already (as :meth:`from_spec`
    does), not both.
    """

    gone_errors = (BackendGoneError,)
    #: None: an owned connection finds out at its first bind (a handed one
    #: assumes so, as libvhost-user does); kicks_on_set_call says it
    signals_on_new_fd = None
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
        if settings is None:
            settings = self._settings(q, options)
        elif options or queue is not None:
            given = sorted([*options, *(["queue"] if queue is not None else [])])
            raise irqbypass.InvalidEndpointError(
                f"{self._who()}: give settings or the options ({', '.join(given)}), not both"
            )
        #: the options, checked once
        self.settings = settings
        self._conn: Connection | None = None
        self._claims: list[tuple[object, int]] = []
        self._ready = False  # the open completed: detaching talks to the back-end
        self.daemon: StorageDaemon | None = None
        self._own: OwnedRing | None = None  # the ring, on a connection this producer owns
        s = self.settings
        self._load = BlkLoad(self, self._lock, requests=s.requests, rate=s.rate, delay=s.delay)
        self.features = 0
        self.protocol_features = 0
        self.queue_count: int | None = None
        #: what the drivers of earlier opens completed
        self._past = {"completed": 0, "failed": 0}
        self._deferred = self._opens = 0

    def _who(self) -> str:
        return f"{self.kind} producer {self.name!r}"

    def _settings(self, queue: int, options: VhostUserOptions) -> VhostUserSettings:
        """The keywords' settings; a refusal names this producer."""
        try:
            return VhostUserSettings(queue=queue, **options)
        except irqbypass.InvalidEndpointError as exc:
            raise irqbypass.InvalidEndpointError(
                f"{self._who()}: {exc.message}", errno=exc.errno
            ) from exc

    @classmethod
    def from_spec(cls, spec: irqbypass.EndpointSpec) -> VhostUserProducer:
        opts = spec.options_reader()
        settings = VhostUserSettings.read(opts, spec.irq)
        opts.finish()
        return cls(token=spec.token, irq=spec.irq, name=spec.name, settings=settings)

    # -- the settings, as the producer's attributes -------------------------------

    @property
    def queue(self) -> int:
        return self.settings.queue

    @property
    def socket_path(self) -> str | None:
        return self.settings.socket

    @property
    def spawn(self) -> bool:
        return self.settings.spawn

    @property
    def timeout(self) -> float:
        return self.settings.timeout

    @property
    def queue_size(self) -> int:
        return self.settings.queue_size

    @property
    def reply_ack(self) -> bool:
        return self.settings.reply_ack

    @property
    def requests(self) -> int:
        return self.settings.requests

    @property
    def rate(self) -> float:
        return self.settings.rate

    @property
    def delay(self) -> float:
        return self.settings.delay

    @property
    def drain_timeout(self) -> float:
        return self.settings.drain_timeout

    @property
    def backend_uid(self) -> int | None:
        return self.settings.backend_uid

    # -- naming and errors -------------------------------------------------

    @property
    def owns_connection(self) -> bool:
        return self.settings.owns_connection

    def _backend(self) -> str:
        if self.spawn:
            pid = self.daemon.pid if self.daemon is not None else None
            return f"its qemu-storage-daemon{'' if pid is None else f' pid {pid}'}"
        if self.socket_path is not None:
            return f"socket {self.socket_path}"
        given = self.settings.connection
        if isinstance(given, Connection):
            return f"the VMM's connection, fd {given.fileno()}"
        return f"the VMM's connection, fd {given}"

    def interrupt_name(self) -> str:
        return f"virtqueue {self.queue}"

    def where(self) -> str:
        return f"{self._backend()}, {self.interrupt_name()}"

    def _refuse(self, problem: str, code: int = errno.EINVAL) -> VhostUserError:
        return VhostUserError(f"{self.describe()}: {problem}", errno=code)

    # -- the device's primitives ---------------------------------------------

    @property
    def connection(self) -> Connection | None:
        return self._conn

    @property
    def memory(self) -> GuestMemory | None:
        """The memory the back-end was given (owned connections, while open)."""
        return None if self._own is None else self._own.memory

    @property
    def ring(self) -> SplitRing | None:
        """The virtqueue's ring (owned connections, while open)."""
        return None if self._own is None else self._own.ring

    @property
    def driver(self) -> BlkDriver | None:
        """The virtio-blk driver on :attr:`ring` (owned connections, while open)."""
        return None if self._own is None else self._own.driver

    @property
    def bound_to(self) -> int | None:
        """The eventfd the virtqueue's call signals: the token, or the holding
        eventfd while stopped; None when unbound."""
        return self.pointed_at

    def device_open(self) -> None:
        """Connect (or take the VMM's connection); on an owned one negotiate
        and set up the ring, its call first on the holding eventfd."""
        kicks = self.settings.kicks_on_set_call
        self.signals_on_new_fd = kicks
        if not self.owns_connection and kicks is None:
            self.signals_on_new_fd = True  # as libvhost-user does: cannot probe a VMM's ring
        self._connect()
        if self.owns_connection:
            self._negotiate()
            self._set_up_ring()

    def device_ready(self) -> None:
        self._ready = True
        self._opens += 1
        self._load.start()

    def device_point(self, fd: int) -> None:
        """SET_VRING_CALL to ``fd``, synchronously (REPLY_ACK or a round trip)."""
        conn = self._conn
        assert conn is not None
        try:
            # waits for the ack interruptibly (Connection): a Ctrl-C there leaves
            # the connection unusable and what the back-end was told unknown
            conn.request(
                wire.Request.SET_VRING_CALL,
                wire.pack_vring_file(self.queue, has_fd=True),
                [fd],
                sync=True,
            )
        except BaseException:
            if conn.broken is not None:
                self.lose(conn.broken)
            raise

    def device_detach(self) -> None:
        """Drain, move the call to the holding eventfd (never the no-fd flag),
        stop the ring. A rolled-back open of an owned connection only closes
        it: the back-end forgets the ring with the connection."""
        self._load.stop()  # a tick never waits for our lock: no deadlock under it
        if not self._ready and self.owns_connection:
            return
        drained = self._drain()
        self.point_at_holding()
        if not self.owns_connection:
            return
        if not drained:
            assert self.ring is not None
            raise self._refuse(
                f"{self.ring.in_flight} requests were still in flight after "
                f"{self.drain_timeout:g} s; closed without GET_VRING_BASE (which closes the "
                "call eventfd, so qemu-storage-daemon panics on what completes after its "
                "reply and those completions are lost): the back-end is stuck, see its log",
                errno.ETIMEDOUT,
            )
        self._stop_ring()

    def device_close(self) -> None:
        """Release everything, every step attempted whatever the one before
        did (Ctrl-C included); then raise the first failure (a Ctrl-C first)."""
        errors: list[BaseException] = []

        def step(release: Callable[[], object]) -> None:
            try:
                release()
            except BackendGoneError as exc:
                self.lose(exc)
            except BaseException as exc:  # kept, re-raised once everything is released
                errors.append(exc)

        self._load.stop()
        self._ready = False
        conn = self._conn
        if conn is not None and conn is not self.settings.connection:
            step(conn.close)
        self._conn = None
        own, self._own = self._own, None
        if own is not None:
            if own.driver is not None:
                self._past["completed"] += own.driver.completed
                self._past["failed"] += own.driver.failed
            own.close(step)
        if self.daemon is not None:
            step(self.daemon.close)
            self.daemon = None
        with _claims_lock:
            for claim in self._claims:
                _claims.pop(claim, None)
        self._claims.clear()
        if errors:
            raise min(errors, key=lambda exc: isinstance(exc, Exception))

    def device_defer(self) -> bool:
        """A ring this producer owns with nothing in flight cannot complete:
        stop only defers what :meth:`submit` publishes (no message, no kick)."""
        return self.ring is not None and self.ring.in_flight == 0

    def device_resume(self) -> None:
        """Publish what was deferred and kick the back-end."""
        if self._own is not None:
            self._deferred += self._own.resume()

    # -- the connection ------------------------------------------------------

    def _connect(self) -> None:
        given = self.settings.connection
        if isinstance(given, Connection):
            key: object = ("connection", *given.identity())
            self._take_claim(key)
            self._conn = given
            return
        if given is not None:
            conn = Connection.from_fd(
                given, what=self.describe(), timeout=self.timeout, reply_ack=self.reply_ack
            )
            try:
                self._take_claim(("connection", *conn.identity()))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return
        if self.spawn:
            self.daemon = StorageDaemon()
            self.daemon.start()
            path = self.daemon.socket_path
        else:
            assert self.socket_path is not None
            path = self.socket_path
        self._take_claim(("socket", os.path.realpath(path)))
        self._conn = Connection.connect(
            path, what=self.describe(), timeout=self.timeout, backend_uid=self.backend_uid
        )
        self._take_claim(("connection", *self._conn.identity()))

    def _take_claim(self, key: object) -> None:
        with _claims_lock:
            holder = _claims.get((key, self.queue))
            if holder is not None:
                raise irqbypass.BusyError(
                    f"{self.describe()}: virtqueue {self.queue} of this back-end is already bound "
                    f"by producer {holder!r} in this process; a virtqueue has one call eventfd: "
                    "close that producer first, or use another virtqueue",
                    errno=errno.EBUSY,
                )
            _claims[(key, self.queue)] = self.name
            self._claims.append((key, self.queue))

    def _negotiate(self) -> None:
        """GET_FEATURES ... SET_FEATURES, as QEMU's vhost_user_backend_init and
        vhost_dev_start do it, asking only for what this producer uses."""
        conn = self._conn
        assert conn is not None
        self.features = wire.unpack_u64(conn.request(wire.Request.GET_FEATURES))
        if not self.features >> wire.VIRTIO_F_VERSION_1 & 1:
            raise self._refuse(
                f"the back-end does not offer VIRTIO_F_VERSION_1 (features {self.features:#x}); "
                "this producer lays out virtio 1.x rings only",
                errno.ENOTSUP,
            )
        protocol = self.features >> wire.VHOST_USER_F_PROTOCOL_FEATURES & 1
        if protocol:
            offered = wire.unpack_u64(conn.request(wire.Request.GET_PROTOCOL_FEATURES))
            self.protocol_features = offered & WANTED_PROTOCOL
            conn.request(wire.Request.SET_PROTOCOL_FEATURES, wire.pack_u64(self.protocol_features))
            conn.reply_ack = bool(self.protocol_features >> wire.ProtocolFeature.REPLY_ACK & 1)
        if self.protocol_features >> wire.ProtocolFeature.MQ & 1:
            self.queue_count = wire.unpack_u64(conn.request(wire.Request.GET_QUEUE_NUM))
            if self.queue >= self.queue_count:
                raise self._refuse(
                    f"virtqueue {self.queue} is out of range: the back-end has "
                    f"{self.queue_count} (GET_QUEUE_NUM), 0..{self.queue_count - 1}; for "
                    "qemu-storage-daemon raise num-queues in --export",
                    errno.ENOBUFS,
                )
        conn.request(wire.Request.SET_OWNER, sync=True)
        acked = 1 << wire.VIRTIO_F_VERSION_1 | protocol << wire.VHOST_USER_F_PROTOCOL_FEATURES
        conn.request(wire.Request.SET_FEATURES, wire.pack_u64(acked), sync=True)

    def _set_up_ring(self) -> None:
        conn = self._conn
        assert conn is not None
        own = self._own = OwnedRing(self.queue, self.queue_size, self.settings.memory)
        own.set_up(conn)
        # the call goes to the holding eventfd first: with nothing queued, what
        # it receives is the back-end's own kick, which tells whether it kicks
        if self.signals_on_new_fd is None:
            self.learn_signals_on_new_fd()
        else:
            self.point_at_holding()
        if self.features >> wire.VHOST_USER_F_PROTOCOL_FEATURES & 1:
            q = self.queue
            conn.request(wire.Request.SET_VRING_ENABLE, wire.pack_vring_state(q, 1), sync=True)

    def _drain(self) -> bool:
        """Wait (up to drain_timeout) until the back-end returned every request
        it was given: GET_VRING_BASE closes the call eventfd, so requests still
        in flight complete after its reply, fail to signal and make
        qemu-storage-daemon panic. True when the ring is empty."""
        ring = self.ring
        if ring is None:
            return True
        waited = threading.Event()
        for _ in range(max(1, int(self.drain_timeout * 1000))):
            if ring.in_flight == 0:
                return True
            # the used ring has no notification of its own here; a wait on the
            # back-end, so one a Ctrl-C ends at once (in the teardown's section)
            irqbypass.interruptible(waited.wait, 0.001)
        return ring.in_flight == 0

    def _stop_ring(self) -> None:
        conn = self._conn
        ring = self.ring
        assert conn is not None and ring is not None
        reply = conn.request(wire.Request.GET_VRING_BASE, wire.pack_vring_state(self.queue, 0))
        index, base = wire.unpack_vring_state(reply)
        if index != self.queue or base != ring.avail_idx:
            raise self._refuse(
                f"GET_VRING_BASE answered index {index}, base {base}; expected index "
                f"{self.queue}, base {ring.avail_idx} (every request given back)",
                errno.EPROTO,
            )

    # -- the producer's own load ----------------------------------------------

    def submit(self, n: int = 1) -> int:
        """Queue ``n`` virtio-blk GET_ID requests on the producer's ring and
        kick the back-end; returns how many fitted (owned connections only)."""
        with self._lock:
            if self._own is None or not self._own.ready:
                raise self._refuse(
                    "submit needs an open producer that owns its connection (socket or spawn)",
                    errno.ENOTCONN,
                )
            return self._own.submit(n, publish=not self.deferring)

    def reap(self) -> int:
        """Take finished requests off the used ring (not the call eventfd). A
        corrupt used ring is the back-end's fault: recorded in :attr:`problem`."""
        with self._lock:
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
        if self._conn is not None and self.problem_error is None and not self._conn.alive():
            self.lose(
                BackendGoneError(
                    f"{self.describe()}: the back-end closed the connection: it exited or was "
                    "killed; close this producer, restart the back-end and open it again"
                )
            )

    @property
    def finished(self) -> bool:
        """With ``requests``: all completed, or the back-end went away."""
        with self._lock:
            self.check_alive()
            return self._load.finished()

    # -- status --------------------------------------------------------------

    def device_stats(self) -> Mapping[str, int]:
        self.check_alive()
        stats = {
            "swaps": self.swaps,
            "deferred": self._deferred,
            "backend_lost": self.losses,
            "opens": self._opens,
        }
        if self.owns_connection:
            driver = self.driver
            stats["completed"] = self._past["completed"] + (driver.completed if driver else 0)
            stats["failed"] = self._past["failed"] + (driver.failed if driver else 0)
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
