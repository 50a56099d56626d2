"""irqbypass-counter: a consumer that counts the interrupts it receives.

While open, it reads its token eventfd in a thread (the slow path). Once
paired, it offers its producer a direct path, so interrupts skip the eventfd.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping

import irqbypass

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
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    @classmethod
    def from_spec(cls, spec: irqbypass.EndpointSpec) -> CounterConsumer:
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
        self._closing.clear()
        self._thread = threading.Thread(target=self._run, name=f"counter-{self.name}")
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._read(0)  # whatever arrived after the last poll

    def _run(self) -> None:
        while not self._closing.is_set():
            self._read(0.05)

    def _read(self, timeout: float) -> None:
        assert isinstance(self.token, irqbypass.Eventfd)
        count = self.token.read(timeout)
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


@irqbypass.hookimpl
def irqbypass_register_kinds(register: irqbypass.KindRegistrar) -> None:
    register.consumer("counter", CounterConsumer.from_spec)
