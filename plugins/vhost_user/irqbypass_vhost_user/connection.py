"""One front-end connection to a vhost-user back-end: requests, replies, fds.

Every wait is bounded: one deadline, ``timeout`` seconds, for a whole request
(its message and fds, its reply, the round trip that makes it synchronous), so
a back-end that stalls, answers each part just in time, or queues this
connection behind another front-end (as qemu-storage-daemon does: it serves
one at a time), is an error, never a hang. Every wait is
:func:`irqbypass.interruptible`: Ctrl-C is never deferred behind a back-end.
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
import stat
import struct
import threading
import time
from collections.abc import Sequence

import irqbypass

from . import _wire as wire
from .errors import BackendGoneError, BackendTimeoutError, ProtocolError, VhostUserError

__all__ = ["DEFAULT_TIMEOUT", "MAX_SOCKET_NAME", "MAX_TIMEOUT", "Connection", "check_socket_path"]

DEFAULT_TIMEOUT = 5.0
#: the longest wait a configuration may ask for (an hour: beyond any back-end
#: that still works; a larger value only hides a stuck one)
MAX_TIMEOUT = 3600.0
_SUN_PATH = 108
#: a socket's file name must fit sun_path behind "/proc/self/fd/<fd>/"
MAX_SOCKET_NAME = _SUN_PATH - 1 - len("/proc/self/fd//") - 10
_PROC_FD = os.path.isdir("/proc/self/fd")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: the longest single poll: a signal that the kernel gave another thread is
#: noticed by the main thread at the latest this long after
_POLL_SLICE = 0.05

_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED)
_FD_SPACE = socket.CMSG_SPACE(wire.MAX_FDS * array.array("i").itemsize)


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
        self.broken: VhostUserError | None = None
        self._lock = threading.Lock()

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
        seconds.

        The path is trusted no further than it is checked (see
        ``docs/plugins/vhost-user.md``, "Who may listen"): its directory is
        opened without following a link and must be one only a trusted user
        can change (:func:`irqbypass.open_directory`); the socket must be a
        socket (not a link) owned by a trusted user, and so must be the
        process that listens (``SO_PEERCRED``). Trusted: our uid, root, and
        ``backend_uid`` if given. A missing socket fails at once: waiting for
        it to appear would let whoever creates it first be the back-end. A
        socket that refuses (a back-end between bind and listen) or whose
        backlog is full is retried until the deadline; the connect itself
        never blocks.
        """
        deadline = time.monotonic() + timeout
        check_socket_path(path)
        trusted = irqbypass.trusted_uids(backend_uid)
        directory, name = irqbypass.split_path(path)
        try:
            dirfd = irqbypass.open_directory(directory, trusted=trusted)
        except irqbypass.UnsafePathError as exc:
            if exc.errno == errno.ENOENT:
                raise BackendGoneError(
                    f"{what}: cannot connect to {path}: {exc.message}; start the back-end "
                    "first (its socket's directory does not exist)",
                    errno=errno.ENOENT,
                ) from exc
            raise VhostUserError(
                f"{what}: refused socket {path}: {exc.message}", errno=exc.errno
            ) from exc
        try:
            address = _checked_socket(dirfd, name, path, what, trusted)
            sock = _connect_within(address, path, what, deadline, timeout)
            try:
                _check_peer(sock, path, what, trusted)
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(dirfd)
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
        """
        with self._lock:
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
                self.broken = self.broken or exc
                raise
            except BaseException:  # Ctrl-C (or a bug) in the middle of a message: the same
                self.broken = self.broken or ProtocolError(
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
        try:
            waiting = self._sock.recv(wire.MAX_PAYLOAD, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in _GONE:
                raise self._gone(f"before {wire.request_name(request)}", exc) from exc
            raise
        if not waiting:
            raise self._gone(f"before {wire.request_name(request)}")
        raise ProtocolError(
            f"{self.what}: {len(waiting)}{'+' if len(waiting) == wire.MAX_PAYLOAD else ''} "
            f"bytes from the back-end were waiting before {wire.request_name(request)} was "
            "sent: nothing asked for them (a reply sent early, or to another front-end "
            "sharing this connection); the stream cannot be trusted"
        )

    def _deadline_wait(self, events: int, deadline: float, doing: str) -> None:
        """Wait until the socket is ready or ``deadline`` passes. The wait is
        :func:`irqbypass.interruptible`: a request made in a signal-safe
        section cannot defer Ctrl-C behind a back-end that does not answer."""
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
            if irqbypass.interruptible(poller.poll, wait):
                return

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
        while view:
            self._deadline_wait(select.POLLOUT, deadline, f"accept {wire.request_name(request)}")
            try:
                sent = self._sock.sendmsg(
                    [view], ancillary, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
                )
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in _GONE:
                    raise self._gone(doing, exc) from exc
                raise
            ancillary = []  # the fds went with the first byte
            view = view[sent:]

    def _receive(self, request: wire.Request, size: int, deadline: float) -> bytes:
        name = wire.request_name(request)
        header = wire.Header.unpack(self._read_exact(wire.HEADER.size, name, deadline))
        if header.request != request or header.version != wire.VERSION or not header.is_reply:
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
        while got < n:
            self._deadline_wait(select.POLLIN, deadline, f"answer {name}")
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(
                    n - got, _FD_SPACE, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in _GONE:
                    raise self._gone(f"while answering {name}", exc) from exc
                raise
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


def check_socket_path(path: str) -> None:
    """Refuse a socket path this front-end cannot connect to, before anything
    is opened (so ``check`` reports it): empty, with a NUL, or with a last
    component too long for ``sun_path`` once behind ``/proc/self/fd/N/``."""
    if not path or "\0" in path:
        raise VhostUserError(
            f"socket path {path!r} is empty or contains a NUL byte: name the back-end's "
            "UNIX socket file",
            errno=errno.EINVAL,
        )
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        raise VhostUserError(
            f"socket path {path!r} names a directory, not the back-end's socket file",
            errno=errno.EINVAL,
        )
    if len(os.fsencode(name)) > MAX_SOCKET_NAME:
        raise VhostUserError(
            f"socket path {path!r}: its file name has {len(os.fsencode(name))} bytes, more "
            f"than the {MAX_SOCKET_NAME} that fit a UNIX socket address behind "
            "/proc/self/fd/N/ (sun_path holds 108): use a shorter file name (the directory "
            "may be as long as you like)",
            errno=errno.ENAMETOOLONG,
        )


def _checked_socket(dirfd: int, name: str, path: str, what: str, trusted: frozenset[int]) -> str:
    """The address to connect to for ``name`` in the directory ``dirfd``, after
    checking with lstat that it is a socket a trusted user owns."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError as exc:
        raise BackendGoneError(
            f"{what}: cannot connect to {path}: no such socket (errno {errno.ENOENT}); start "
            "the back-end first (for qemu-storage-daemon: --export type=vhost-user-blk,...,"
            f"addr.type=unix,addr.path={path}); this front-end does not wait for the path to "
            "appear (whoever created it first would be the back-end)",
            errno=errno.ENOENT,
        ) from exc
    if stat.S_ISLNK(st.st_mode):
        raise VhostUserError(
            f"{what}: refused socket {path}: it is a symbolic link, which could lead to "
            "another user's back-end; name the socket itself",
            errno=errno.ELOOP,
        )
    if not stat.S_ISSOCK(st.st_mode):
        raise BackendGoneError(
            f"{what}: cannot connect to {path}: it is not a UNIX socket (errno "
            f"{errno.ENOTSOCK}); name the back-end's socket",
            errno=errno.ENOTSOCK,
        )
    try:
        irqbypass.check_owner(st, trusted, f"socket {path}")
    except irqbypass.UnsafePathError as exc:
        raise VhostUserError(
            f"{what}: refused {exc.message}; if the back-end runs as uid {st.st_uid}, say so "
            f"with backend_uid = {st.st_uid}",
            errno=exc.errno,
        ) from exc
    if _PROC_FD:
        return f"/proc/self/fd/{dirfd}/{name}"  # the checked directory, not the path again
    if len(os.fsencode(path)) >= _SUN_PATH:
        raise VhostUserError(
            f"{what}: cannot connect to {path}: /proc is not mounted and the path is longer "
            f"than a UNIX socket address holds ({_SUN_PATH - 1} bytes)",
            errno=errno.ENAMETOOLONG,
        )
    return path


