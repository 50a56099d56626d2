"""Finding the back-end's socket and trusting who listens there.

A socket path is trusted no further than it is checked (see
``docs/plugins/vhost-user.md``, "Who may listen"): its directory is opened
without following a link and must be one only a trusted user can change
(:func:`irqbypass.system.open_directory`); the socket must be a socket (not a link)
owned by a trusted user, and so must be the process that listens
(``SO_PEERCRED``). Trusted: our uid, root, and ``backend_uid`` if given.
:func:`dial` does all of it within one deadline and hands back the socket;
:class:`~irqbypass_vhost_user.Connection` speaks the protocol on it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import time

import irqbypass
import irqbypass.plugin
import irqbypass.system

from .errors import BackendGoneError, BackendTimeoutError, VhostUserError

__all__ = ["MAX_SOCKET_NAME", "check_socket_path", "dial"]

_SUN_PATH = 108
#: a socket's file name must fit sun_path behind "/proc/self/fd/<fd>/"
MAX_SOCKET_NAME = _SUN_PATH - 1 - len("/proc/self/fd//") - 10
_PROC_FD = os.path.isdir("/proc/self/fd")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def dial(path: str, *, what: str, timeout: float, backend_uid: int | None) -> socket.socket:
    """A connected socket to the back-end listening at ``path``, checked as
    the module says, within ``timeout`` seconds; ``what`` starts every error.

    A missing socket fails at once: waiting for it to appear would let
    whoever creates it first be the back-end. A socket that refuses (a
    back-end between bind and listen) or whose backlog is full is retried
    until the deadline; the connect itself never blocks.
    """
    deadline = time.monotonic() + timeout
    check_socket_path(path)
    trusted = irqbypass.system.trusted_uids(backend_uid)
    directory, name = irqbypass.system.split_path(path)
    try:
        dirfd = irqbypass.system.open_directory(directory, trusted=trusted)
    except irqbypass.system.UnsafePathError as exc:
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
    return sock


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
        irqbypass.system.check_owner(st, trusted, f"socket {path}")
    except irqbypass.system.UnsafePathError as exc:
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
                _pause_for_the_backend()  # between bind and listen, or busy: until the deadline
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


@irqbypass.plugin.waits_on_peer
def _pause_for_the_backend() -> None:
    """A back-end between bind and listen, or busy: a pause before the next try
    to connect, a wait on it that a Ctrl-C ends at once."""
    time.sleep(0.01)
