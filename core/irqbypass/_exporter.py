"""The HTTP side of ``--metrics-port``: one thread, bounded connections.

Anyone on the host (or the network, with ``--metrics-address``) can connect
to the port, so a scraper is a peer we do not trust. ``prometheus_client``'s
own server takes a thread per connection, with no cap and no timeout: a few
hundred idle connections were a few hundred threads, and then the process's
fd limit (where the control socket's accept spun). Here one thread serves
every connection through :class:`irqbypass.serving.Conversations`, as the
control socket does: at most :data:`MAX_CONNECTIONS` at a time, each with
:data:`CONNECTION_SECONDS` for its request and again for the answer, a
request of at most :data:`MAX_REQUEST` bytes. The thread reads the last
snapshot (``scrape``), never the topology.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable

from ._errors import IrqBypassError
from ._options import show_exception
from ._serving import PAUSE_SECONDS, Conversations

_log = logging.getLogger("irqbypass.metrics")

#: connections served at once; more wait in the kernel's backlog or evict an idle one
MAX_CONNECTIONS = 32
#: one deadline per connection: its request read and its answer sent
CONNECTION_SECONDS = 5.0
#: the longest request (its line and headers)
MAX_REQUEST = 8192
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Exporter:
    """Serves ``scrape()`` over HTTP on ``address``:``port`` from a thread of
    its own until :meth:`close`."""

    def __init__(self, port: int, address: str, scrape: Callable[[], bytes]) -> None:
        self.scrape = scrape
        self._listener = _listen(port, address)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self._connections = Conversations(
                self._listener, limit=MAX_CONNECTIONS, seconds=CONNECTION_SECONDS,
                max_request=MAX_REQUEST, complete=_headers_of, respond=self._answer,
            )  # fmt: skip
            self._connections.add_waker(self._wake_r)
            from ._loop import _start_thread  # its signals blocked, as the loop's threads

            self._thread = _start_thread(self._run, "irqbypass-metrics")
        except BaseException:
            self._release()
            raise

    @property
    def connections(self) -> int:
        """Connections held now (at most :data:`MAX_CONNECTIONS`)."""
        return len(self._connections)

    def close(self) -> None:
        """Stop the thread, close every connection and the listener (once).
        A Ctrl-C while the thread ends its scrape leaves it all for the next
        call: nothing the thread may still use is closed under it."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        thread.join()
        self._thread = None
        self._release()

    def _release(self) -> None:
        if hasattr(self, "_connections"):
            self._connections.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connections.serve(self._connections.timeout())
            except Exception as exc:  # a bug here must not kill the exporter silently
                _log.error("irqbypass: the metrics exporter failed: %s", show_exception(exc))
                self._stop.wait(PAUSE_SECONDS)

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


def _headers_of(received: bytes, eof: bool) -> bytes | None:
    """A request: its line and headers, once they end (a blank line)."""
    for blank in (b"\r\n\r\n", b"\n\n"):
        end = received.find(blank)
        if end >= 0:
            return received[:end]
    return None


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
