"""irqbypass-ticker: a producer that raises its interrupt every ``period`` seconds.

Like a device vector, it signals its token eventfd; when its paired consumer
offers a direct path, it calls that instead. Its clock is a periodic timer on
the process's event loop (``irqbypass.event_loop()``): no thread of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping

import irqbypass
import irqbypass.plugin

__all__ = ["TickerProducer", "irqbypass_register_kinds"]


class TickerProducer(irqbypass.Producer):
    """Fires ``count`` interrupts, one every ``period`` seconds, once opened."""

    def __init__(
        self,
        *,
        token: Hashable,
        irq: int = 0,
        name: str | None = None,
        period: float = 0.01,
        count: int = 10,
    ) -> None:
        super().__init__(token=token, irq=irq, name=name)
        # Validate here: `irqbypass check` builds endpoints without opening them.
        if period <= 0 or count < 0:
            raise irqbypass.InvalidEndpointError(
                f"ticker {self.name!r}: period must be > 0 and count >= 0 "
                f"(got period={period}, count={count})"
            )
        self.period = period
        self.count = count
        self._lock = threading.Lock()
        self._direct: Callable[[], None] | None = None
        self._stopped = False
        self._held = 0
        self._fired = 0
        self._timer: irqbypass.plugin.LoopHandle | None = None

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> TickerProducer:
        """The kind's factory: build from a topology entry, touch no device."""
        opts = spec.options_reader()
        ticker = cls(
            token=spec.token,
            irq=spec.irq or 0,
            name=spec.name,
            period=opts.get_float("period", 0.01, min=0.0001, max=3600.0),
            count=opts.get_int("count", 10, min=0, max=1_000_000),
        )
        opts.finish()  # refuses unknown keys, naming the closest valid one
        return ticker

    # -- the device side: open/close, independent of the manager ----------

    def open(self) -> None:
        if not isinstance(self.token, irqbypass.Eventfd) or self.token.closed:
            raise irqbypass.InvalidEndpointError(
                f"ticker {self.name!r}: its token must be an open irqbypass.Eventfd"
            )
        if self.count:
            # runs _tick on the loop's thread every period; the owner label
            # names this endpoint in the loop's fault and watchdog reports
            self._timer = irqbypass.event_loop().call_every(
                self.period, self._tick, owner=f"ticker {self.name!r}", delay=self.period
            )

    def close(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()  # returns once _tick is not running: nothing fires after close

    def _tick(self) -> None:
        """On the loop: must not block (every other endpoint waits meanwhile)."""
        with self._lock:
            self._fired += 1
            if self._stopped:
                self._held += 1  # quiesced by the manager: hold it
            else:
                self._signal(1)
            done = self._fired >= self.count
        if done and self._timer is not None:
            self._timer.cancel()

    def _signal(self, n: int) -> None:
        """Deliver ``n`` interrupts; the caller holds ``_lock``."""
        if self._direct is not None:
            for _ in range(n):
                self._direct()
        else:
            assert isinstance(self.token, irqbypass.Eventfd)
            self.token.write(n)

    def stats(self) -> Mapping[str, int]:
        with self._lock:
            return {"fired": self._fired, "held": self._held}

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._fired >= self.count

    # -- the bypass callbacks (all optional on a producer) ----------------

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
            held, self._held = self._held, 0
            if held:
                self._signal(held)


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.producer("ticker", TickerProducer.from_spec)
