"""One front-end connection to a vhost-user back-end: requests, replies, fds.

Every wait is bounded: one deadline, ``timeout`` seconds, for a whole request
(its message and fds, its reply, the round trip that makes it synchronous), so
a back-end that stalls, answers each part just in time, or queues this
connection behind another front-end (as qemu-storage-daemon does: it serves
one at a time), is an error, never a hang. Every wait is one
:func:`irqbypass.plugin.waits_on_peer` method: Ctrl-C is never deferred behind a back-end.
A reply is checked before it is believed: its request, version, reply flag and
size must be what the spec says, and fds it should not carry are closed. After
a back-end vanished or answered nonsense the connection is *broken*: every
later request fails at once with the first error, since the byte stream can no
longer be trusted.

The socket's file flags are never changed (every call passes MSG_DONTWAIT and
waits with poll), so a connection handed over by a VMM stays as the VMM set it.
"""

from __future__ import annotations

import array
import errno
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import irqbypass
import irqbypass.plugin

from . import _wire as wire
from ._dial import MAX_SOCKET_NAME, check_socket_path, dial
from .errors import BackendGoneError, BackendTimeoutError, ProtocolError, VhostUserError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_SOCKET_NAME",
    "MAX_TIMEOUT",
    "Connection",
    "Turns",
    "check_socket_path",
]

DEFAULT_TIMEOUT = 5.0
#: the longest wait a configuration may ask for (an hour: beyond any back-end
#: that still works; a larger value only hides a stuck one)
MAX_TIMEOUT = 3600.0
#: the longest single poll: a signal that the kernel gave another thread is
#: noticed by the main thread at the latest this long after
_POLL_SLICE = 0.05

_T = TypeVar("_T")
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED)
_FD_SPACE = socket.CMSG_SPACE(wire.MAX_FDS * array.array("i").itemsize)


