"""What the real-device tests share: a counting consumer a Manager pairs
(:func:`paired`), event-driven waits (a TCG guest on a loaded host is slow,
never a fixed sleep), and the quiesce race's stop/start thread and report.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import irqbypass

#: hang guard for one wait in the guest; generous: TCG on a shared 2-core host
WAIT_S = 60.0


class CountingConsumer(irqbypass.Consumer):
    """Reads its token eventfd in a thread while open and counts every
    interrupt; :meth:`wait_for` blocks until the count reaches a total."""

    def __init__(self, *, token: Hashable, name: str = "count") -> None:
        super().__init__(token=token, name=name)
        self.count = 0
        self.reads = 0
        self.added: list[str] = []
        self._cond = threading.Condition()
        self._stop: irqbypass.Eventfd | None = None
        self._thread: threading.Thread | None = None

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self.added.append(f"add {producer.name}")

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self.added.append(f"del {producer.name}")

    def open(self) -> None:
        if self._thread is not None:
            return
        self._stop = irqbypass.Eventfd()
        self._thread = threading.Thread(target=self._run, name="counting-consumer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is None or self._stop is None:
            return
        self._stop.write(1)
        self._thread.join()
        self._stop.close()
        self._thread = self._stop = None

    def _run(self) -> None:
        assert isinstance(self.token, irqbypass.Eventfd) and self._stop is not None
        poller = select.poll()
        poller.register(self.token.fileno(), select.POLLIN)
        poller.register(self._stop.fileno(), select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self.token.fileno() in ready:
                n = self.token.read(0)
                if n:
                    with self._cond:
                        self.count += n
                        self.reads += 1
                        self._cond.notify_all()
            if self._stop.fileno() in ready:
                return

    def wait_for(self, total: int, timeout: float = WAIT_S) -> int:
        """The count once it reaches ``total`` (or at the hang guard)."""
        with self._cond:
            self._cond.wait_for(lambda: self.count >= total, timeout)
            return self.count

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"delivered": self.count, "reads": self.reads}


def readable(fd: int, timeout: float = WAIT_S) -> bool:
    """Whether ``fd`` becomes readable within ``timeout``, without reading it."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll ``condition`` (a device register, a sysfs file) until true: for
    state the kernel offers no event for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def eventfd_count(fd: int) -> int:
    """An eventfd's counter, read from fdinfo without consuming it."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        for line in info:
            if line.startswith("eventfd-count:"):
                return int(line.split()[1], 16)
    raise ValueError(f"fd {fd} is not an eventfd")


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- what the guest tests of every device producer share -----------------------------


@contextmanager
def paired(producer: irqbypass.Producer, token: irqbypass.Eventfd) -> Iterator[CountingConsumer]:
    """The producer opened and paired with a counting consumer by a Manager."""
    consumer = CountingConsumer(token=token)
    mgr = irqbypass.Manager()
    with producer, consumer:
        mgr.register_consumer(consumer)
        mgr.register_producer(producer)
        try:
            yield consumer
        finally:
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)


_L = TypeVar("_L", bound="Loop")


class Loop:
    """A thread that runs :meth:`step` over and over from entering the block
    until leaving it (a race's other side). What it raised is kept in
    :attr:`errors` and raised again as the block ends."""

    name = "loop"

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name)

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self._done.is_set():
                self.step()
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self: _L) -> _L:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        if self.errors and exc[0] is None:
            raise self.errors[0]


class StopStartCycles(Loop):
    """A thread that stops and starts ``producer`` in a loop from entering the
    block until leaving it; :attr:`cycles` counts them."""

    name = "stop-start"

    def __init__(self, producer: irqbypass.Producer) -> None:
        super().__init__()
        stop, start = producer.stop, producer.start
        assert stop is not None and start is not None
        self.producer = producer
        self._stop, self._start = stop, start
        self.cycles = 0

    def step(self) -> None:
        self._stop()
        self._start()
        self.cycles += 1


def write_figures(name: str, figures: dict[str, object]) -> None:
    """A test's figures on stdout (``name: {...}``) and in
    ``$IRQBYPASS_GUEST_OUT/NAME.json``, the boot's folder (what the docs quote)."""
    line = json.dumps(figures)
    print(f"{name}: {line}")
    out = os.environ.get("IRQBYPASS_GUEST_OUT")
    if out:
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            f.write(line + "\n")


def report_race(device: str, figures: dict[str, object]) -> None:
    """The race's figures, as ``race-DEVICE``."""
    write_figures(f"race-{device}", figures)
