"""Paths another local user may share: open them without following a planted
link, and refuse what someone else put or can change there.

A VMM runs as root or a privileged user and is told paths in /tmp, /run or a
directory a back-end's user can write. A local user who can write such a
directory can plant a symbolic link (so that we open, truncate or connect to
something of their choosing), a FIFO (so that ``open(2)`` hangs), or a file of
their own (so that they read what we write, or we believe what they wrote).
Hence, as OpenSSH's ``safe_path`` and systemd's ``chase`` do:

- the directory is opened one component at a time from ``/`` (or the
  working directory), each with ``O_NOFOLLOW | O_DIRECTORY`` relative to the
  one before (a link in the middle of the path is refused as at its end), and it and every
  directory above it (walked up through ``..`` from the open fd, so what is
  checked is what is used) must be owned by a trusted uid and writable by no
  one else, unless sticky (``/tmp``: others can add names there but cannot
  rename or remove ours);
- the last component is opened relative to that directory fd with
  ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot hang the open) and checked on the
  open fd: a regular file, owned by a trusted uid, not writable by group or
  others.

Trusted: this process's effective uid and root, plus whatever uid the caller
names (the user a back-end is known to run as). The public names are those
:mod:`irqbypass.system` takes from here (its table is their one list).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable

from ._errors import IrqBypassError, printable

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafePathError(IrqBypassError):
    """A path is a symbolic link, not the kind of file expected, or a file or
    directory that another user owns or can change."""

    errno = errno.EACCES


def trusted_uids(*extra: int | None) -> frozenset[int]:
    """Our effective uid, root's, and each of ``extra`` that is not None."""
    return frozenset({os.geteuid(), 0, *(uid for uid in extra if uid is not None)})


def _shown(path: str) -> str:
    return printable(path)


