"""Endpoints that record every callback into a shared log, and fail on demand."""

from __future__ import annotations

from collections.abc import Hashable

import irqbypass


class Boom(Exception):
    """The failure an endpoint raises when told to."""


class RecordingProducer(irqbypass.Producer):
    def __init__(self, log: list[str], *, token: Hashable, name: str = "p", fail: str = "") -> None:
        super().__init__(token=token, irq=7, name=name)
        self.log = log
        self.fail = fail

    def _step(self, what: str) -> None:
        self.log.append(f"{self.name}.{what}")
        if what == self.fail:
            raise Boom(f"{self.name}.{what} failed")

    def add_consumer(self, consumer: irqbypass.Consumer) -> None:
        self._step("add_consumer")

    def del_consumer(self, consumer: irqbypass.Consumer) -> None:
        self._step("del_consumer")

    def stop(self) -> None:
        self._step("stop")

    def start(self) -> None:
        self._step("start")


class RecordingConsumer(irqbypass.Consumer):
    def __init__(self, log: list[str], *, token: Hashable, name: str = "c", fail: str = "") -> None:
        super().__init__(token=token, name=name)
        self.log = log
        self.fail = fail

    def _step(self, what: str) -> None:
        self.log.append(f"{self.name}.{what}")
        if what == self.fail:
            raise Boom(f"{self.name}.{what} failed")

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self._step("add_producer")

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self._step("del_producer")

    def stop(self) -> None:
        self._step("stop")

    def start(self) -> None:
        self._step("start")


class BareProducer(irqbypass.Producer):
    """A producer with none of the optional callbacks (all NULL in the kernel)."""


class MinimalConsumer(irqbypass.Consumer):
    """Only the two required callbacks."""

    def __init__(self, log: list[str], *, token: Hashable, name: str = "c") -> None:
        super().__init__(token=token, name=name)
        self.log = log

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self.log.append(f"{self.name}.add_producer")

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self.log.append(f"{self.name}.del_producer")


CONNECT = ["p.stop", "c.stop", "p.add_consumer", "c.add_producer", "c.start", "p.start"]
DISCONNECT = ["p.stop", "c.stop", "c.del_producer", "p.del_consumer", "c.start", "p.start"]
