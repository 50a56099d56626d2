"""The call interrupt of one virtqueue of a vhost-user back-end: the device's side.

The device is a process. Opening it is connecting (or taking the VMM's
connection) and, on a connection the producer owns, negotiating and setting
up the ring (:class:`~._vring.OwnedRing`), its call first on the holding
eventfd; pointing the interrupt is one acked ``SET_VRING_CALL``; detaching
drains the ring, moves the call to the holding eventfd (never the no-fd
flag) and takes the ring back with ``GET_VRING_BASE``. :class:`VirtqueueCall`
is that :class:`irqbypass.plugin.DeviceInterrupt`, on its own state; the producer
(:class:`irqbypass.plugin.DeviceProducer`) composes it with the lock, the holding
eventfd and the counts. What the producers of one back-end share in this
process (which of them binds each virtqueue) is a :class:`Backend`, a device
group in the core's registry.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Hashable
from typing import Protocol

import irqbypass
import irqbypass.plugin
import irqbypass.system

from . import _wire as wire
from ._load import BlkLoad
from ._settings import VhostUserSettings
from ._vring import OwnedRing
from .connection import Connection, Turns
from .daemon import StorageDaemon
from .errors import BackendGoneError, VhostUserError
from .ring import SplitRing

__all__ = ["WANTED_PROTOCOL", "Backend", "CallHost", "VirtqueueCall"]

#: the requests a front-end that owns the connection asks for
WANTED_PROTOCOL = (1 << wire.ProtocolFeature.REPLY_ACK) | (1 << wire.ProtocolFeature.MQ)


class CallHost(Protocol):
    """What the virtqueue's call needs of the producer that composes it."""

    name: str
    seam: irqbypass.system.Seam

    def describe(self) -> str: ...
    def lose(self, error: irqbypass.IrqBypassError) -> None: ...
    def point_at_holding(self) -> None: ...
    def learn_signals_on_new_fd(self) -> None: ...


class Backend(irqbypass.plugin.DeviceGroup):
    """A back-end as the producers of this process share it, under one key (its
    socket's real path, or one connection's identity): which producer binds
    each of its virtqueues (:meth:`claim`; a virtqueue has one call eventfd).

    It holds no device fd (-1): the device is a process, and each producer
    that owns its connection has one of its own (qemu-storage-daemon serves one
    front-end at a time); a handed connection stays the VMM's. Shared under a
    connection's identity, it holds the :class:`~.connection.Turns` of every
    producer's connection to that socket."""

    def __init__(self) -> None:
        super().__init__(-1)
        self.turns: Turns | None = None

    def take_turns(self, conn: Connection) -> None:
        """Have ``conn`` (before its first request here) take turns with the
        other producers' connections to this socket."""
        if self.turns is None:
            self.turns = conn.turns
        else:
            conn.turns = self.turns


