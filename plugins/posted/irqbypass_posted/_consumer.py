"""The ``posted-interrupt`` consumer: a paired producer posts into a descriptor.

While the consumer is open and paired, its producer gets a direct posting path
(``offer_direct_path``); a producer that declines keeps signalling its eventfd,
and a relay reads the eventfd and posts what it read. An optional drainer plays
the vCPU: on each notification it syncs PIR into its IRR. Relay and drainer are
readers on the process's event loop (:func:`irqbypass.event_loop`), not threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Hashable, Mapping

import irqbypass
import irqbypass.plugin

from ._backing import problem_with_path
from ._descriptor import LockMode, Port, PostedDescriptor, check_vector
from ._path import PostingPath
from ._settings import DEFAULT_NV, PostedSettings

__all__ = ["DEFAULT_NV", "PostedInterruptConsumer"]

#: the descriptor's counts of posts that waited for a peer's file lock (once one did)
_WAITING = ("waiting_for_peer", "waited_for_peer", "lock_retries")
#: the stats of a consumer that was never opened
_NEVER_OPENED = ("delivered", "posted", "notified", "vectors_drained", "syncs")


class PostedInterruptConsumer(irqbypass.Consumer):
    """Posts its producer's interrupts into a :class:`PostedDescriptor`.

    The options are :class:`PostedSettings`'s (``urgent`` is also taken from a
    producer attribute ``urgent``; the drainer is a reader on the event loop).
    The descriptor exists while the consumer is open; the producer reaches it
    through a :class:`PostingPath`.
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
        with irqbypass.plugin.Settings.naming(what):
            self.settings = PostedSettings(
                vector=vector,
                urgent=urgent,
                nv=nv,
                ndst=ndst,
                sn=sn,
                file=file,
                lock=lock,
                drain=drain,
            )
        self.vector, self.urgent, self.nv, self.ndst = vector, urgent, nv, ndst
        self.sn, self.file, self.lock, self.drain = sn, file, lock, drain
        self._lock = threading.Lock()
        self.descriptor: PostedDescriptor | None = None
        self._partner: irqbypass.Producer | None = None
        self._port: Port | None = None
        self._stopped = False
        self._path = PostingPath(token, what, self._note_problem)
        self._drainer: irqbypass.plugin.LoopHandle | None = None
        #: why the loop removed the relay or drainer (its callback raised), kept after close
        self._problem: str | None = None
        self._last: dict[str, int] = {}

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> PostedInterruptConsumer:
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
        with opts.refusals():
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
        try:
            self._open()
        except BaseException:  # a Ctrl-C that waited for _open acts as it returns: undone
            self.close()
            raise

    @irqbypass.plugin.uninterrupted
    def _open(self) -> None:
        """A signal anywhere in here waits until it returns, but in the producer's
        code (:meth:`_attach`, ``calls_partner``): so no point remains where it could leave the
        descriptor's file, fds or drainer behind unknown to :meth:`close`."""
        descriptor = PostedDescriptor(
            nv=self.nv, ndst=self.ndst, sn=self.sn, file=self.file, lock=self.lock
        )
        partner = self._record(descriptor)
        if self.drain:
            assert descriptor.notification is not None  # our own descriptor has one
            self._drainer = irqbypass.event_loop().add_reader(
                descriptor.notification,
                functools.partial(self._on_notified, descriptor),
                owner=f"{self._path.label} (drainer)",
            )
        if partner is not None:
            self._attach(partner)  # the producer's code: interruptible

    def _record(self, descriptor: PostedDescriptor) -> irqbypass.Producer | None:
        with self._lock:
            self.descriptor = descriptor
            self._path.reset()
            self._problem = None
            return self._partner

    @irqbypass.plugin.uninterrupted
    def close(self) -> None:
        """Withdraw the posting path, stop the relay and the drainer (a last
        sync if draining), keep the final counters, and unmap the descriptor
        (its file removed whatever interrupts this: a second Ctrl-C included).
        Once begun it runs to its end, but in the producer's code (``calls_partner``)."""
        descriptor = self.descriptor
        if descriptor is None:
            self._cancel_drainer()  # a drainer registered before its descriptor was recorded
            return
        try:
            partner = self._partner
            if partner is not None:
                self._detach(partner)  # the producer's code: interruptible
        finally:
            self._release(descriptor)

    def _release(self, descriptor: PostedDescriptor) -> None:
        """Stop the drainer (a callback of this process's loop: not a wait on
        another process) and close the descriptor, on every path: when a Ctrl-C
        ends a wait for a peer's file lock, the counters kept are read as they are."""
        try:
            if self._cancel_drainer():
                descriptor.drain()  # the last sync: everything posted is delivered
            self._keep_last(descriptor.counters())
        except BaseException:
            self._keep_last(descriptor.counters(wait=False))
            raise
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

    def _keep_last(self, counters: dict[str, int]) -> None:
        with self._lock:
            self._last = self._counters(counters)
            self.descriptor = None

    def _note_problem(self, handle: irqbypass.plugin.LoopHandle) -> None:
        if handle.problem is not None and self._problem is None:
            self._problem = handle.problem

    def _on_notified(self, descriptor: PostedDescriptor) -> None:
        """The vCPU, on the loop: a notification came; sync PIR to IRR, take the vectors."""
        if descriptor.wait(0):
            descriptor.drain(defer=True)  # never waits here for a peer's file lock

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
        self._hold(True)

    def start(self) -> None:
        self._hold(False)

    def _hold(self, held: bool) -> None:
        """Stop (``held``) or start: the port holds its posts, or lets them through."""
        with self._lock:
            self._stopped = held
            descriptor, port = self.descriptor, self._port
        if port is None:
            return
        if descriptor is None:
            port.held = held
        elif held:
            descriptor.hold(port)
        else:
            descriptor.release_port(port)

    @irqbypass.plugin.calls_partner
    def _attach(self, producer: irqbypass.Producer) -> None:
        """Open the posting path (our lock is not held: the producer takes its own)."""
        descriptor, port = self.descriptor, self._port
        assert descriptor is not None and port is not None
        self._path.offer(producer, descriptor, port)

    @irqbypass.plugin.calls_partner
    def _detach(self, producer: irqbypass.Producer) -> None:
        descriptor, port = self.descriptor, self._port
        try:
            self._path.withdraw(producer, descriptor, port)
        finally:
            # whatever was held while stopped was posted to us: deliver it
            if descriptor is not None and port is not None:
                descriptor.release_port(port)
                port.held = self._stopped

    # -- looking -----------------------------------------------------------

    def _counters(self, counters: dict[str, int]) -> dict[str, int]:
        """The stats, from the descriptor's ``counters``."""
        port = self._port
        return {
            "delivered": counters["posts_drained"],
            "posted": counters["posted"],
            "notified": counters["notified"],
            "vectors_drained": counters["vectors_drained"],
            "syncs": counters["syncs"],
            "undrained": counters["pending"],
            "held": port.held_count if port is not None else 0,
            "relayed": self._path.relayed,
            "early": self._path.early,
            **{key: counters[key] for key in _WAITING if key in counters},
            **({"token_closed": 1} if self._path.token_closed else {}),
            **({"loop_errors": 1} if self.problem is not None else {}),
        }

    @property
    def problem(self) -> str | None:
        """Why the loop removed the relay or the drainer (its callback raised), or None."""
        for handle in (self._path.relay, self._drainer):
            if handle is not None and handle.problem is not None:
                return handle.problem
        return self._problem

    def stats(self) -> Mapping[str, int]:
        """``delivered``: posts drained by a sync (each sync takes a vector's
        PIR bit and every post counted behind it); ``vectors_drained``: PIR bits
        taken (what the guest sees as interrupts; fewer when posts coalesce);
        ``posted``, ``notified``, ``syncs``; ``undrained``: posted, not yet
        synced; ``held``: held while stopped; ``relayed``: posts that came via
        the eventfd relay; ``early``: signalled before the direct path was set;
        once a post waited for a peer's file lock, ``waiting_for_peer`` (posts
        the loop keeps for it now), ``waited_for_peer`` (in all) and
        ``lock_retries`` (the loop's tries of the lock)."""
        with self._lock:  # held while reading: close() unmaps only after taking it
            descriptor = self.descriptor
            if descriptor is None:
                return dict(self._last) if self._last else dict.fromkeys(_NEVER_OPENED, 0)
            return self._counters(descriptor.counters())
