"""The control socket of a running ``irqbypass run --control PATH``.

A UNIX stream socket created mode 0600, owned by the user running irqbypass. A
client sends one line, ``status`` or ``reload``, and gets one JSON document back.
Nothing here trusts the other end: a peer whose uid (``SO_PEERCRED``) is not ours
is refused, a request is one line of at most :data:`MAX_REQUEST` bytes, and every
read and write has one deadline, so a client that stalls delays the run by at most
:data:`SERVE_SECONDS`. The server runs in the run's main loop: no thread.

The socket's directory is opened without following links and checked with
:func:`irqbypass.open_directory` (it and every directory above it owned by us or
root, writable by no one else unless sticky), and the socket is created, checked
and removed through that directory's fd: a link planted in the path is never
followed. A socket file left by a run that was killed is replaced only if it is
a socket, ours, and nothing answers on it; any other file there is refused,
never removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from .errors import IrqBypassError
from .paths import open_directory, split_path

#: the longest request line; a request is a word
MAX_REQUEST = 256
#: how long one client may take, request and answer included
SERVE_SECONDS = 2.0
#: how long ``irqbypass status`` waits for the answer
CLIENT_SECONDS = 10.0
#: the biggest answer a client takes (a status of 100k pairs fits)
MAX_ANSWER = 64 * 1024 * 1024
REQUESTS = ("status", "reload")

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (the kernel's SO_PEERCRED)."""
    _pid, uid, _gid = _CRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    )
    return int(uid)


class ControlServer:
    """Listens on ``path``; :meth:`serve` answers the clients waiting now."""

    def __init__(self, path: str, answer: Callable[[str], dict[str, Any]]) -> None:
        self.path = path
        self.answer = answer
        self.refused = 0
        directory, self._name = split_path(path)
        self._dir = open_directory(directory)
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except BaseException:
            os.close(self._dir)
            raise
        try:
            self._bind()
            self._sock.listen(16)
            self._sock.setblocking(False)
            info = os.lstat(self._name, dir_fd=self._dir)
            self._inode = (info.st_dev, info.st_ino)
        except BaseException:
            self._sock.close()
            os.close(self._dir)
            raise

    @property
    def _via_fd(self) -> str:
        """The socket's path through the checked directory's fd (no link followed)."""
        return f"/proc/self/fd/{self._dir}/{self._name}"

    def _bind(self) -> None:
        self._replace_stale()
        old_umask = os.umask(0o177)  # created 0600: no moment where others could connect
        try:
            self._sock.bind(self._via_fd)
        except OSError as exc:
            raise IrqBypassError(
                f"--control {self.path}: cannot create the socket: {exc.strerror}",
                errno=exc.errno,
            ) from exc
        finally:
            os.umask(old_umask)

    def _replace_stale(self) -> None:
        try:
            info = os.lstat(self._name, dir_fd=self._dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise IrqBypassError(f"--control {self.path}: {exc.strerror}", errno=exc.errno) from exc
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
            raise IrqBypassError(
                f"--control {self.path}: the path exists and is not a socket of yours; "
                "name a new path (it is never removed)",
                errno=errno.EEXIST,
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.settimeout(1.0)
            probe.connect(self._via_fd)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name, dir_fd=self._dir)  # a killed run's: nothing listens
            return
        except OSError:
            pass
        finally:
            probe.close()
        raise IrqBypassError(
            f"--control {self.path}: another irqbypass run is listening there; "
            "stop it, or name another path",
            errno=errno.EADDRINUSE,
        )

    def fileno(self) -> int:
        return self._sock.fileno()

    def serve(self) -> int:
        """Answer every client waiting to connect now; how many were answered."""
        answered = 0
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return answered
            except OSError:
                return answered  # out of fds, say: the next tick tries again
            with conn:
                if self._serve_one(conn):
                    answered += 1

    def _serve_one(self, conn: socket.socket) -> bool:
        deadline = time.monotonic() + SERVE_SECONDS
        conn.setblocking(False)
        try:
            uid = peer_uid(conn)
        except OSError:
            return False
        if uid != os.getuid():
            self.refused += 1
            _send(conn, _line({"ok": False, "error": "refused: not the run's user"}), deadline)
            return False
        request = _read_line(conn, deadline)
        if request is None:
            return False
        if request not in REQUESTS:
            reply: dict[str, Any] = {
                "ok": False,
                "error": f"unknown request {request[:40]!r}; send one of: {', '.join(REQUESTS)}",
            }
        else:
            reply = self.answer(request)
        _send(conn, _line(reply), deadline)
        return True

    def close(self) -> None:
        """Stop listening and remove the socket file, if it is still ours (once)."""
        if self._dir < 0:
            return
        self._sock.close()
        with contextlib.suppress(OSError):
            info = os.lstat(self._name, dir_fd=self._dir)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self._name, dir_fd=self._dir)
        os.close(self._dir)
        self._dir = -1


def _line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc) + "\n").encode()


def _wait(sock: socket.socket, event: int, deadline: float) -> bool:
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(int(left * 1000) + 1))


def _read_line(sock: socket.socket, deadline: float) -> str | None:
    """One request line, or None (a peer too slow, too long or gone)."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_REQUEST or not _wait(sock, select.POLLIN, deadline):
            return None
        try:
            chunk = sock.recv(MAX_REQUEST + 1)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not chunk:
            break
        data += chunk
    try:
        return data.split(b"\n", 1)[0].decode("ascii").strip()
    except UnicodeDecodeError:
        return ""


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        if not _wait(sock, select.POLLOUT, deadline):
            return  # the client stopped reading: it gets a cut answer
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        except OSError:
            return
        view = view[sent:]


def request(path: str, what: str, timeout: float = CLIENT_SECONDS) -> dict[str, Any]:
    """Ask the run listening on ``path``; its answer. The server must run as
    our user (SO_PEERCRED): an answer from anyone else is not read."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with sock:
        deadline = time.monotonic() + timeout
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            hint = (
                "; is `irqbypass run --control PATH` running?"
                if exc.errno in (errno.ENOENT, errno.ECONNREFUSED)
                else ""
            )
            raise IrqBypassError(
                f"{path}: cannot connect: {exc.strerror}{hint}", errno=exc.errno
            ) from exc
        uid = peer_uid(sock)
        if uid != os.getuid():
            raise IrqBypassError(
                f"{path}: the process listening there runs as uid {uid}, not as you "
                f"({os.getuid()}); not asking it",
                errno=errno.EPERM,
            )
        sock.setblocking(False)
        _send(sock, f"{what}\n".encode(), deadline)
        data = b""
        while True:
            if not _wait(sock, select.POLLIN, deadline):
                raise IrqBypassError(
                    f"{path}: no answer within {timeout:.0f} s", errno=errno.ETIMEDOUT
                )
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_ANSWER:
                raise IrqBypassError(f"{path}: the answer is over {MAX_ANSWER} bytes")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise IrqBypassError(f"{path}: the answer is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise IrqBypassError(f"{path}: the answer is not a JSON object")
    return doc