class VirtqueueCall(irqbypass.plugin.DeviceInterrupt):
    """Virtqueue ``settings.queue``'s call interrupt of the back-end ``settings``
    name, composed by ``host``; one per producer, across its opens. ``load`` is
    the work the producer feeds the device itself: started once the open is
    complete, stopped before the call is detached or closed."""

    gone_errors = (BackendGoneError,)
    #: None: an owned connection finds out at its first bind (a handed one
    #: assumes so, as libvhost-user does); kicks_on_set_call says it
    signals_on_new_fd: bool | None = None

    def __init__(self, host: CallHost, settings: VhostUserSettings, load: BlkLoad) -> None:
        self.host = host
        self.settings = settings
        self.load = load
        self.queue = settings.queue
        self.conn: Connection | None = None
        self.daemon: StorageDaemon | None = None
        #: the ring, on a connection the producer owns, while open
        self.own: OwnedRing | None = None
        self.features = 0
        self.protocol_features = 0
        self.queue_count: int | None = None
        self._backends: list[Backend] = []  # those this virtqueue is claimed in
        self._ready = False  # the open completed: detaching talks to the back-end
        #: completed opens, requests published only at resume, and what the
        #: drivers of earlier opens completed
        self.opens = self.deferred = 0
        self.past = {"completed": 0, "failed": 0}

    def backend_label(self) -> str:
        """The back-end, for messages ("socket PATH", "its qemu-storage-daemon pid N")."""
        s = self.settings
        if s.spawn:
            pid = self.daemon.pid if self.daemon is not None else None
            return f"its qemu-storage-daemon{'' if pid is None else f' pid {pid}'}"
        if s.socket is not None:
            return f"socket {s.socket}"
        if isinstance(s.connection, Connection):
            return f"the VMM's connection, fd {s.connection.fileno()}"
        return f"the VMM's connection, fd {s.connection}"

    def _refuse(self, problem: str, code: int = errno.EINVAL) -> VhostUserError:
        return VhostUserError(f"{self.host.describe()}: {problem}", errno=code)

    # -- the device's operations ----------------------------------------------

    def open(self) -> None:
        """Connect (or take the VMM's connection); on an owned one negotiate
        and set up the ring, its call first on the holding eventfd."""
        kicks = self.settings.kicks_on_set_call
        self.signals_on_new_fd = kicks
        if not self.settings.owns_connection and kicks is None:
            self.signals_on_new_fd = True  # as libvhost-user does: cannot probe a VMM's ring
        self._connect()
        if self.settings.owns_connection:
            self._negotiate()
            self._set_up_ring()

    def ready(self) -> None:
        """The open is complete: count it and start the load."""
        self._ready = True
        self.opens += 1
        self.load.start()

    def point(self, fd: int) -> None:
        """SET_VRING_CALL to ``fd``, synchronously (REPLY_ACK or a round trip)."""
        conn = self.conn
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
                self.host.lose(conn.broken)
            raise

    def detach(self) -> None:
        """Drain, move the call to the holding eventfd (never the no-fd flag),
        stop the ring. A rolled-back open of an owned connection only closes
        it: the back-end forgets the ring with the connection."""
        self.load.stop()  # a tick never waits for the producer's lock: no deadlock under it
        owned = self.settings.owns_connection
        if not self._ready and owned:
            return
        drained = self._drain()
        self.host.point_at_holding()
        if not owned:
            return
        if not drained:
            assert self.own is not None and self.own.ring is not None
            raise self._refuse(
                f"{self.own.ring.in_flight} requests were still in flight after "
                f"{self.settings.drain_timeout:g} s; closed without GET_VRING_BASE (which "
                "closes the call eventfd, so qemu-storage-daemon panics on what completes "
                "after its reply and those completions are lost): the back-end is stuck, "
                "see its log",
                errno.ETIMEDOUT,
            )
        self._stop_ring()

    def close(self) -> None:
        """Release everything, every step attempted whatever the one before
        did (Ctrl-C included); then raise the first failure (a Ctrl-C first)."""
        errors: list[BaseException] = []

        def step(release: Callable[[], object]) -> None:
            try:
                release()
            except BackendGoneError as exc:
                self.host.lose(exc)
            except BaseException as exc:  # kept, re-raised once everything is released
                errors.append(exc)

        self.load.stop()
        self._ready = False
        conn, self.conn = self.conn, None
        if conn is not None and conn is not self.settings.connection:
            step(conn.close)
        own, self.own = self.own, None
        if own is not None:
            if own.driver is not None:
                self.past["completed"] += own.driver.completed
                self.past["failed"] += own.driver.failed
            own.close(step)
        if self.daemon is not None:
            step(self.daemon.close)
            self.daemon = None
        while self._backends:
            backend = self._backends.pop()
            backend.unclaim(self.queue)
            backend.unshare()
        if errors:
            raise min(errors, key=lambda exc: isinstance(exc, Exception))

    def defer(self) -> bool:
        """A ring this producer owns with nothing in flight cannot complete:
        stop only defers what the producer submits (no message, no kick)."""
        ring = None if self.own is None else self.own.ring
        return ring is not None and ring.in_flight == 0

    def resume(self) -> None:
        """Publish what was deferred and kick the back-end."""
        if self.own is not None:
            self.deferred += self.own.resume()

    def alive(self) -> bool:
        """False once the back-end hung up (no message, no wait); True unconnected."""
        return self.conn is None or self.conn.alive()

    # -- the steps ---------------------------------------------------------------

    def _connect(self) -> None:
        given, s = self.settings.connection, self.settings
        if isinstance(given, Connection):
            self._claim_connection(given)
            self.conn = given
            return
        if given is not None:
            conn = Connection.from_fd(
                given, what=self.host.describe(), timeout=s.timeout, reply_ack=s.reply_ack
            )
            try:
                self._claim_connection(conn)
            except BaseException:
                conn.close()
                raise
            self.conn = conn
            return
        if s.spawn:
            self.daemon = StorageDaemon()
            self.daemon.start()
            path = self.daemon.socket_path
        else:
            assert s.socket is not None
            path = s.socket
        self._take_claim(("socket", os.path.realpath(path)))
        self.conn = Connection.connect(
            path, what=self.host.describe(), timeout=s.timeout, backend_uid=s.backend_uid
        )
        self._claim_connection(self.conn)

    def _claim_connection(self, conn: Connection) -> None:
        """Claim this virtqueue on ``conn``'s socket, whose requests then take
        turns with those of the other producers on it."""
        self._take_claim(("connection", *conn.identity())).take_turns(conn)

    def _take_claim(self, key: Hashable) -> Backend:
        """Claim this virtqueue in the back-end shared under ``key``, or refuse
        (EBUSY) if another producer of this process binds it."""
        backend = Backend.share(self.host.seam, ("vhost-user", key), Backend)
        holder = backend.claim(self.queue, self.host.name)
        if holder is not None:
            backend.unshare()
            raise irqbypass.BusyError(
                f"{self.host.describe()}: virtqueue {self.queue} of this back-end is "
                f"already bound by producer {holder!r} in this process; a virtqueue has one "
                "call eventfd: close that producer first, or use another virtqueue",
                errno=errno.EBUSY,
            )
        self._backends.append(backend)
        return backend

    def _negotiate(self) -> None:
        """GET_FEATURES ... SET_FEATURES, as QEMU's vhost_user_backend_init and
        vhost_dev_start do it, asking only for what this producer uses."""
        conn = self.conn
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
        conn = self.conn
        assert conn is not None
        own = self.own = OwnedRing(self.queue, self.settings.queue_size, self.settings.memory)
        own.set_up(conn)
        # the call goes to the holding eventfd first: with nothing queued, what
        # it receives is the back-end's own kick, which tells whether it kicks
        if self.signals_on_new_fd is None:
            self.host.learn_signals_on_new_fd()
        else:
            self.host.point_at_holding()
        if self.features >> wire.VHOST_USER_F_PROTOCOL_FEATURES & 1:
            enable = wire.pack_vring_state(self.queue, 1)
            conn.request(wire.Request.SET_VRING_ENABLE, enable, sync=True)

    def _drain(self) -> bool:
        """Wait (up to drain_timeout) until the back-end returned every request
        it was given: GET_VRING_BASE closes the call eventfd, so requests still
        in flight complete after its reply, fail to signal and make
        qemu-storage-daemon panic. True when the ring is empty."""
        ring = None if self.own is None else self.own.ring
        if ring is None or ring.in_flight == 0:
            return True
        return _wait_for_completions(ring, self.settings.drain_timeout)

    def _stop_ring(self) -> None:
        conn = self.conn
        ring = None if self.own is None else self.own.ring
        assert conn is not None and ring is not None
        reply = conn.request(wire.Request.GET_VRING_BASE, wire.pack_vring_state(self.queue, 0))
        index, base = wire.unpack_vring_state(reply)
        if index != self.queue or base != ring.avail_idx:
            raise self._refuse(
                f"GET_VRING_BASE answered index {index}, base {base}; expected index "
                f"{self.queue}, base {ring.avail_idx} (every request given back)",
                errno.EPROTO,
            )


@irqbypass.plugin.waits_on_peer
def _wait_for_completions(ring: SplitRing, timeout: float) -> bool:
    """Whether the back-end returned every request in flight within ``timeout``
    seconds. The used ring has no notification of its own here: a wait on the
    back-end, so one a Ctrl-C ends at once (in the teardown's section too)."""
    waited = threading.Event()
    for _ in range(max(1, int(timeout * 1000))):
        waited.wait(0.001)
        if ring.in_flight == 0:
            return True
    return False
