"""The ``posted-interrupt`` consumer: a paired producer posts into a descriptor.

While the consumer is open and paired, its producer gets a direct posting path
(``offer_direct_path``); a producer that declines keeps signalling its eventfd,
and a relay reads the eventfd and posts what it read. An optional drainer plays
the vCPU: on each notification it syncs PIR into its IRR. Relay and drainer are
readers on the process's event loop (:func:`irqbypass.event_loop`), not threads.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Hashable, Mapping

import irqbypass

from ._backing import problem_with_path
from ._descriptor import LockMode, Port, PostedDescriptor, check_vector

__all__ = ["DEFAULT_NV", "PostedInterruptConsumer"]

#: Linux's POSTED_INTR_VECTOR: the notification vector KVM programs into NV.
DEFAULT_NV = 0xF2

log = logging.getLogger("irqbypass.posted")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PostedInterruptConsumer(irqbypass.Consumer):
    """Posts its producer's interrupts into a :class:`PostedDescriptor`.

    ``vector``: the vector to post (default: the producer's ``irq``).
    ``urgent``: posts notify even while SN is set (also taken from a producer
    attribute ``urgent``). ``nv``, ``ndst``, ``sn``: the descriptor's control
    fields. ``file``: a record at this path (mode 0600, removed on close) names
    the descriptor's sealed memory, so another process can map it; ``lock``:
    ``"file"`` (default with a file) or ``"process"``. ``drain``: play the
    vCPU, syncing on every notification (a reader on the event loop). The
    descriptor exists while the consumer is open.
    """

    def __init__(
        self,
        *,
        token: Hashable,
        name: str | None = None,
        vector: int | None = None,
        urgent: bool = False,
        nv: int = DEFAULT_NV,
        ndst: int = 0,
        sn: bool = False,
        file: str | None = None,
        lock: LockMode | None = None,
        drain: bool = False,
    ) -> None:
        super().__init__(token=token, name=name)
        what = f"posted-interrupt consumer {self.name!r}"
        try:
            for key, flag in (("urgent", urgent), ("sn", sn), ("drain", drain)):
                if not isinstance(flag, bool):
                    raise irqbypass.InvalidEndpointError(
                        f"{key} must be True or False, not {type(flag).__name__}"
                    )
            if file is not None and (not isinstance(file, str) or not file):
                raise irqbypass.InvalidEndpointError(
                    f"file must be a path (a non-empty str) or None, not "
                    f"{irqbypass.show_value(file)}"
                )
            if vector is not None:
                check_vector(vector)
            if not _is_int(nv) or not 0 <= nv <= 255:
                raise irqbypass.InvalidEndpointError(
                    f"nv={irqbypass.show_value(nv)} does not fit a byte; use 0 to 255"
                )
            if not _is_int(ndst) or not 0 <= ndst <= 0xFFFFFFFF:
                raise irqbypass.InvalidEndpointError(
                    f"ndst={irqbypass.show_value(ndst)} does not fit a u32; use 0 to 0xffffffff"
                )
            if lock is not None and (not isinstance(lock, str) or lock not in ("process", "file")):
                raise irqbypass.InvalidEndpointError(
                    f"lock {irqbypass.show_value(lock)} is unknown; use 'process' or 'file'"
                )
            if lock == "file" and not file:
                raise irqbypass.InvalidEndpointError(
                    "lock 'file' needs a file-backed descriptor; set file to a path"
                )
        except irqbypass.InvalidEndpointError as exc:
            raise irqbypass.InvalidEndpointError(f"{what}: {exc}") from None
        self.vector = vector
        self.urgent = urgent
        self.nv = nv
        self.ndst = ndst
        self.sn = sn
        self.file = file
        self.lock = lock
        self.drain = drain
        self._lock = threading.Lock()
        self.descriptor: PostedDescriptor | None = None
        self._partner: irqbypass.Producer | None = None
        self._port: Port | None = None
        self._direct = False
        self._stopped = False
        self._relay: irqbypass.LoopHandle | None = None
        self._drainer: irqbypass.LoopHandle | None = None
        #: why the loop removed the relay or drainer (its callback raised), kept after close
        self._problem: str | None = None
        self._relayed = 0
        self._early = 0
        self._token_closed = False
        self._last: dict[str, int] = {}

    @classmethod
    def from_spec(cls, spec: irqbypass.EndpointSpec) -> PostedInterruptConsumer:
        opts = spec.options_reader()
        vector: int | None = spec.irq
        if opts.get_raw("vector") is not None:
            vector = opts.get_int("vector", 0, min=0, max=255)
        if vector is not None and not 0 <= vector <= 255:
            raise opts.error("vector", f"irq {vector} is outside the PIR; set vector (0 to 255)")
        file = opts.get_str("file")
        if file:
            problem = problem_with_path(file)  # what open would refuse: said by check already
            if problem is not None:
                raise opts.error("file", problem)
        lock = opts.get_str("lock", None, choices=["process", "file"])
        if lock == "file" and not file:
            raise opts.error("lock", "'file' locking needs a file-backed descriptor; set file")
        consumer = cls(
            token=spec.token,
            name=spec.name,
            vector=vector,
            urgent=opts.get_bool("urgent", False),
            nv=opts.get_int("nv", DEFAULT_NV, min=0, max=255),
            ndst=opts.get_int("ndst", 0, min=0, max=0xFFFFFFFF),
            sn=opts.get_bool("sn", False),
            file=file,
            lock="file" if lock == "file" else "process" if lock == "process" else None,
            drain=opts.get_bool("drain", False),
        )
        opts.finish()
        return consumer

    # -- the device side ---------------------------------------------------

    def open(self) -> None:
        """Create the descriptor (and the drainer); attach the posting path
        if already paired. All or nothing, Ctrl-C included: an open that
        raises leaves nothing open (a topology does not close what it takes
        as not opened)."""
        if self.descriptor is not None:
            return
        self._open()

    @irqbypass.signal_safe
    def _open(self) -> None:
        """A signal anywhere in here waits until the ``call()`` lines, where
        what it interrupts is undone before it goes on: so no point remains
        where it could leave the descriptor's file, fds or drainer behind
        unknown to :meth:`close` (or to the caller)."""
        call: Callable[..., object]
        try:
            descriptor = PostedDescriptor(
                nv=self.nv, ndst=self.ndst, sn=self.sn, file=self.file, lock=self.lock
            )
            partner = self._record(descriptor)
            if self.drain:
                assert descriptor.notification is not None  # our own descriptor has one
                self._drainer = irqbypass.event_loop().add_reader(
                    descriptor.notification,
                    functools.partial(self._on_notified, descriptor),
                    owner=self._owner("drainer"),
                )
            if partner is not None:
                call = self._attach  # the producer's code: stays interruptible
                call(partner)
            call = irqbypass.deliver_deferred_signals  # a Ctrl-C that waited acts here
            call()
        except BaseException:
            self._close()
            raise

    def _record(self, descriptor: PostedDescriptor) -> irqbypass.Producer | None:
        with self._lock:
            self.descriptor = descriptor
            self._relayed = self._early = 0
            self._token_closed = False
            self._problem = None
            return self._partner

    def close(self) -> None:
        """Withdraw the posting path, stop the relay and the drainer (a last
        sync if draining), keep the final counters, and unmap the descriptor
        (its file removed whatever interrupts this: a second Ctrl-C included)."""
        try:
            self._close()
        finally:
            irqbypass.deliver_deferred_signals()

    @irqbypass.signal_safe
    def _close(self) -> None:
        """Signal-safe but for the producer's code (``call``): once begun, the
        descriptor is released whatever lands."""
        call: Callable[..., object]
        descriptor = self.descriptor
        if descriptor is None:
            self._cancel_drainer()  # a drainer registered before its descriptor was recorded
            return
        try:
            partner = self._partner
            if partner is not None:
                call = self._detach
                call(partner)
        finally:
            self._release(descriptor)

    @irqbypass.signal_safe
    def _release(self, descriptor: PostedDescriptor) -> None:
        """Stop the drainer (a callback of this process's loop: not a wait on
        another process) and close the descriptor, on every path."""
        try:
            if self._cancel_drainer():
                self._vcpu_sync(descriptor)
            self._keep_last(descriptor)
        finally:
            descriptor.close()

    def _cancel_drainer(self) -> bool:
        """Cancel the drainer if there is one; whether there was."""
        drainer, self._drainer = self._drainer, None
        if drainer is None:
            return False
        drainer.cancel()  # returns once the callback is not running
        self._note_problem(drainer)
        return True

    def _keep_last(self, descriptor: PostedDescriptor) -> None:
        with self._lock:
            self._last = self._counters(descriptor)
            self.descriptor = None

    def _owner(self, role: str) -> str:
        return f"posted-interrupt consumer {self.name!r} ({role})"

    def _note_problem(self, handle: irqbypass.LoopHandle) -> None:
        if handle.problem is not None and self._problem is None:
            self._problem = handle.problem

    def _on_notified(self, descriptor: PostedDescriptor) -> None:
        """The vCPU, on the loop: a notification came; sync PIR to IRR, take the vectors."""
        if descriptor.wait(0):
            self._vcpu_sync(descriptor)

    @staticmethod
    def _vcpu_sync(descriptor: PostedDescriptor) -> None:
        descriptor.drain()

    # -- the bypass callbacks ----------------------------------------------

    def add_producer(self, producer: irqbypass.Producer) -> None:
        vector = self.vector if self.vector is not None else producer.irq
        try:
            check_vector(vector)
        except irqbypass.InvalidEndpointError as exc:
            raise irqbypass.InvalidEndpointError(
                f"posted-interrupt consumer {self.name!r}: producer {producer.name!r} has irq "
                f"{vector!r}, {exc}; set the consumer option vector"
            ) from None
        urgent = self.urgent or bool(getattr(producer, "urgent", False))
        port = Port(vector, urgent)
        port.held = self._stopped
        with self._lock:
            self._partner, self._port = producer, port
            is_open = self.descriptor is not None
        if is_open:
            try:
                self._attach(producer)
            except BaseException:
                with self._lock:
                    self._partner = self._port = None
                raise

    def del_producer(self, producer: irqbypass.Producer) -> None:
        try:
            if self.descriptor is not None:
                self._detach(producer)
        finally:
            with self._lock:
                self._partner = self._port = None

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            descriptor, port = self.descriptor, self._port
        if port is not None:
            if descriptor is not None:
                descriptor.hold(port)
            else:
                port.held = True

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            descriptor, port = self.descriptor, self._port
        if port is not None:
            if descriptor is not None:
                descriptor.release_port(port)
            else:
                port.held = False

    def _attach(self, producer: irqbypass.Producer) -> None:
        """Offer the direct path; relay the eventfd if the producer declines.
        Our lock is not held here: the producer takes its own lock."""
        descriptor, port = self.descriptor, self._port
        assert descriptor is not None and port is not None
        self._direct = True  # before the offer: a Ctrl-C inside it still has close() withdraw it
        if producer.offer_direct_path(descriptor.poster(port)):
            # what the producer signalled before it switched (KVM's irqfd also
            # injects an event pending at assignment)
            try:
                early = self._read_token(0)
            except irqbypass.EventfdClosedError:
                early = 0  # nothing can be pending on a closed token
            if early:
                self._early += early
                descriptor.post_port(port, early)
            return
        self._direct = False
        if not isinstance(self.token, irqbypass.Eventfd) or self.token.closed:
            raise irqbypass.ConnectError(
                f"posted-interrupt consumer {self.name!r}: producer {producer.name!r} declined "
                "the direct posting path and the token is not an open irqbypass.Eventfd, so "
                "there is nothing to relay from; pair with a producer that posts directly, "
                "or use an eventfd token"
            )
        self._relay = irqbypass.event_loop().add_reader(
            self.token,
            functools.partial(self._on_signalled, descriptor, port),
            owner=self._owner("relay"),
        )

    def _detach(self, producer: irqbypass.Producer) -> None:
        descriptor, port = self.descriptor, self._port
        try:
            if self._direct:
                producer.offer_direct_path(None)
                self._direct = False
            elif self._relay is not None:
                relay, self._relay = self._relay, None
                relay.cancel()  # returns once the callback is not running
                self._note_problem(relay)
                if relay.state != "failed":
                    self._relay_once(descriptor, port)  # what came before the detach
        finally:
            # whatever was held while stopped was posted to us: deliver it
            if descriptor is not None and port is not None:
                descriptor.release_port(port)
                port.held = self._stopped

    def _read_token(self, timeout: float) -> int:
        token = self.token
        if isinstance(token, irqbypass.Eventfd) and not self._token_closed:
            return token.read(timeout)
        return 0

    def _on_signalled(self, descriptor: PostedDescriptor, port: Port) -> None:
        """The relay, on the loop: the producer signalled the eventfd; post it."""
        if not self._relay_once(descriptor, port):
            relay = self._relay
            if relay is not None:
                relay.cancel()

    def _relay_once(self, descriptor: PostedDescriptor | None, port: Port | None) -> bool:
        """Post what the eventfd holds; False once the token is found closed."""
        try:
            count = self._read_token(0)
        except irqbypass.EventfdClosedError:
            if not self._token_closed:
                self._token_closed = True
                log.error(
                    "posted-interrupt consumer %r: its token eventfd was closed while the "
                    "pair was open; the relay stops (close endpoints before their token)",
                    self.name,
                )
            return False
        if count and descriptor is not None and port is not None:
            self._relayed += count
            descriptor.post_port(port, count)
        return True

    # -- looking -----------------------------------------------------------

    def _counters(self, descriptor: PostedDescriptor) -> dict[str, int]:
        counters = descriptor.counters()
        port = self._port
        return {
            "delivered": counters["posts_drained"],
            "posted": counters["posted"],
            "notified": counters["notified"],
            "vectors_drained": counters["vectors_drained"],
            "syncs": counters["syncs"],
            "undrained": counters["pending"],
            "held": port.held_count if port is not None else 0,
            "relayed": self._relayed,
            "early": self._early,
            **({"token_closed": 1} if self._token_closed else {}),
            **({"loop_errors": 1} if self.problem is not None else {}),
        }

    @property
    def problem(self) -> str | None:
        """Why the loop removed the relay or the drainer (its callback raised), or None."""
        for handle in (self._relay, self._drainer):
            if handle is not None and handle.problem is not None:
                return handle.problem
        return self._problem

    def stats(self) -> Mapping[str, int]:
        """``delivered``: posts drained by a sync (each sync takes a vector's
        PIR bit and every post counted behind it); ``vectors_drained``: PIR bits
        taken (what the guest sees as interrupts; fewer when posts coalesce);
        ``posted``, ``notified``, ``syncs``; ``undrained``: posted, not yet
        synced; ``held``: held while stopped; ``relayed``: posts that came via
        the eventfd relay; ``early``: signalled before the direct path was set."""
        with self._lock:  # held while reading: close() unmaps only after taking it
            descriptor = self.descriptor
            if descriptor is None:
                return (
                    dict(self._last)
                    if self._last
                    else dict.fromkeys(
                        ("delivered", "posted", "notified", "vectors_drained", "syncs"), 0
                    )
                )
            return self._counters(descriptor)
