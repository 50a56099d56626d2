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
negotiation, the ring this producer may feed, the drain before GET_VRING_BASE.

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

import irqbypass

from . import _wire as wire
from .blk import BlkDriver
from .connection import DEFAULT_TIMEOUT, MAX_TIMEOUT, Connection, check_socket_path
from .daemon import StorageDaemon
from .errors import BackendGoneError, VhostUserError
from .ring import GuestMemory, SplitRing

__all__ = ["VhostUserProducer"]

DEFAULT_QUEUE_SIZE = 256
DEFAULT_MEMORY = 1 << 20
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
        socket: str | None = None,
        spawn: bool = False,
        connection: Connection | int | None = None,
        queue: int | None = None,
        irq: int | None = None,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        memory: GuestMemory | None = None,
        reply_ack: bool = False,
        kicks_on_set_call: bool | None = None,
        requests: int = 0,
        rate: float = 100.0,
        delay: float = 0.0,
        drain_timeout: float = 5.0,
        backend_uid: int | None = None,
    ) -> None:
        q = self.number(queue, irq)
        super().__init__(token=token, irq=self.number(irq, q), name=name)
        what = f"vhost-user producer {self.name!r}"
        if sum((socket is not None, spawn, connection is not None)) != 1:
            raise irqbypass.InvalidEndpointError(
                f"{what}: give exactly one of socket (the back-end's socket path), spawn (a "
                "private qemu-storage-daemon) and connection (the VMM's connection) (got "
                f"socket={socket!r}, spawn={spawn!r}, connection={connection!r})"
            )
        if isinstance(connection, bool) or (isinstance(connection, int) and connection < 0):
            raise irqbypass.InvalidEndpointError(f"{what}: connection {connection!r} is not an fd")
        if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= wire.VRING_INDEX_MASK:
            raise irqbypass.InvalidEndpointError(
                f"{what}: queue {q!r} must be 0..{wire.VRING_INDEX_MASK} (the index field of "
                "SET_VRING_CALL has 8 bits)"
            )
        if connection is not None and (requests or memory is not None):
            raise irqbypass.InvalidEndpointError(
                f"{what}: requests and memory need a connection this producer owns (socket or "
                "spawn); on a handed connection the VMM owns the rings"
            )
        for key, value in (("timeout", timeout), ("drain_timeout", drain_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise irqbypass.InvalidEndpointError(
                    f"{what}: {key} must be a number of seconds, got {irqbypass.show_value(value)}"
                )
            if not 0 <= value <= MAX_TIMEOUT:  # NaN fails too
                raise irqbypass.InvalidEndpointError(
                    f"{what}: {key} must be 0..{MAX_TIMEOUT:g} seconds, got "
                    f"{irqbypass.show_value(value)}"
                )
        for key, count in (("requests", requests), ("backend_uid", backend_uid)):
            if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
                raise irqbypass.InvalidEndpointError(
                    f"{what}: {key} must be an integer, got {irqbypass.show_value(count)}"
                )
        for key, number in (("rate", rate), ("delay", delay)):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise irqbypass.InvalidEndpointError(
                    f"{what}: {key} must be a number, got {irqbypass.show_value(number)}"
                )
        if not timeout > 0 or requests < 0 or not 0 < rate < 1e9 or not 0 <= delay <= MAX_TIMEOUT:
            raise irqbypass.InvalidEndpointError(
                f"{what}: timeout and rate must be > 0, requests and delay >= 0 (delay at most "
                f"{MAX_TIMEOUT:g} s)"
            )
        if backend_uid is not None and not 0 <= backend_uid < 2**32 - 1:
            raise irqbypass.InvalidEndpointError(
                f"{what}: backend_uid {backend_uid} is not a uid (0..{2**32 - 2})"
            )
        if socket is not None:
            if not isinstance(socket, str):
                raise irqbypass.InvalidEndpointError(
                    f"{what}: socket must be a path (str), got {irqbypass.show_value(socket)}"
                )
            try:
                check_socket_path(socket)
            except VhostUserError as exc:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: {exc.message}", errno=exc.errno
                ) from exc
        self.queue = q
        self.socket_path = socket
        self.spawn = spawn
        self.timeout = timeout
        self.queue_size = queue_size
        self.reply_ack = reply_ack
        self.requests = requests
        self.rate = rate
        self.delay = delay
        self.drain_timeout = drain_timeout
        self.backend_uid = backend_uid
        self._given = connection
        self._given_memory = memory
        self._kicks_setting = kicks_on_set_call
        self._conn: Connection | None = None
        self._claims: list[tuple[object, int]] = []
        self._ready = False  # the open completed: detaching talks to the back-end
        self.daemon: StorageDaemon | None = None
        self.memory: GuestMemory | None = None
        self.ring: SplitRing | None = None
        self.driver: BlkDriver | None = None
        self._kick_fd: irqbypass.Eventfd | None = None
        #: the feeder: a periodic timer on the event loop (with requests)
        self._feeder: irqbypass.LoopHandle | None = None
        self.features = 0
        self.protocol_features = 0
        self.queue_count: int | None = None
        #: what the drivers of earlier opens completed
        self._past = {"completed": 0, "failed": 0}
        self._deferred = self._opens = 0

    @classmethod
    def from_spec(cls, spec: irqbypass.EndpointSpec) -> VhostUserProducer:
        opts = spec.options_reader()
        socket_path = opts.get_str("socket")
        spawn = opts.get_bool("spawn", False)
        fd = opts.get_fd("fd")
        if sum((socket_path is not None, spawn, fd is not None)) != 1:
            raise opts.error(
                "socket",
                "give exactly one of socket (the back-end's socket path), spawn = true (a "
                "private qemu-storage-daemon) and fd (a connection this process inherited)",
            )
        queue = opts.get_int("queue", spec.irq if spec.irq is not None else 0, min=0, max=255)
        if socket_path is not None:
            try:
                check_socket_path(socket_path)
            except VhostUserError as exc:
                raise opts.error("socket", exc.message) from exc
        timeout = opts.get_float("timeout", DEFAULT_TIMEOUT, min=0.001, max=MAX_TIMEOUT)
        backend_uid = opts.get_raw("backend_uid")
        if backend_uid is not None and (
            isinstance(backend_uid, bool)
            or not isinstance(backend_uid, int)
            or not 0 <= backend_uid < 2**32 - 1
        ):
            raise opts.error(
                "backend_uid",
                f"expected the uid the back-end runs as (an integer 0..{2**32 - 2}), got "
                f"{irqbypass.show_value(backend_uid)}",
            )
        queue_size = opts.get_int("queue_size", DEFAULT_QUEUE_SIZE, min=2, max=32768)
        if queue_size & (queue_size - 1):
            raise opts.error("queue_size", f"must be a power of 2, got {queue_size}")
        reply_ack = opts.get_bool("reply_ack", False)
        kicks = opts.get_raw("kicks_on_set_call")
        if kicks is not None and not isinstance(kicks, bool):
            raise opts.error("kicks_on_set_call", f"expected true or false, got {kicks!r}")
        requests = opts.get_int("requests", 0, min=0)
        rate = opts.get_float("rate", 100.0, min=0.001, max=1e6)
        delay = opts.get_float("delay", 0.0, min=0.0, max=MAX_TIMEOUT)
        if fd is not None and requests:
            raise opts.error("requests", "needs a connection this producer owns (socket or spawn)")
        opts.finish()
        return cls(
            token=spec.token,
            socket=socket_path,
            spawn=spawn,
            connection=fd,
            queue=queue,
            irq=spec.irq,
            name=spec.name,
            timeout=timeout,
            queue_size=queue_size,
            reply_ack=reply_ack,
            kicks_on_set_call=kicks,
            requests=requests,
            rate=rate,
            delay=delay,
            backend_uid=backend_uid,
        )

    # -- naming and errors -------------------------------------------------

    @property
    def owns_connection(self) -> bool:
        return self._given is None

    def _backend(self) -> str:
        if self.spawn:
            pid = self.daemon.pid if self.daemon is not None else None
            return f"its qemu-storage-daemon{'' if pid is None else f' pid {pid}'}"
        if self.socket_path is not None:
            return f"socket {self.socket_path}"
        if isinstance(self._given, Connection):
            return f"the VMM's connection, fd {self._given.fileno()}"
        return f"the VMM's connection, fd {self._given}"

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
    def bound_to(self) -> int | None:
        """The eventfd the virtqueue's call signals: the token, or the holding
        eventfd while stopped; None when unbound."""
        return self.pointed_at

    def device_open(self) -> None:
        """Connect (or take the VMM's connection); on an owned one negotiate
        and set up the ring, its call first on the holding eventfd."""
        self.signals_on_new_fd = self._kicks_setting
        if not self.owns_connection and self._kicks_setting is None:
            self.signals_on_new_fd = True  # as libvhost-user does: cannot probe a VMM's ring
        self._connect()
        if self.owns_connection:
            self._negotiate()
            self._set_up_ring()

    def device_ready(self) -> None:
        self._ready = True
        self._opens += 1
        if self.requests:
            self._start_feeder()

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
        self._stop_feeder()  # a tick never waits for our lock: no deadlock under it
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

        self._stop_feeder()
        self._ready = False
        conn = self._conn
        if conn is not None and conn is not self._given:
            step(conn.close)
        self._conn = None
        if self._kick_fd is not None:
            step(self._kick_fd.close)
            self._kick_fd = None
        if self.memory is not None and self.memory is not self._given_memory:
            step(self.memory.close)
        if self.driver is not None:
            self._past["completed"] += self.driver.completed
            self._past["failed"] += self.driver.failed
        self.memory = self.ring = self.driver = None
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
        ring, kick = self.ring, self._kick_fd
        if ring is not None and kick is not None and ring.unpublished:
            self._deferred += ring.unpublished
            ring.publish()
            kick.write()

    # -- the connection ------------------------------------------------------

    def _connect(self) -> None:
        if isinstance(self._given, Connection):
            key: object = ("connection", *self._given.identity())
            self._take_claim(key)
            self._conn = self._given
            return
        if self._given is not None:
            conn = Connection.from_fd(
                self._given, what=self.describe(), timeout=self.timeout, reply_ack=self.reply_ack
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
        if self._given_memory is not None:
            self.memory = self._given_memory
        else:
            slots = self.queue_size // 2
            ring_bytes = 16 * self.queue_size + 8 * self.queue_size + 3 * 4096
            need = ring_bytes + slots * 1024
            self.memory = GuestMemory.create(max(DEFAULT_MEMORY, (need + 4095) // 4096 * 4096))
        memory = self.memory
        self.ring = SplitRing(memory, memory.guest_addr, self.queue_size)
        self.driver = BlkDriver(self.ring, memory, self.ring.end_gpa)
        region = wire.MemoryRegion(memory.guest_addr, memory.size, memory.user_addr, 0)
        conn.request(
            wire.Request.SET_MEM_TABLE, wire.pack_memory_table([region]), [memory.fd], sync=True
        )
        q = self.queue
        ring = self.ring
        conn.request(wire.Request.SET_VRING_NUM, wire.pack_vring_state(q, ring.size), sync=True)
        conn.request(wire.Request.SET_VRING_BASE, wire.pack_vring_state(q, 0), sync=True)
        addr = wire.pack_vring_addr(
            q,
            desc=memory.user(ring.desc_gpa),
            used=memory.user(ring.used_gpa),
            avail=memory.user(ring.avail_gpa),
        )
        conn.request(wire.Request.SET_VRING_ADDR, addr, sync=True)
        self._kick_fd = irqbypass.Eventfd()
        conn.request(
            wire.Request.SET_VRING_KICK,
            wire.pack_vring_file(q, has_fd=True),
            [self._kick_fd.fileno()],
            sync=True,
        )
        # the call goes to the holding eventfd first: with nothing queued, what
        # it receives is the back-end's own kick, which tells whether it kicks
        if self.signals_on_new_fd is None:
            self.learn_signals_on_new_fd()
        else:
            self.point_at_holding()
        if self.features >> wire.VHOST_USER_F_PROTOCOL_FEATURES & 1:
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
            if self.driver is None or self._kick_fd is None:
                raise self._refuse(
                    "submit needs an open producer that owns its connection (socket or spawn)",
                    errno.ENOTCONN,
                )
            queued = self.driver.queue(n, publish=not self.deferring)
            if queued and not self.deferring:
                self._kick_fd.write()
            return queued

    def reap(self) -> int:
        """Take finished requests off the used ring (not the call eventfd). A
        corrupt used ring is the back-end's fault: recorded in :attr:`problem`."""
        with self._lock:
            if self.driver is None:
                return 0
            try:
                return self.driver.reap()
            except VhostUserError as exc:
                self.lose(exc)
                raise

    def _stop_feeder(self) -> None:
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            feeder.cancel()  # returns once a tick is not running (at once from one)

    def _start_feeder(self) -> None:
        self._feeder = irqbypass.event_loop().call_every(
            1.0 / self.rate, self._feed, owner=f"{self.describe()} (feeder)", delay=self.delay
        )

    def _feed(self) -> None:
        """The feeder, a timer on the event loop: what goes wrong in it is
        recorded in :attr:`problem` (which ``stats()``, ``finished`` and ``run``
        show) and ends the feeding, never a traceback that leaves the run
        waiting out its duration."""
        try:
            if self._feed_once():
                return
        except VhostUserError as exc:
            self.lose(exc)
        except Exception as exc:  # a bug here must still end the run with a report
            self.lose(
                VhostUserError(
                    f"{self.describe()}: the request feeder failed: "
                    f"{irqbypass.show_value(exc)}; this is a bug, please report it",
                    errno=errno.EIO,
                )
            )
        self._stop_feeder()

    def _feed_once(self) -> bool:
        """One tick: reap, and queue the next request once the last came back;
        False when there is nothing more to feed. Never waits for the lock (a
        stop or start holds it across a round trip to the back-end): a busy
        tick is tried again at the next."""
        if not self._lock.acquire(blocking=False):
            return True
        try:
            driver = self.driver
            self._check_alive()
            if driver is None or self.problem is not None:
                return False
            self.reap()
            if driver.completed >= self.requests:
                return False
            if driver.submitted < self.requests and driver.in_flight == 0:
                self.submit(1)
            return True
        finally:
            self._lock.release()

    def _check_alive(self) -> None:
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
            self._check_alive()
            driver = self.driver
            if not self.requests:
                return False
            return self.problem is not None or (
                driver is not None and driver.completed >= self.requests
            )

    # -- status --------------------------------------------------------------

    def device_stats(self) -> Mapping[str, int]:
        self._check_alive()
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
