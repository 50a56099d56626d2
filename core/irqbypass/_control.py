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
listener a while instead of spinning: see :mod:`irqbypass.serving`). The backlog is large
(:data:`BACKLOG`) and a client whose connect finds it full waits out its own
deadline, so hundreds of clients at once are all answered.

The socket's directory is opened without following links and checked with
:func:`irqbypass.system.open_directory` (it and every directory above it owned by us or
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
import secrets
import select
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from ._errors import IrqBypassError
from ._paths import open_directory, split_path
from ._serving import Conversations

#: the longest request line; a request is a word
MAX_REQUEST = 256
#: how long a client may take to send its request, and (from when it is
#: ready) to take its answer
SERVE_SECONDS = 2.0
#: clients served at once; more wait in the backlog, or evict one still silent
MAX_CLIENTS = 256
#: connections the kernel queues for us (capped by net.core.somaxconn)
BACKLOG = 4096
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


class ControlServer:
    """Listens on ``path``; :meth:`serve` makes progress with every client
    that is ready, without blocking (the run's main loop calls it when
    :meth:`fileno` is readable, and at least every tick)."""

    def __init__(self, path: str, answer: Callable[[str], dict[str, Any]]) -> None:
        self.path = path
        self.answer = answer
        self.refused = 0
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
            self._bind()
            self._sock.setblocking(False)
            info = os.lstat(self._name, dir_fd=self._dir)
            self._inode = (info.st_dev, info.st_ino)
            self._clients = Conversations(
                self._sock, limit=MAX_CLIENTS, seconds=SERVE_SECONDS, max_request=MAX_REQUEST,
                complete=_line_of, respond=self._respond, admit=self._admit,
            )  # fmt: skip
        except BaseException:
            self._sock.close()
            os.close(self._dir)
            raise

    @property
    def _via_fd(self) -> str:
        """The socket's path through the checked directory's fd (no link followed)."""
        return f"/proc/self/fd/{self._dir}/{self._name}"

    def _bind(self) -> None:
        """Bind and listen under a temporary name, then link it to the path:
        the path appears only once something listens there (a client, or
        another run probing for a stale socket, never finds it refusing), and
        the link never replaces what another process put there meanwhile."""
        self._replace_stale()
        temporary = f".{secrets.token_hex(6)}.sock"
        old_umask = os.umask(0o177)  # created 0600: no moment where others could connect
        try:
            self._sock.bind(f"/proc/self/fd/{self._dir}/{temporary}")
            try:
                self._sock.listen(BACKLOG)
                os.link(temporary, self._name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=self._dir)
        except FileExistsError as exc:
            raise IrqBypassError(
                f"--control {self.path}: the path appeared while the socket was made; "
                "another run may be starting there: name another path",
                errno=errno.EEXIST,
            ) from exc
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
            # a killed run's: nothing listens. Removed only if it is still the one
            # probed: another run starting there may have put its own in its place
            try:
                now = os.lstat(self._name, dir_fd=self._dir)
            except FileNotFoundError:
                return  # gone meanwhile: the path is free
            if _identity(now) == _identity(info):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._name, dir_fd=self._dir)
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
        return self._clients.fileno()

    @property
    def clients(self) -> int:
        """Clients being served now (at most :data:`MAX_CLIENTS`)."""
        return len(self._clients)

    @property
    def dropped(self) -> int:
        """Clients cut at their deadline, or evicted for a newcomer at the cap."""
        return self._clients.dropped

    def accepting(self) -> bool:
        """Whether the listener is watched (not resting after a shortage of fds)."""
        return self._clients.accepting()

    def serve(self) -> int:
        """Make progress with every client ready now, accept the waiting ones,
        cut those past their deadline; how many requests were answered."""
        return self._clients.serve()

    def _admit(self, conn: socket.socket) -> bytes | None:
        if peer_uid(conn) == os.getuid():
            return None
        self.refused += 1
        return _line({"ok": False, "error": "refused: not the run's user"})

    def _respond(self, line: bytes) -> bytes:
        try:
            request = line.decode("ascii").strip()
        except UnicodeDecodeError:
            request = ""
        if request not in REQUESTS:
            return _line(
                {
                    "ok": False,
                    "error": f"unknown request {request[:40]!r}; send one of: "
                    + ", ".join(REQUESTS),
                }
            )
        return _line(self.answer(request))

    def close(self) -> None:
        """Stop listening, close every client, and remove the socket file if
        it is still ours (once)."""
        if self._dir < 0:
            return
        self._clients.close()
        self._sock.close()
        with contextlib.suppress(OSError):
            info = os.lstat(self._name, dir_fd=self._dir)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self._name, dir_fd=self._dir)
        os.close(self._dir)
        self._dir = -1


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    """What tells a socket file from another put at its name (an inode number
    freed by an unlink is soon reused; its change time is not)."""
    return (info.st_dev, info.st_ino, info.st_ctime_ns)


def _line_of(received: bytes, eof: bool) -> bytes | None:
    """A request: its first line, or what came before the client's EOF."""
    end = received.find(b"\n")
    if end >= 0:
        return received[:end]
    return received if eof and received else None


def _line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc) + "\n").encode()


def _wait(sock: socket.socket, event: int, deadline: float) -> bool:
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(int(left * 1000) + 1))


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
    if not data:  # stopped or killed while it served us (a reload cut by Ctrl-C, say)
        raise IrqBypassError(
            f"{path}: the run closed the connection without an answer; is it still running?",
            errno=errno.ECONNRESET,
        )
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
