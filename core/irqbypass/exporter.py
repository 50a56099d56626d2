"""The HTTP side of ``--metrics-port``: one thread, bounded connections.

Anyone on the host (or the network, with ``--metrics-address``) can connect
to the port, so a scraper is a peer we do not trust. ``prometheus_client``'s
own server takes a thread per connection, with no cap and no timeout: a few
hundred idle connections were a few hundred threads, and then the process's
fd limit (where the control socket's accept spun). Here one thread serves
every connection through one selector: at most :data:`MAX_CONNECTIONS` at a
time (at the cap, the oldest one still sending its request is closed for the
newcomer: a real scraper sends its request at once), each with one deadline
of :data:`CONNECTION_SECONDS` for its request and the answer, a request of at
most :data:`MAX_REQUEST` bytes, and an accept that fails for want of fds
pauses the listener for :data:`PAUSE_SECONDS` instead of spinning. The thread
reads the last snapshot (``scrape``), never the topology.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

from .errors import IrqBypassError
from .options import show_exception

_log = logging.getLogger("irqbypass.metrics")

#: connections served at once; more wait in the kernel's backlog or evict an idle one
MAX_CONNECTIONS = 32
#: one deadline per connection: its request read and its answer sent
CONNECTION_SECONDS = 5.0
#: the longest request (its line and headers)
MAX_REQUEST = 8192
#: how long the listener rests when an accept fails for want of fds or memory
PAUSE_SECONDS = 0.25
_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Connection:
    __slots__ = ("answer", "deadline", "request", "sock", "started")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.started = now
        self.deadline = now + CONNECTION_SECONDS
        self.request = bytearray()
        #: what is left to send (None: still reading the request)
        self.answer: memoryview | None = None


class Exporter:
    """Serves ``scrape()`` over HTTP on ``address``:``port`` from a thread of
    its own until :meth:`close`."""

    def __init__(self, port: int, address: str, scrape: Callable[[], bytes]) -> None:
        self.scrape = scrape
        self._listener = _listen(port, address)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._connections: dict[int, _Connection] = {}
        self._paused_until: float | None = None
        self._stop = threading.Event()
        try:
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            from .loop import _start_thread  # its signals blocked, as the loop's threads

            self._thread: threading.Thread | None = _start_thread(self._run, "irqbypass-metrics")
        except BaseException:
            self._release()
            raise

    @property
    def connections(self) -> int:
        """Connections held now (at most :data:`MAX_CONNECTIONS`)."""
        return len(self._connections)

    def close(self) -> None:
        """Stop the thread, close every connection and the listener (once)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        thread.join()
        self._release()

    def _release(self) -> None:
        for connection in list(self._connections.values()):
            connection.sock.close()
        self._connections.clear()
        self._selector.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception as exc:  # a bug here must not kill the exporter silently
                _log.error("irqbypass: the metrics exporter failed: %s", show_exception(exc))
                time.sleep(PAUSE_SECONDS)

    def _turn(self) -> None:
        now = time.monotonic()
        wake = [c.deadline for c in self._connections.values()]
        if self._paused_until is not None:
            wake.append(self._paused_until)
        timeout = max(0.0, min(wake) - now) if wake else None
        for key, events in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            elif isinstance(key.fd, int) and key.fd in self._connections:
                self._step(self._connections[key.fd], events)
        now = time.monotonic()
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            self._drop(connection)  # too slow: its deadline passed
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _SHORTAGE:  # rest instead of spinning on a ready listener
                    self._selector.unregister(self._listener)
                    self._paused_until = time.monotonic() + PAUSE_SECONDS
                return
            sock.setblocking(False)
            if len(self._connections) >= MAX_CONNECTIONS and not self._evict():
                sock.close()  # every slot is sending an answer: this one comes back later
                continue
            connection = _Connection(sock, time.monotonic())
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ)

    def _evict(self) -> bool:
        """Close the oldest connection still sending its request; whether one was."""
        reading = [c for c in self._connections.values() if c.answer is None]
        if not reading:
            return False
        self._drop(min(reading, key=lambda c: c.started))
        return True

    def _drop(self, connection: _Connection) -> None:
        self._connections.pop(connection.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()

    def _step(self, connection: _Connection, events: int) -> None:
        try:
            if connection.answer is None and events & selectors.EVENT_READ:
                self._read(connection)
            elif connection.answer is not None and events & selectors.EVENT_WRITE:
                self._send(connection)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(connection)

    def _read(self, connection: _Connection) -> None:
        chunk = connection.sock.recv(4096)
        if not chunk:
            self._drop(connection)
            return
        connection.request += chunk
        end = connection.request.find(b"\r\n\r\n")
        if end < 0:
            end = connection.request.find(b"\n\n")
        if end < 0:
            if len(connection.request) > MAX_REQUEST:
                self._drop(connection)
            return
        connection.answer = memoryview(self._answer(bytes(connection.request[:end])))
        self._selector.modify(connection.sock, selectors.EVENT_WRITE)
        self._send(connection)

    def _answer(self, request: bytes) -> bytes:
        method = request.split(b" ", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, "Method Not Allowed", b"only GET\n", "text/plain")
        try:
            body = self.scrape()
        except Exception as exc:
            _log.error("irqbypass: a metrics scrape failed: %s", show_exception(exc))
            return _response(500, "Internal Server Error", b"scrape failed\n", "text/plain")
        response = _response(200, "OK", body, _CONTENT_TYPE)
        return response[: len(response) - len(body)] if method == b"HEAD" else response

    def _send(self, connection: _Connection) -> None:
        assert connection.answer is not None
        sent = connection.sock.send(connection.answer)
        connection.answer = connection.answer[sent:]
        if not connection.answer:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            self._drop(connection)


def _response(code: int, reason: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _listen(port: int, address: str) -> socket.socket:
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
    except OSError as exc:
        code = getattr(exc, "errno", None)
        raise IrqBypassError(
            f"--metrics-port {port}: cannot listen on {address}: {exc.strerror or exc}",
            errno=code if isinstance(code, int) and code > 0 else None,
        ) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise IrqBypassError(
            f"--metrics-port {port}: cannot listen on {address}: {exc.strerror}",
            errno=exc.errno,
        ) from exc
    return sock
