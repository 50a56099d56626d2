"""irqbypass-mock: a producer that fires interrupts on demand or on a schedule.

It signals its eventfd like a device vector does. When its paired consumer
offers a direct delivery path (``Producer.offer_direct_path``), it delivers
through that instead, as hardware posting bypasses the host. Its schedule is a
timer on the process's event loop (:func:`irqbypass.event_loop`), not a thread.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Hashable, Mapping

import irqbypass
import irqbypass.plugin

__all__ = ["MockProducer", "irqbypass_register_kinds"]

log = logging.getLogger("irqbypass.mock")


UNLIMITED = -1
#: bursts one turn of the loop's timer fires at ``rate = 0`` ("as fast as it can"):
#: back to back, each burst its own write as at any rate; bounded, so that an
#: unlimited mock leaves the loop's other fds and timers their turn
BURSTS_PER_TURN = 64
#: direct-path calls one such turn makes at most: over a consumer's direct path a
#: burst is one call per interrupt, so the turn is bounded by calls there too (the
#: rest of a bigger burst goes on at the next turn)
DIRECT_CALLS_PER_TURN = 4096
#: a topology entry's options: the constructor's keywords, with their bounds
OPTIONS = {
    "rate": irqbypass.plugin.Option("float", 1000.0, min=0.0, max=10_000_000.0),
    "count": irqbypass.plugin.Option("int", 100, min=UNLIMITED, max=2**62),
    "burst": irqbypass.plugin.Option("int", 1, min=1, max=1_000_000),
    "delay": irqbypass.plugin.Option("float", 0.0, min=0.0, max=3600.0),
}


class MockProducer(irqbypass.Producer):
    """Fires ``count`` interrupts (-1: until closed; 0: only :meth:`fire`) at
    ``rate`` per second (0: as fast as it can, :data:`BURSTS_PER_TURN` bursts
    per turn of the event loop), ``burst`` at a time (one eventfd write each),
    starting ``delay`` seconds after :meth:`open`.

    While the manager has it stopped, what :meth:`fire` raises is held and
    fired on start, so a quiesce loses none, and the schedule waits (it fires
    nothing while stopped: a stop holds a bounded count). ``token`` is the
    eventfd it signals; when the token is not an :class:`irqbypass.Eventfd`,
    the producer opens (and owns) one.
    """

    def __init__(
        self,
        *,
        token: Hashable,
        irq: int = 0,
        name: str | None = None,
        rate: float = 1000.0,
        count: int = 100,
        burst: int = 1,
        delay: float = 0.0,
    ) -> None:
        super().__init__(token=token, irq=irq, name=name)
        what = f"mock producer {self.name!r}"
        for key, value in (("rate", rate), ("delay", delay)):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                raise irqbypass.InvalidEndpointError(
                    f"{what}: {key} must be a finite number of "
                    f"{'interrupts per second' if key == 'rate' else 'seconds'}, "
                    f"not {irqbypass.plugin.show_value(value)}"
                )
        for key, value in (("count", count), ("burst", burst)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise irqbypass.InvalidEndpointError(
                    f"{what}: {key} must be an int, not {irqbypass.plugin.show_value(value)}"
                )
        if rate < 0 or count < UNLIMITED or burst < 1 or delay < 0:
            raise irqbypass.InvalidEndpointError(
                f"{what}: rate and delay must be >= 0, "
                f"count >= -1 and burst >= 1 (got rate={rate}, count={count}, "
                f"burst={burst}, delay={delay})"
            )
        self.rate = rate
        self.count = count
        self.burst = burst
        self.delay = delay
        self._lock = threading.Lock()
        self._eventfd: irqbypass.Eventfd | None = None
        self._own_eventfd = False
        self._direct: Callable[[], None] | None = None
        self._stopped = False
        self._pending = 0
        self._fired = 0
        self._via_direct = 0
        self._via_eventfd = 0
        self._scheduled = 0
        self._timer: irqbypass.plugin.LoopHandle | None = None
        self._problem: str | None = None
        #: interrupts that could not be signalled because the token was closed
        self._token_lost = 0
        self._gave_up = False

    # -- the device side ---------------------------------------------------

    @property
    def eventfd(self) -> irqbypass.Eventfd | None:
        return self._eventfd

    def open(self) -> None:
        if self._eventfd is not None:
            return
        if isinstance(self.token, irqbypass.Eventfd):
            if self.token.closed:
                raise irqbypass.InvalidEndpointError(
                    f"mock producer {self.name!r}: its token eventfd is closed"
                )
            self._eventfd, self._own_eventfd = self.token, False
        else:
            self._eventfd, self._own_eventfd = irqbypass.Eventfd(), True
        self._token_lost = 0
        self._gave_up = False
        self._problem = None
        if self.count != 0:
            # burst interrupts every period; a denormal rate makes it inf: one burst
            period = self.burst / self.rate if self.rate > 0 else 0.0
            try:
                with self._lock:  # a first tick's fire waits for _timer: it may stop it
                    self._timer = irqbypass.event_loop().call_every(
                        period, self._tick, owner=f"mock producer {self.name!r}", delay=self.delay
                    )
            except BaseException:
                self.close()
                raise

    @irqbypass.plugin.uninterrupted
    def close(self) -> None:
        """Cancel the timer and let the eventfd go (closing the one it owns).
        Once begun it runs to its end: a Ctrl-C landing in it acts as it returns."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()  # returns once a tick is not running
            self._problem = timer.problem
        with self._lock:
            eventfd, self._eventfd = self._eventfd, None
        if eventfd is not None and self._own_eventfd:
            eventfd.close()

    def fire(self, n: int = 1) -> None:
        """Raise the interrupt ``n`` times now (held while stopped)."""
        with self._lock:
            if self._eventfd is None:
                raise irqbypass.IrqBypassError(
                    f"mock producer {self.name!r} is not open; call open() first"
                )
            self._fired += n
            if self._stopped:
                self._pending += n
            else:
                self._deliver(n)

    def _deliver(self, n: int) -> None:
        """Deliver ``n`` interrupts; the caller holds ``_lock``."""
        direct = self._direct
        if direct is not None:
            for _ in range(n):
                direct()
            self._via_direct += n
        elif self._eventfd is not None:
            try:
                self._eventfd.write(n)
            except irqbypass.EventfdClosedError as exc:
                self._token_lost += n
                raise irqbypass.EventfdClosedError(
                    f"mock producer {self.name!r}: cannot signal its token: {exc}"
                ) from exc
            self._via_eventfd += n

    def _tick(self) -> None:
        """The loop's timer: fire one burst, or at ``rate = 0`` up to
        :data:`BURSTS_PER_TURN` of them back to back (the last may be smaller);
        the timer stops once the mock fired its count or gave up. While the
        manager has it stopped, it fires nothing (a stopped device raises no
        interrupt): held interrupts stay what fire() raised, however long the
        stop, and the schedule goes on at start(). At rate 0 over a direct
        path, a turn makes at most :data:`DIRECT_CALLS_PER_TURN` calls."""
        calls = 0  # direct-path calls made this turn (bounded at rate 0)
        for _ in range(BURSTS_PER_TURN if self.rate == 0 else 1):
            if self._stopped:
                return
            remaining = (
                self.burst
                if self.count == UNLIMITED
                else min(self.burst, self.count - self._scheduled)
            )
            if remaining <= 0:
                self._stop_timer()
                return
            direct = self.rate == 0 and self._direct is not None
            if direct:
                remaining = min(remaining, DIRECT_CALLS_PER_TURN - calls)
            try:
                self.fire(remaining)
            except irqbypass.EventfdClosedError:
                log.error(
                    "mock producer %r: its token eventfd was closed while the producer was "
                    "open; it stops firing (close endpoints before their token)",
                    self.name,
                )
                self._gave_up = True
                self._stop_timer()
                return
            # counted after the fire, so `finished` never runs ahead of `fired`
            self._scheduled += remaining
            if self.count != UNLIMITED and self._scheduled >= self.count:
                self._stop_timer()
                return
            calls += remaining if direct else 0
            if calls >= DIRECT_CALLS_PER_TURN:
                return

    def _stop_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()

    @property
    def problem(self) -> str | None:
        """Why the loop stopped this producer's timer (its tick raised), or None."""
        timer = self._timer
        return timer.problem if timer is not None else self._problem

    @property
    def finished(self) -> bool:
        """Fired the whole count, or gave up (its token was closed, or the loop
        removed its timer: :attr:`problem`, which need not be worded to be told)."""
        if self._gave_up or (self.count != UNLIMITED and self._scheduled >= self.count):
            return True
        timer = self._timer
        return timer.error is not None if timer is not None else self._problem is not None

    def stats(self) -> Mapping[str, int]:
        with self._lock:
            stats = {
                "fired": self._fired,
                "direct": self._via_direct,
                "eventfd": self._via_eventfd,
                "pending": self._pending,
            }
            if self._token_lost:
                stats["token_lost"] = self._token_lost
        if self.problem is not None:
            stats["loop_errors"] = 1
        return stats

    # -- the bypass callbacks ----------------------------------------------

    def offer_direct_path(self, deliver: Callable[[], None] | None) -> bool:
        with self._lock:
            self._direct = deliver
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            pending, self._pending = self._pending, 0
            if pending:
                self._deliver(pending)


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.producer("mock", irqbypass.plugin.KeywordFactory(MockProducer, OPTIONS))