class Turns:
    """What the connections to one socket share (producers handed the VMM's one
    connection, by one fd or by dups): one request at a time on the stream,
    and its first break, after which none of them can trust it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.broken: VhostUserError | None = None


class Connection:
    """The front-end's end of a vhost-user socket.

    Use :meth:`connect` for a socket path (the connection is owned and closed
    by :meth:`close`) or :meth:`from_fd` for a connection a VMM established
    (borrowed: :meth:`close` leaves the fd open). ``what`` starts every error
    message, so it names the producer and the back-end.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        what: str,
        timeout: float = DEFAULT_TIMEOUT,
        owned: bool = True,
        reply_ack: bool = False,
    ) -> None:
        self._sock: socket.socket | None = sock
        self.what = what
        self.timeout = timeout
        self.owned = owned
        #: REPLY_ACK negotiated: need_reply makes any request synchronous
        self.reply_ack = reply_ack
        #: shared with the other connections to this socket (see :class:`Turns`),
        #: set before the first request
        self.turns = Turns()

    @classmethod
    def connect(
        cls,
        path: str,
        *,
        what: str,
        timeout: float = DEFAULT_TIMEOUT,
        backend_uid: int | None = None,
    ) -> Connection:
        """Connect to the back-end listening at ``path``, within ``timeout``
        seconds, trusting it no further than :func:`~._dial.dial` checks (our
        uid, root and ``backend_uid``: "Who may listen" in the docs)."""
        sock = dial(path, what=what, timeout=timeout, backend_uid=backend_uid)
        return cls(sock, what=what, timeout=timeout, owned=True)

    @classmethod
    def from_fd(
        cls, fd: int, *, what: str, timeout: float = DEFAULT_TIMEOUT, reply_ack: bool = False
    ) -> Connection:
        """Borrow an established connection (the VMM's). The fd must be a
        connected UNIX stream socket."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            code = exc.errno or errno.EBADF
            raise VhostUserError(
                f"{what}: fd {fd} is not a vhost-user connection: {os.strerror(code)}; pass "
                "the fd of the UNIX socket the VMM connected to the back-end",
                errno=code,
            ) from exc
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise VhostUserError(
                f"{what}: fd {fd} is a {sock.family.name} {sock.type.name} socket, not the "
                "UNIX stream socket of a vhost-user connection",
                errno=errno.EINVAL,
            )
        return cls(sock, what=what, timeout=timeout, owned=False, reply_ack=reply_ack)

    # -- state -------------------------------------------------------------

    @property
    def broken(self) -> VhostUserError | None:
        """The error that made this socket's stream untrustworthy, or None."""
        return self.turns.broken

    @property
    def closed(self) -> bool:
        return self._sock is None

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def identity(self) -> tuple[int, int]:
        """The socket's kernel identity (device, inode): two fds of one
        connection have the same."""
        st = os.fstat(self.fileno())
        return (st.st_dev, st.st_ino)

    def alive(self) -> bool:
        """False once the back-end hung up (checked without waiting or reading)."""
        if self._sock is None or self.broken is not None:
            return False
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN | select.POLLRDHUP)
        events = poller.poll(0)
        if not events:
            return True
        revents = events[0][1]
        if revents & (select.POLLHUP | select.POLLRDHUP | select.POLLERR):
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self.owned:
            sock.close()
        else:
            sock.detach()

    # -- requests ----------------------------------------------------------

    @irqbypass.plugin.holding(lambda self: self.turns.lock)
    def request(
        self,
        request: wire.Request,
        payload: bytes = b"",
        fds: Sequence[int] = (),
        *,
        sync: bool = False,
    ) -> bytes:
        """Send one request; return its reply's payload (b"" for none).

        Requests the spec answers (GET_*) wait for their reply. With
        ``sync``, any other request is made synchronous: with REPLY_ACK by
        need_reply (the back-end's non-zero answer is a refusal), without it
        by a GET_FEATURES round trip behind it (a back-end handles messages in
        order, so its reply means the request was handled).

        Its turn on the socket first (the lock of :class:`Turns`, which a
        Ctrl-C still ends a wait for); once begun, it runs to its end but for
        its waits on the back-end, where a Ctrl-C acts at once.
        """
        self._check()
        deadline = time.monotonic() + self.timeout  # one for the whole exchange
        try:
            self._refuse_unasked(request)
            reply_size = wire.REPLY_SIZE.get(request)
            ack = sync and reply_size is None and self.reply_ack
            self._send(wire.message(request, payload, need_reply=ack), fds, request, deadline)
            if reply_size is not None:
                return self._receive(request, reply_size, deadline)
            if ack:
                status = wire.unpack_u64(self._receive(request, 8, deadline))
                if status != 0:
                    raise VhostUserError(
                        f"{self.what}: the back-end refused {wire.request_name(request)} "
                        f"(REPLY_ACK status {status:#x}); see its log",
                        errno=errno.EIO,
                    )
            elif sync:
                self._send(wire.message(wire.Request.GET_FEATURES), (), request, deadline)
                self._receive(wire.Request.GET_FEATURES, 8, deadline)
            return b""
        except VhostUserError as exc:
            # a late reply or a half-sent message would desynchronize the stream
            self.turns.broken = self.broken or exc
            raise
        except BaseException:  # Ctrl-C (or a bug) in the middle of a message: the same
            self.turns.broken = self.broken or ProtocolError(
                f"{self.what}: interrupted in the middle of {wire.request_name(request)}"
            )
            raise

    def _check(self) -> None:
        if self._sock is None:
            raise BackendGoneError(f"{self.what}: the connection is closed", errno=errno.EBADF)
        if self.broken is not None:
            raise type(self.broken)(
                f"{self.broken.message} (the connection has been unusable since)",
                errno=self.broken.errno,
            )

    def _refuse_unasked(self, request: wire.Request) -> None:
        """Bytes waiting before a request are no answer to it: a back-end that
        answers before it is asked would have every later reply taken for the
        one before."""
        assert self._sock is not None
        doing = f"before {wire.request_name(request)}"
        flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
        waiting = self._unblocked(doing, self._sock.recv, wire.MAX_PAYLOAD, flags)
        if waiting is None:
            return
        if not waiting:
            raise self._gone(f"before {wire.request_name(request)}")
        raise ProtocolError(
            f"{self.what}: {len(waiting)}{'+' if len(waiting) == wire.MAX_PAYLOAD else ''} "
            f"bytes from the back-end were waiting before {wire.request_name(request)} was "
            "sent: nothing asked for them (a reply sent early, or to another front-end "
            "sharing this connection); the stream cannot be trusted"
        )

    @irqbypass.plugin.waits_on_peer
    def _deadline_wait(self, events: int, deadline: float, doing: str) -> None:
        """Wait until the socket is ready or ``deadline`` passes. A wait on the
        peer: a request made in an uninterrupted method cannot defer Ctrl-C
        behind a back-end that does not answer."""
        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock.fileno(), events)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendTimeoutError(
                    f"{self.what}: the back-end did not {doing} within {self.timeout:g} s; "
                    "it is stuck, or it serves another front-end first (qemu-storage-daemon "
                    "queues a second connection until the first one closes): close the other "
                    "front-end, or check the back-end's log"
                )
            wait = math.ceil(min(remaining, _POLL_SLICE) * 1000)
            if poller.poll(wait):
                return

    def _unblocked(self, doing: str, call: Callable[..., _T], *args: Any) -> _T | None:
        """``call(*args)``, a non-blocking call on the socket: None when it
        would block; a :class:`BackendGoneError` when the back-end went away."""
        try:
            return call(*args)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _GONE:
                raise self._gone(doing, exc) from exc
            raise

    def _gone(self, doing: str, exc: OSError | None = None) -> BackendGoneError:
        if exc is None:
            cause, code = "it closed the connection (EOF)", errno.EPIPE
        else:
            code = exc.errno or errno.EPIPE
            cause = f"{os.strerror(code)} (errno {code})"
        return BackendGoneError(
            f"{self.what}: the back-end went away {doing}: {cause}; it exited, was killed "
            "or dropped this connection (its log says why). The eventfds and memory stay "
            "valid here: close this producer, restart the back-end and open the producer "
            "again",
            errno=code,
        )

    def _send(self, data: bytes, fds: Sequence[int], request: int, deadline: float) -> None:
        assert self._sock is not None
        doing = f"while sending {wire.request_name(request)}"
        view = memoryview(data)
        ancillary = (
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        )
        flags = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
        while view:
            self._deadline_wait(select.POLLOUT, deadline, f"accept {wire.request_name(request)}")
            sent = self._unblocked(doing, self._sock.sendmsg, [view], ancillary, flags)
            if sent is None:
                continue
            ancillary = []  # the fds went with the first byte
            view = view[sent:]

    def _receive(self, request: wire.Request, size: int, deadline: float) -> bytes:
        name = wire.request_name(request)
        header = wire.Header.unpack(self._read_exact(wire.HEADER.size, name, deadline))
        if header.request != request or header.version != wire.Flag.VERSION or not header.is_reply:
            raise ProtocolError(
                f"{self.what}: expected the reply to {name}, got "
                f"{wire.request_name(header.request)} with flags {header.flags:#x} (a reply "
                "has version 1 and bit 2 set): the back-end does not follow the "
                "vhost-user protocol, or another front-end shares this connection"
            )
        if header.size != size:
            raise ProtocolError(
                f"{self.what}: the reply to {name} has a {header.size}-byte payload, the "
                f"protocol says {size}: the back-end does not follow the vhost-user protocol"
            )
        return self._read_exact(size, name, deadline)

    def _read_exact(self, n: int, name: str, deadline: float) -> bytes:
        assert self._sock is not None
        chunks: list[bytes] = []
        got = 0
        flags, doing = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC, f"while answering {name}"
        while got < n:
            self._deadline_wait(select.POLLIN, deadline, f"answer {name}")
            received = self._unblocked(doing, self._sock.recvmsg, n - got, _FD_SPACE, flags)
            if received is None:
                continue
            data, ancdata, _flags, _addr = received
            stray = _close_fds(ancdata)
            if stray:
                raise ProtocolError(
                    f"{self.what}: the reply to {name} carried {stray} file descriptor(s), "
                    "which the protocol does not send with it (closed them)"
                )
            if not data:
                raise self._gone(f"before answering {name}")
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)


def _close_fds(ancdata: list[tuple[int, int, bytes]]) -> int:
    count = 0
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
                count += 1
    return count