def _connect_within(
    address: str, path: str, what: str, deadline: float, timeout: float
) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)  # ours: a full backlog must not block past the deadline
        while True:
            try:
                sock.connect(address)
                break
            except (BlockingIOError, ConnectionRefusedError) as exc:
                if time.monotonic() >= deadline:
                    if isinstance(exc, BlockingIOError):
                        raise BackendTimeoutError(
                            f"{what}: cannot connect to {path} within {timeout:g} s: its "
                            "backlog is full (the back-end does not accept connections); "
                            "check the back-end"
                        ) from exc
                    raise BackendGoneError(
                        f"{what}: cannot connect to {path}: nothing listens there (errno "
                        f"{errno.ECONNREFUSED}): the back-end exited (a stale socket file); "
                        "restart it",
                        errno=errno.ECONNREFUSED,
                    ) from exc
                # a back-end between bind and listen, or busy: try again until the deadline
                irqbypass.interruptible(time.sleep, 0.01)
            except OSError as exc:
                code = exc.errno or errno.EIO
                hint = {
                    errno.EACCES: "no permission to connect: run as the back-end's user or "
                    "fix the socket's mode",
                }.get(code, "see the back-end's log")
                raise BackendGoneError(
                    f"{what}: cannot connect to {path}: {os.strerror(code)} (errno {code}); {hint}",
                    errno=code,
                ) from exc
        sock.setblocking(True)  # as a VMM's own connection would be: every call polls
        return sock
    except BaseException:
        sock.close()
        raise


def _check_peer(sock: socket.socket, path: str, what: str, trusted: frozenset[int]) -> None:
    """Refuse a listener whose process runs as an untrusted user: the socket
    file could be a trusted user's and still be served by someone else's
    process (a connect follows what is there as it connects)."""
    pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    if uid not in trusted:
        allowed = ", ".join(str(u) for u in sorted(trusted))
        raise VhostUserError(
            f"{what}: refused the back-end at {path}: its process (pid {pid}) runs as uid "
            f"{uid}, not a trusted user (uid {allowed}); it would receive the guest's memory "
            f"and eventfds. If uid {uid} is the back-end's user, say so with backend_uid = "
            f"{uid}",
            errno=errno.EACCES,
        )


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
