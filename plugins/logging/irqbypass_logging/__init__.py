"""irqbypass-logging: a consumer that logs what happens to it.

Every lifecycle step (open, add_producer, stop, start, del_producer, close) and
every interrupt read from its eventfd is logged through stdlib ``logging``
(logger ``irqbypass.logging.<name>``) and, optionally, as JSON lines to a file
created with mode 0600 (a symbolic link there is refused). It counts what it
received.

Over a long run it keeps only the last :data:`EVENTS_KEPT` event names in
memory. A ``json_file`` write error (a full disk, say) is logged once by name;
counting goes on, the file is given up, and ``close()`` reports how many records
were lost once everything else is closed. A token closed under an open consumer
is reported and stops the reader (it never reads an fd number reused since).

It reads on the process's event loop (:func:`irqbypass.event_loop`): no thread of
its own, so thousands of consumers cost one loop thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Hashable, Mapping
from typing import IO, Any

import irqbypass
import irqbypass.plugin
import irqbypass.system
from irqbypass.plugin import show_value

__all__ = ["LoggingConsumer", "irqbypass_register_kinds"]

#: the parent of every consumer's logger (``irqbypass.logging.<name>``)
_PARENT = "irqbypass.logging"
_PARENT_LOGGER = logging.getLogger(_PARENT)
#: logging's table of loggers by name (a name absent from it has no Logger yet)
_LOGGERS = logging.Logger.manager.loggerDict

#: how many of the latest event names ``LoggingConsumer.events`` keeps
EVENTS_KEPT = 1000
#: a topology entry's options: the constructor's keywords
OPTIONS = {
    "json_file": irqbypass.plugin.Option("str"),
    "level": irqbypass.plugin.Option("str", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
}


def _printable(value: object) -> str:
    """Text for a log line: control characters escaped (a name cannot clear the
    terminal or forge a line), and an object whose str() fails named by type."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        return f"<{type(value).__name__}>"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class LoggingConsumer(irqbypass.Consumer):
    """Reads its token eventfd on the event loop while open; logs and counts.

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
        if not isinstance(level, str):
            raise irqbypass.InvalidEndpointError(
                f"logging consumer {self.name!r}: level must be a str such as 'INFO', "
                f"not {type(level).__name__}"
            )
        if json_file is not None and (
            not isinstance(json_file, str) or not json_file or "\0" in json_file
        ):
            raise irqbypass.InvalidEndpointError(
                f"logging consumer {self.name!r}: json_file must be a path (a non-empty str "
                f"without NUL) or None, not {show_value(json_file)}"
            )
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise irqbypass.InvalidEndpointError(
                f"logging consumer {self.name!r}: unknown level {show_value(level)}; "
                "use DEBUG, INFO, WARNING or ERROR"
            )
        self.level = numeric
        self.json_file = json_file
        #: the name as log lines show it (control characters escaped)
        self._shown = _printable(self.name)
        self._log_name = f"{_PARENT}.{self._shown}"
        self._log: logging.Logger | None = None
        self._log_parent_is_ours = "." not in self._shown
        self._lock = threading.Lock()
        self._json_lock = threading.Lock()
        self._json: IO[str] | None = None
        self._eventfd: irqbypass.Eventfd | None = None
        self._reader: irqbypass.plugin.LoopHandle | None = None
        #: what made the loop remove the reader (its callback raised), kept after close
        self._problem: str | None = None
        self._delivered = 0
        self._reads = 0
        self._events: collections.deque[str] = collections.deque(maxlen=EVENTS_KEPT)
        #: records not written to json_file since it failed, and the first failure
        self._json_lost = 0
        self._json_error: OSError | None = None
        self._token_closed = False

    @property
    def log(self) -> logging.Logger:
        """The consumer's logger, ``irqbypass.logging.<name>``, made on first use:
        a Logger stays in :mod:`logging`'s table for the process's life, and
        ten thousand consumers that log nothing need none (8-10 us each)."""
        if self._log is None:
            self._log = logging.getLogger(self._log_name)
        return self._log

    @property
    def events(self) -> list[str]:
        """The latest event names, oldest first (at most :data:`EVENTS_KEPT`)."""
        return list(self._events)

    def _logs(self) -> bool:
        """Whether a record at ``self.level`` passes the consumer's logger, as
        ``self.log.isEnabledFor`` says, without making that logger: while it
        does not exist it has no level, and (its name without a dot of its own)
        its effective level is its parent's: the parent's cached
        ``isEnabledFor`` says it, unless the parent itself is disabled."""
        if (
            self._log is not None
            or not self._log_parent_is_ours
            or isinstance(_LOGGERS.get(self._log_name), logging.Logger)
        ):
            return self.log.isEnabledFor(self.level)
        if not _PARENT_LOGGER.disabled:
            return _PARENT_LOGGER.isEnabledFor(self.level)
        return (
            logging.root.manager.disable < self.level
            and self.level >= _PARENT_LOGGER.getEffectiveLevel()
        )

    def _event(self, event: str, **fields: Any) -> None:
        self._events.append(event)
        if self._logs():  # the line is built only to be logged
            detail = "".join(f" {k}={_printable(v)}" for k, v in fields.items())
            self.log.log(self.level, "%s %s%s", self._shown, event, detail)
        if self._json is None and self._json_error is None:
            return  # no json_file: nothing to write or count
        with self._json_lock:  # the loop's reader and the manager's callbacks both write
            if self._json_error is not None:
                self._json_lost += 1
            elif self._json is not None:
                record = {"time": time.time(), "consumer": self.name, "event": event, **fields}
                try:
                    self._json.write(json.dumps(record, default=_printable) + "\n")
                    self._json.flush()
                except OSError as exc:
                    self._json_failed(exc)

    def _json_failed(self, exc: OSError) -> None:
        """Give the file up (the record being written counts as lost) and say so once."""
        self._json_error, self._json_lost = exc, self._json_lost + 1
        json_file, self._json = self._json, None
        if json_file is not None:
            # what was still buffered is counted as lost already
            with contextlib.suppress(OSError):
                json_file.close()
        self.log.error(
            "logging consumer %r: writing json_file %r failed (%s); interrupts are still "
            "counted, further records are not written",
            self.name,
            self.json_file,
            exc.strerror or exc,
        )

    # -- the device side ---------------------------------------------------

    def open(self) -> None:
        if self._reader is not None:
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
        self._json_error, self._json_lost, self._token_closed = None, 0, False
        self._problem = None
        self._eventfd = self.token
        self._event("open")
        try:
            self._reader = irqbypass.event_loop().add_reader(
                self.token, self._on_readable, owner=f"logging consumer {self.name!r}"
            )
        except BaseException:
            self._eventfd = None
            if self._json is not None:
                json_file, self._json = self._json, None
                with contextlib.suppress(OSError):
                    json_file.close()
            raise

    def _open_json(self, path: str) -> IO[str]:
        """Append to ``path``, created 0600, through :func:`irqbypass.system.open_file`:
        a symlink is refused, not followed; a FIFO cannot hang the open; a file
        another user owns or can write (who would read or forge our records),
        or one in a directory others can change, is refused; a character
        device root owns (/dev/null) is taken, non-blocking."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        whose = f"logging consumer {self.name!r}"
        try:
            fd = irqbypass.system.open_file(path, flags, 0o600, what="json_file", devices=True)
        except irqbypass.system.UnsafePathError as exc:  # the path's own words, and whose it is
            raise irqbypass.system.UnsafePathError(
                f"{whose}: {exc.message}", errno=exc.errno
            ) from exc
        except OSError as exc:
            problem = f"cannot open json_file {show_value(path)}: {exc.strerror}"
            raise irqbypass.DeviceError(f"{whose}: {problem}", errno=exc.errno) from exc
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            # a terminal (/dev/tty, a pty) waits for its reader, and close() and the
            # loop's reader must not: a write it cannot take now is a lost record
            os.set_blocking(fd, False)
        return os.fdopen(fd, "a", encoding="utf-8")

    @irqbypass.plugin.uninterrupted
    def close(self) -> None:
        """Stop the reader, take what is left, close the file; then raise a
        DeviceError if json_file records were lost. Once begun it runs to its
        end: a Ctrl-C landing in it acts as it returns (the file closed, the
        last records written). Its one wait is for the reader's callback, on
        this process's loop: no other process."""
        reader = self._reader
        if reader is None:
            return
        reader.cancel()  # returns once the callback is not running
        self._reader = None
        self._problem = reader.problem
        self._on_readable()  # the last look, the reader gone: nothing to cancel
        self._event("close", delivered=self._delivered)
        self._eventfd = None
        if self._json is not None:
            json_file, self._json = self._json, None
            try:
                json_file.close()
            except OSError as exc:
                self._json_error, self._json_lost = exc, self._json_lost + 1
        if self._json_error is not None:
            error = self._json_error
            raise irqbypass.DeviceError(
                f"logging consumer {self.name!r}: {self._json_lost} records were not written to "
                f"json_file {self.json_file!r} ({error.strerror or error}); every interrupt was "
                "still counted; free space or pick another file",
                errno=error.errno,
            ) from error

    def _on_readable(self) -> None:
        """Take and count what the eventfd holds (never waits): the loop's
        callback, and close()'s last look. A token closed under the consumer
        is reported once and stops the reader."""
        eventfd = self._eventfd
        if eventfd is None or self._token_closed:
            return
        try:
            count = eventfd.read(0)
        except irqbypass.EventfdClosedError:
            self._report_token_closed()
            reader = self._reader
            if reader is not None:
                reader.cancel()
            return
        if count:
            with self._lock:
                self._delivered += count
                self._reads += 1
            self._event("interrupt", count=count)

    def _report_token_closed(self) -> None:
        if self._token_closed:
            return
        self._token_closed = True
        self.log.error(
            "logging consumer %r: its token eventfd was closed while the consumer was open; "
            "it stops reading (close endpoints before their token)",
            self.name,
        )

    def stats(self) -> Mapping[str, int]:
        with self._lock:
            stats = {"delivered": self._delivered, "reads": self._reads}
        if self._json_error is not None:
            stats["json_lost"] = self._json_lost
        if self._token_closed:
            stats["token_closed"] = 1
        if self.problem is not None:
            stats["loop_errors"] = 1
        return stats

    @property
    def problem(self) -> str | None:
        """Why the loop stopped this consumer's reader (its callback raised), or None."""
        reader = self._reader
        return reader.problem if reader is not None else self._problem

    # -- the bypass callbacks ----------------------------------------------

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self._event("add_producer", producer=producer.name, irq=producer.irq)

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self._event("del_producer", producer=producer.name)

    def stop(self) -> None:
        self._event("stop")

    def start(self) -> None:
        self._event("start")


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.consumer("logging", irqbypass.plugin.KeywordFactory(LoggingConsumer, OPTIONS))
