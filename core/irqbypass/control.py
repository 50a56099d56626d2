"""The control socket of a running ``irqbypass run --control PATH``.

A UNIX stream socket created mode 0600, owned by the user running irqbypass. A
client sends one line, ``status`` or ``reload``, and gets one JSON document back.
Nothing here trusts the other end: a peer whose uid (``SO_PEERCRED``) is not ours
is refused, a request is one line of at most :data:`MAX_REQUEST` bytes, and a
client has :data:`SERVE_SECONDS` to send it and again to take its answer (from
when the answer is ready: a long reload does not eat the client's time). The
server runs in the run's main loop, with no thread and without ever blocking:
every client's socket is non-blocking and watched by one selector, so clients
that stall delay no one (at most :data:`MAX_CLIENTS` at once; at the cap the
oldest one still silent makes room, and an accept short of fds rests the
listener for :data:`PAUSE_SECONDS` instead of spinning). The backlog is large
(:data:`BACKLOG`) and a client whose connect finds it full waits out its own
deadline, so hundreds of clients at once are all answered.

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
import selectors
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
#: how long a client may take to send its request, and (from when it is
#: ready) to take its answer
SERVE_SECONDS = 2.0
#: clients served at once; more wait in the backlog, or evict one still silent
MAX_CLIENTS = 256
#: connections the kernel queues for us (capped by net.core.somaxconn)
BACKLOG = 4096
#: how long the listener rests when an accept fails for want of fds
PAUSE_SECONDS = 0.25
_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: how long ``irqbypass status`` waits for the answer
CLIENT_SECONDS = 10.0
#: how long ``irqbypass reload`` waits: the answer comes once the reload is done
RELOAD_SECONDS = 300.0
#: the longest path a UNIX socket address holds (sun_path, its NUL excluded)
MAX_SOCKET_PATH = 107
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


class _Client:
    """One connection: its request as it arrives, then its answer as it leaves."""

    __slots__ = ("answer", "answered", "deadline", "request", "sock", "started")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.started = now
        self.deadline = now + SERVE_SECONDS
        self.request = b""
        #: what is left to send (None: still reading the request)
        self.answer: memoryview | None = None
        #: whether the answer is to a request (not a refusal)
        self.answered = False


class ControlServer:
    """Listens on ``path``; :meth:`serve` makes progress with every client
    that is ready, without blocking (the run's main loop calls it when
    :meth:`fileno` is readable, and at least every tick)."""

    def __init__(self, path: str, answer: Callable[[str], dict[str, Any]]) -> None:
        self.path = path
        self.answer = answer
        self.refused = 0
        #: clients cut at their deadline, or evicted for a newcomer at the cap
        self.dropped = 0
        self._clients: dict[int, _Client] = {}
        self._paused_until: float | None = None
        if not path:
            raise IrqBypassError("--control: the path is empty; name the socket to create")
        directory, self._name = split_path(path)
        check_socket_name(self._name, f"--control {path}")
        self._dir = open_directory(directory)
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except BaseException:
            os.close(self._dir)
            raise
        try:
            self._selector = selectors.DefaultSelector()
        except BaseException:
            self._sock.close()
            os.close(self._dir)
            raise
        try:
            self._bind()
            self._sock.listen(BACKLOG)
            self._sock.setblocking(False)
            self._selector.register(self._sock, selectors.EVENT_READ)
            info = os.lstat(self._name, dir_fd=self._dir)
            self._inode = (info.st_dev, info.st_ino)
        except BaseException:
            self._selector.close()
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
                f"--control {self.path}: cannot create the socket: {exc.strerror or exc}",
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
        """An fd readable when a client (or the listener) is ready: wait on it."""
        return self._selector.fileno()

    @property
    def clients(self) -> int:
        """Clients being served now (at most :data:`MAX_CLIENTS`)."""
        return len(self._clients)

    def accepting(self) -> bool:
        """Whether the listener is watched (not resting after a shortage of fds)."""
        return self._paused_until is None

    def serve(self) -> int:
        """Make progress with every client ready now, accept the waiting ones,
        cut those past their deadline; how many requests were answered."""
        answered = 0
        for key, events in self._selector.select(0):
            if key.fileobj is self._sock:
                answered += self._accept()
            else:
                client = self._clients.get(key.fd)
                if client is not None:
                    answered += self._step(client, events)
        now = time.monotonic()
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self._drop(client)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._selector.register(self._sock, selectors.EVENT_READ)
        return answered

    def _accept(self) -> int:
        answered = 0
        for _ in range(MAX_CLIENTS):  # the rest at the next call: others get a turn
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _SHORTAGE:  # rest instead of spinning on a ready listener
                    self._selector.unregister(self._sock)
                    self._paused_until = time.monotonic() + PAUSE_SECONDS
                break
            conn.setblocking(False)
            if len(self._clients) >= MAX_CLIENTS and not self._evict():
                conn.close()
                self.dropped += 1
                continue
            client = _Client(conn, time.monotonic())
            try:
                uid = peer_uid(conn)
            except OSError:
                conn.close()
                continue
            self._clients[conn.fileno()] = client
            self._selector.register(conn, selectors.EVENT_READ)
            if uid != os.getuid():
                self.refused += 1
                self._reply(client, {"ok": False, "error": "refused: not the run's user"}, False)
                continue
            answered += self._step(client, selectors.EVENT_READ)  # its request may be here
        return answered

    def _evict(self) -> bool:
        """Close the oldest client still sending its request; whether one was."""
        reading = [c for c in self._clients.values() if c.answer is None]
        if not reading:
            return False
        self._drop(min(reading, key=lambda c: c.started))
        return True

    def _drop(self, client: _Client) -> None:
        self.dropped += 1
        self._forget(client)

    def _forget(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        client.sock.close()

    def _step(self, client: _Client, events: int) -> int:
        """Read or write what the client is ready for; 1 if its answer went out whole."""
        try:
            if client.answer is None:
                if events & selectors.EVENT_READ:
                    return self._read(client)
            elif events & selectors.EVENT_WRITE:
                return self._send(client)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._forget(client)
        return 0

    def _read(self, client: _Client) -> int:
        """Take what the client sent; once its line is whole, answer it (1
        if the answer went out whole at once)."""
        chunk = client.sock.recv(MAX_REQUEST + 1)
        if chunk:
            client.request += chunk
            if b"\n" not in client.request:
                if len(client.request) > MAX_REQUEST:
                    self._drop(client)
                return 0
        elif not client.request:
            self._forget(client)  # gone without a word
            return 0
        try:
            request = client.request.split(b"\n", 1)[0].decode("ascii").strip()
        except UnicodeDecodeError:
            request = ""
        if request not in REQUESTS:
            reply: dict[str, Any] = {
                "ok": False,
                "error": f"unknown request {request[:40]!r}; send one of: {', '.join(REQUESTS)}",
            }
        else:
            reply = self.answer(request)
        return self._reply(client, reply, True)

    def _reply(self, client: _Client, reply: dict[str, Any], answered: bool) -> int:
        """Queue ``reply``; its deadline starts now (a reload may have taken long)."""
        client.answer = memoryview(_line(reply))
        client.answered = answered
        client.deadline = time.monotonic() + SERVE_SECONDS
        self._selector.modify(client.sock, selectors.EVENT_WRITE)
        return self._send(client)

    def _send(self, client: _Client) -> int:
        assert client.answer is not None
        try:
            sent = client.sock.send(client.answer)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self._forget(client)
            return 0
        client.answer = client.answer[sent:]
        if client.answer:
            return 0
        self._forget(client)
        return 1 if client.answered else 0

    def close(self) -> None:
        """Stop listening, close every client, and remove the socket file if
        it is still ours (once)."""
        if self._dir < 0:
            return
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        self._selector.close()
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


def request(path: str, what: str, timeout: float | None = None) -> dict[str, Any]:
    """Ask the run listening on ``path``; its answer. The server must run as
    our user (SO_PEERCRED): an answer from anyone else is not read. One
    deadline for it all (``timeout``: :data:`CLIENT_SECONDS`, or
    :data:`RELOAD_SECONDS` for a reload, which the server answers when done),
    a full backlog included: the connect is retried until it."""
    if timeout is None:
        timeout = RELOAD_SECONDS if what == "reload" else CLIENT_SECONDS
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with sock:
        sock.setblocking(False)
        _connect(sock, path, deadline)
        uid = peer_uid(sock)
        if uid != os.getuid():
            raise IrqBypassError(
                f"{path}: the process listening there runs as uid {uid}, not as you "
                f"({os.getuid()}); not asking it",
                errno=errno.EPERM,
            )
        _send(sock, f"{what}\n".encode(), deadline)
        data = bytearray()
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
    except RecursionError:
        raise IrqBypassError(f"{path}: the answer is JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise IrqBypassError(f"{path}: the answer is not a JSON object")
    return doc


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    """Connect to ``path`` by its directory's fd when the path is too long
    for an address; a full backlog (EAGAIN) is retried until ``deadline``."""
    directory, name = os.path.split(path)
    address, dirfd = path, -1
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        check_socket_name(name, path)
        try:
            dirfd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _cannot_connect(path, exc) from exc
        address = f"/proc/self/fd/{dirfd}/{name}"
    try:
        pause = 0.001
        while True:
            try:
                sock.connect(address)
                return
            except (BlockingIOError, InterruptedError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise IrqBypassError(
                        f"{path}: cannot connect: the run's backlog stayed full until the "
                        "deadline; it is busy, try again",
                        errno=errno.ETIMEDOUT,
                    ) from exc
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
            except OSError as exc:
                raise _cannot_connect(path, exc) from exc
    finally:
        if dirfd >= 0:
            os.close(dirfd)


def _cannot_connect(path: str, exc: OSError) -> IrqBypassError:
    hint = (
        "; is `irqbypass run --control PATH` running?"
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED)
        else ""
    )
    return IrqBypassError(
        f"{path}: cannot connect: {exc.strerror or exc}{hint}", errno=exc.errno or None
    )


def check_socket_name(name: str, path: str) -> None:
    """Refuse a socket name that cannot fit an address even through its
    directory's fd (``/proc/self/fd/N/NAME``), saying so."""
    room = MAX_SOCKET_PATH - len("/proc/self/fd/2147483647/")
    size = len(os.fsencode(name))
    if size > room:
        raise IrqBypassError(
            f"{path}: the socket's name is {size} bytes; a UNIX socket address holds "
            f"at most {MAX_SOCKET_PATH} (at most {room} for the name itself, in a "
            "directory of any length): use a shorter name",
            errno=errno.ENAMETOOLONG,
        )
