"""irqbypass-logging: a consumer that logs what happens to it.

Every lifecycle step (open, add_producer, stop, start, del_producer, close) and
every interrupt read from its eventfd is logged through stdlib ``logging``
(logger ``irqbypass.logging.<name>``) and, optionally, as JSON lines to a file
created with mode 0600 (a symbolic link there is refused). It counts what it
received.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Hashable, Mapping
from typing import IO, Any

import irqbypass

__all__ = ["LoggingConsumer", "irqbypass_register_kinds"]

_POLL_SECONDS = 0.05


class LoggingConsumer(irqbypass.Consumer):
    """Reads its token eventfd in a thread while open; logs and counts.

    ``json_file``: a path to append JSON lines to (one object per event).
    ``level``: the stdlib logging level name for the records.
    """

    def __init__(
        self,
        *,
        token: Hashable,
        name: str | None = None,
        json_file: str | None = None,
        level: str = "INFO",
    ) -> None:
        super().__init__(token=token, name=name)
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise irqbypass.InvalidEndpointError(
                f"logging consumer {self.name!r}: unknown level {level!r}; "
                "use DEBUG, INFO, WARNING or ERROR"
            )
        self.level = numeric
        self.json_file = json_file
        self.log = logging.getLogger(f"irqbypass.logging.{self.name}")
        self._lock = threading.Lock()
        self._json: IO[str] | None = None
        self._eventfd: irqbypass.Eventfd | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._delivered = 0
        self._reads = 0
        self.events: list[str] = []

    @classmethod
    def from_spec(cls, spec: irqbypass.EndpointSpec) -> LoggingConsumer:
        opts = spec.options_reader()
        consumer = cls(
            token=spec.token,
            name=spec.name,
            json_file=opts.get_str("json_file"),
            level=opts.get_str("level", "INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
            or "INFO",
        )
        opts.finish()
        return consumer

    def _event(self, event: str, **fields: Any) -> None:
        self.events.append(event)
        detail = "".join(f" {k}={v}" for k, v in fields.items())
        self.log.log(self.level, "%s %s%s", self.name, event, detail)
        if self._json is not None:
            record = {"time": time.time(), "consumer": self.name, "event": event, **fields}
            self._json.write(json.dumps(record, default=str) + "\n")
            self._json.flush()

    # -- the device side ---------------------------------------------------

    def open(self) -> None:
        if self._thread is not None:
            return
        if not isinstance(self.token, irqbypass.Eventfd):
            raise irqbypass.InvalidEndpointError(
                f"logging consumer {self.name!r}: token {self.token!r} is not an "
                "irqbypass.Eventfd, so there is nothing to read interrupts from"
            )
        if self.token.closed:
            raise irqbypass.InvalidEndpointError(
                f"logging consumer {self.name!r}: its token eventfd is closed"
            )
        if self.json_file is not None:
            self._json = self._open_json(self.json_file)
        self._eventfd = self.token
        self._closing.clear()
        self._event("open")
        self._thread = threading.Thread(
            target=self._run, name=f"irqbypass-logging-{self.name}", daemon=True
        )
        self._thread.start()

    def _open_json(self, path: str) -> IO[str]:
        """Append to ``path``, created 0600; a symlink is refused, not followed."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            hint = (
                " (it is a symbolic link; name the file itself)" if exc.errno == errno.ELOOP else ""
            )
            raise irqbypass.DeviceError(
                f"logging consumer {self.name!r}: cannot open json_file {path!r}: "
                f"{exc.strerror}{hint}",
                errno=exc.errno,
            ) from exc
        return os.fdopen(fd, "a", encoding="utf-8")

    def close(self) -> None:
        if self._thread is None:
            return
        self._closing.set()
        self._thread.join()
        self._thread = None
        self._drain(0)
        self._event("close", delivered=self._delivered)
        self._eventfd = None
        if self._json is not None:
            self._json.close()
            self._json = None

    def _run(self) -> None:
        while not self._closing.is_set():
            self._drain(_POLL_SECONDS)

    def _drain(self, timeout: float) -> None:
        eventfd = self._eventfd
        if eventfd is None or eventfd.closed:
            return
        count = eventfd.read(timeout)
        if count:
            with self._lock:
                self._delivered += count
                self._reads += 1
            self._event("interrupt", count=count)

    def stats(self) -> Mapping[str, int]:
        with self._lock:
            return {"delivered": self._delivered, "reads": self._reads}

    # -- the bypass callbacks ----------------------------------------------

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self._event("add_producer", producer=producer.name, irq=producer.irq)

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self._event("del_producer", producer=producer.name)

    def stop(self) -> None:
        self._event("stop")

    def start(self) -> None:
        self._event("start")


@irqbypass.hookimpl
def irqbypass_register_kinds(register: irqbypass.KindRegistrar) -> None:
    register.consumer("logging", LoggingConsumer.from_spec)