def _fd_path(fd: int, fallback: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback


def check_owner(st: os.stat_result, trusted: Iterable[int], what: str) -> None:
    """Refuse ``st`` (of ``what``) unless a trusted uid owns it."""
    allowed = set(trusted)
    if st.st_uid not in allowed:
        names = ", ".join(str(uid) for uid in sorted(allowed))
        raise UnsafePathError(
            f"{what} is owned by uid {st.st_uid}, not by a trusted user (uid {names}): "
            "another local user could have put it there; remove it, or use a "
            "directory only you (or root) can write",
            errno=errno.EACCES,
        )


def _check_directory(fd: int, trusted: frozenset[int], shown: str) -> None:
    st = os.fstat(fd)
    what = f"directory {_shown(_fd_path(fd, shown))}"
    check_owner(st, trusted, what)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafePathError(
            f"{what} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}) and not sticky: another local user could "
            "replace what is in it; use a directory only you (or root) can write (chmod "
            "go-w), or a sticky one (chmod +t) such as /tmp",
            errno=errno.EACCES,
        )


def open_directory(path: str, *, trusted: Iterable[int] = (), create: bool = False) -> int:
    """An ``O_PATH`` fd of directory ``path``, opened one component at a
    time from ``/`` (or the working directory) without following a link at
    any of them, after checking it and each directory above it (see the
    module doc). ``trusted`` adds uids to ours and root's. ``create``: make
    each missing directory (as ``os.makedirs``, mode 0777 less the umask),
    each only in one that passed those checks. The caller closes the fd."""
    uids = trusted_uids(*trusted)
    if "\0" in path:
        raise UnsafePathError(f"path {path!r} contains a NUL byte", errno=errno.EINVAL)
    fd = _walk(path, uids if create else None)
    try:
        _check_ancestry(fd, uids, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_ancestry(fd: int, uids: frozenset[int], path: str) -> None:
    """Check the directory ``fd`` and each one above it (walked up through ``..``)."""
    current = os.open(".", _DIR_FLAGS, dir_fd=fd)
    try:
        while True:
            _check_directory(current, uids, path)
            parent = os.open("..", _DIR_FLAGS, dir_fd=current)
            same = os.path.samestat(os.fstat(parent), os.fstat(current))
            os.close(current)
            current = parent
            if same:  # "/" is its own parent
                break
    finally:
        os.close(current)


def _walk(path: str, create: frozenset[int] | None = None) -> int:
    """Open ``path`` component by component, each with ``O_NOFOLLOW |
    O_DIRECTORY`` relative to the one before: a link anywhere in it (not only
    at its end) is refused, never followed. ``create``: the trusted uids; a
    missing component is made once the directory it goes in passed the checks."""
    fd = os.open("/" if path.startswith("/") else ".", _DIR_FLAGS)
    walked = "/" if path.startswith("/") else ""
    try:
        for component in path.split("/"):
            if component in ("", "."):
                continue
            walked = os.path.join(walked, component)
            try:
                child = _open_child(fd, component, create, path)
            except OSError as exc:
                raise _unopenable(path, walked, exc) from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child(fd: int, component: str, create: frozenset[int] | None, path: str) -> int:
    try:
        return os.open(component, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except FileNotFoundError:
        if create is None or component == "..":
            raise
    _check_ancestry(fd, create, path)  # never make a directory where others could plant
    with contextlib.suppress(FileExistsError):  # made meanwhile: opened as any other
        os.mkdir(component, 0o777, dir_fd=fd)
    return os.open(component, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)


def _unopenable(path: str, walked: str, exc: OSError) -> UnsafePathError:
    code = exc.errno or errno.EIO
    where = "" if walked.rstrip("/") == path.rstrip("/") else f" (at {_shown(walked)})"
    hint = {
        errno.ENOTDIR: "; it is a symbolic link or not a directory: name the real directory",
        errno.ELOOP: "; it is a symbolic link: name the directory it points to",
    }.get(code, "")
    return UnsafePathError(
        f"cannot open directory {_shown(path)}{where}: {os.strerror(code)} (errno {code}){hint}",
        errno=code,
    )


def split_path(path: str) -> tuple[str, str]:
    """``path``'s directory and its last component, which must name an entry."""
    directory, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise UnsafePathError(f"path {_shown(path)} does not name a file", errno=errno.EINVAL)
    return directory, name


def open_file(
    path: str,
    flags: int,
    mode: int = 0o600,
    *,
    what: str = "file",
    trusted: Iterable[int] = (),
    devices: bool = False,
) -> int:
    """``os.open(path, flags, mode)`` for a path others may share: never
    following a symbolic link, never hanging on a FIFO, and refusing (closing
    it again) anything but a regular file owned by a trusted uid and writable
    by no one else. ``what`` names the file in messages. ``devices``: also
    take a character device root owns (``/dev/null``, ``/dev/full``), whose
    mode says who may use the device, not who may change a content. Returns a
    blocking fd."""
    directory, name = split_path(path)
    uids = trusted_uids(*trusted)
    dirfd = open_directory(directory, trusted=uids)
    try:
        return open_at(dirfd, name, flags, mode, what=what, shown=path, trusted=uids,
                       devices=devices)  # fmt: skip
    finally:
        os.close(dirfd)


def open_at(
    dirfd: int,
    name: str,
    flags: int,
    mode: int = 0o600,
    *,
    what: str = "file",
    shown: str | None = None,
    trusted: Iterable[int] = (),
    devices: bool = False,
) -> int:
    """:func:`open_file` of ``name`` in the directory ``dirfd`` (one
    :func:`open_directory` gave, a single component): the same checks.
    ``shown`` is the path messages name (``name`` by default)."""
    path = name if shown is None else shown
    uids = trusted_uids(*trusted)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{what} {_shown(path)} is a symbolic link: refused (it could point "
                "anywhere another user chose); name the file itself",
                errno=errno.ELOOP,
            ) from exc
        raise
    try:
        st = os.fstat(fd)
        if devices and stat.S_ISCHR(st.st_mode) and st.st_uid == 0:
            os.set_blocking(fd, True)
            return fd
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(
                f"{what} {_shown(path)} is not a regular file (a "
                f"{file_kind(st.st_mode)}): refused; remove it or name another path",
                errno=errno.EINVAL,
            )
        check_owner(st, uids, f"{what} {_shown(path)}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafePathError(
                f"{what} {_shown(path)} is writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): refused, another user could change it "
                "under us; chmod go-w it or remove it",
                errno=errno.EACCES,
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"
