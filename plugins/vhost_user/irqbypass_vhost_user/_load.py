"""The vhost-user producer's own block load: the demo's completions.

With ``requests`` > 0 a producer that owns its connection makes its own
interrupts: :class:`BlkLoad` queues that many virtio-blk requests, one at a
time at ``rate`` per second after ``delay`` seconds (the delay lets a
topology pair the producer first), from a periodic timer on the event loop.
It never owns a thread and never waits: a tick that finds the producer busy
(a stop or start holds its lock across a round trip to the back-end) is
tried again at the next.
"""

from __future__ import annotations

import errno
import threading
from typing import Protocol

import irqbypass
import irqbypass.plugin

from .blk import BlkDriver
from .errors import VhostUserError

__all__ = ["BlkLoad", "LoadTarget"]


class LoadTarget(Protocol):
    """What the load generator needs of its producer."""

    @property
    def driver(self) -> BlkDriver | None: ...
    @property
    def problem(self) -> str | None: ...
    def describe(self) -> str: ...
    def check_alive(self) -> None: ...
    def submit(self, n: int = 1) -> int: ...
    def reap(self) -> int: ...
    def lose(self, error: irqbypass.IrqBypassError) -> None: ...


class BlkLoad:
    """``requests`` requests on ``target``'s ring, one in flight at a time,
    at ``rate`` per second after ``delay`` seconds; a tick runs only when it
    gets ``lock`` (the producer's) without waiting."""

    def __init__(
        self,
        target: LoadTarget,
        lock: threading.RLock,
        *,
        requests: int,
        rate: float,
        delay: float,
    ) -> None:
        self.target = target
        self.requests = requests
        self.rate = rate
        self.delay = delay
        self._lock = lock
        #: the feeder: a periodic timer on the event loop while running
        self._feeder: irqbypass.plugin.LoopHandle | None = None

    def start(self) -> None:
        """Begin feeding (after ``delay``); nothing with no requests."""
        if self.requests:
            self._feeder = irqbypass.event_loop().call_every(
                1.0 / self.rate,
                self._feed,
                owner=f"{self.target.describe()} (feeder)",
                delay=self.delay,
            )

    def stop(self) -> None:
        """End feeding; returns once a tick is not running (at once from one)."""
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            feeder.cancel()

    @property
    def running(self) -> bool:
        """Feeding: the timer is scheduled (from start until stop, or a tick ended it)."""
        return self._feeder is not None

    def finished(self) -> bool:
        """All requests completed, or the back-end went away (False without
        requests); the caller holds the producer's lock."""
        if not self.requests:
            return False
        driver = self.target.driver
        return self.target.problem is not None or (
            driver is not None and driver.completed >= self.requests
        )

    def _feed(self) -> None:
        """One tick of the timer: what goes wrong in it is recorded in the
        producer's ``problem`` (which ``stats()``, ``finished`` and ``run``
        show) and ends the feeding, never a traceback that leaves the run
        waiting out its duration."""
        try:
            if self._feed_once():
                return
        except VhostUserError as exc:
            self.target.lose(exc)
        except Exception as exc:  # a bug here must still end the run with a report
            self.target.lose(
                VhostUserError(
                    f"{self.target.describe()}: the request feeder failed: "
                    f"{irqbypass.plugin.show_value(exc)}; this is a bug, please report it",
                    errno=errno.EIO,
                )
            )
        self.stop()

    def _feed_once(self) -> bool:
        """Reap, and queue the next request once the last came back; False
        when there is nothing more to feed. Never waits for the lock: a busy
        tick is tried again at the next."""
        if not self._lock.acquire(blocking=False):
            return True
        try:
            target = self.target
            driver = target.driver
            target.check_alive()
            if driver is None or target.problem is not None:
                return False
            target.reap()
            if driver.completed >= self.requests:
                return False
            if driver.submitted < self.requests and driver.in_flight == 0:
                target.submit(1)
            return True
        finally:
            self._lock.release()
