"""irqbypass-counter: a consumer that counts the interrupts it receives.

While open, it reads its token eventfd on the process's event loop (the slow
path; a reader, not a thread). Once paired, it offers its producer a direct
path, so interrupts skip the eventfd.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping

import irqbypass
import irqbypass.plugin

__all__ = ["CounterConsumer", "irqbypass_register_kinds"]


class CounterConsumer(irqbypass.Consumer):
    """Counts interrupts; ``direct`` says whether to offer a direct path."""

    def __init__(self, *, token: Hashable, name: str | None = None, direct: bool = True) -> None:
        super().__init__(token=token, name=name)
        self.direct = direct
        self._lock = threading.Lock()
        self._via_eventfd = 0
        self._via_direct = 0
        self._accepted = False
        self._reader: irqbypass.plugin.LoopHandle | None = None

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> CounterConsumer:
        opts = spec.options_reader()
        consumer = cls(token=spec.token, name=spec.name, direct=opts.get_bool("direct", True))
        opts.finish()
        return consumer

    # -- the device side ---------------------------------------------------

    def open(self) -> None:
        if not isinstance(self.token, irqbypass.Eventfd) or self.token.closed:
            raise irqbypass.InvalidEndpointError(
                f"counter {self.name!r}: its token must be an open irqbypass.Eventfd"
            )
        # _read runs on the loop's thread whenever the eventfd is readable
        self._reader = irqbypass.event_loop().add_reader(
            self.token, self._read, owner=f"counter {self.name!r}"
        )

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()  # returns once _read is not running
            self._read()  # whatever arrived since

    def _read(self) -> None:
        """On the loop: take the counter without waiting (never block here)."""
        assert isinstance(self.token, irqbypass.Eventfd)
        count = self.token.read(0)
        if count:
            with self._lock:
                self._via_eventfd += count

    def _deliver(self) -> None:
        """The direct path: the producer calls this once per interrupt."""
        with self._lock:
            self._via_direct += 1

    def stats(self) -> Mapping[str, int]:
        with self._lock:
            return {
                "delivered": self._via_eventfd + self._via_direct,
                "eventfd": self._via_eventfd,
                "direct": self._via_direct,
            }

    # -- the bypass callbacks (add_producer and del_producer are required) --

    def add_producer(self, producer: irqbypass.Producer) -> None:
        # Do not hold self._lock here: the producer may call _deliver() while
        # holding its own lock, and we would deadlock against it.
        if self.direct:
            self._accepted = producer.offer_direct_path(self._deliver)

    def del_producer(self, producer: irqbypass.Producer) -> None:
        if self._accepted:
            producer.offer_direct_path(None)
            self._accepted = False


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.consumer("counter", CounterConsumer.from_spec)
