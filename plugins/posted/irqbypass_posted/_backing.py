"""Where a file-backed descriptor's memory lives, and how another process finds it.

The memory is a sealed memfd (``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``),
never a file at a path: a mapping of a file that its owner, root, or any
process that opened it read-write truncates raises SIGBUS at the next access,
and that would kill the VMM mid-post. A sealed memfd cannot be shrunk by
anyone, the creator included, so no mapping of it ever loses its pages.

The path (``file``) holds a *record* of 64 bytes saying where that memfd is:
the creator's pid, its fd number there, and a random nonce the descriptor's
sidecar repeats. An attacher opens ``/proc/PID/fd/N`` (a new open file
description of the same memfd, so its ``flock`` is its own), checks that it is
a sealed memfd of the right size owned by a trusted user, maps it and compares
the nonce. Truncating or rewriting the record harms no mapping: at worst a later
attach is refused.

Record layout (little-endian)::

    bytes  0-7   magic b"IRQBPIR1"
    bytes  8-15  the mapping's size (MAPPING_SIZE)
    bytes 16-23  the creator's pid
    bytes 24-31  the memfd's fd number in the creator
    bytes 32-47  nonce (also at bytes 112-127 of the mapping)
    bytes 48-63  zero

While the record is in use its creator holds an OFD write lock on byte
``CREATOR_BYTE``; the kernel drops it when the creator dies, even by SIGKILL.
An existing file at the path is reclaimed only when it is recognisably a
record (regular, ours or root's, writable by no one else, exactly 64 bytes,
the magic) and nobody holds that lock; anything else is refused untouched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import struct

import irqbypass
import irqbypass.plugin
import irqbypass.system

__all__ = [
    "NONCE_SIZE",
    "RECORD_SIZE",
    "create_record",
    "make_memory",
    "open_memory",
    "problem_with_path",
    "remove_record",
]

RECORD_MAGIC = b"IRQBPIR1"
RECORD_SIZE = 64
NONCE_SIZE = 16
_RECORD = struct.Struct("<8sQQQ16s16x")
CREATOR_BYTE = RECORD_SIZE  # beyond the end of the record: locks never touch its bytes
MEMFD_NAME = "irqbypass-posted"
#: the seals every descriptor memory carries (an attacher refuses memory without them)
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_FLOCK = struct.Struct("hhqqi4x")  # struct flock: type, whence, start, len, pid
_WHAT = "posted-interrupt descriptor record"
_log = logging.getLogger("irqbypass.posted")
_show = irqbypass.plugin.show_value


def make_memory(size: int) -> int:
    """A sealed memfd of ``size`` bytes, mode 0600: nobody can shrink or grow it."""
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_path(path: str) -> None:
    if "\0" in path:
        raise irqbypass.InvalidEndpointError(
            f"posted-interrupt descriptor path {_show(path)} holds a NUL byte; name the file itself"
        )


def _try_lock(fd: int, kind: int, byte: int) -> bool:
    """Take an OFD lock of ``kind`` on ``byte`` without waiting; False if held."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _record(size: int, memfd: int, nonce: bytes) -> bytes:
    return _RECORD.pack(RECORD_MAGIC, size, os.getpid(), memfd, nonce)


def create_record(path: str, size: int, memfd: int, nonce: bytes) -> int:
    """Write the record at ``path`` (created with O_EXCL, mode 0600, in a
    directory no one else can change) with the creator's lock held; returns its
    fd. A stale record of ours is reclaimed; anything else there is refused."""
    _check_path(path)
    directory, name = irqbypass.system.split_path(path)
    dirfd = irqbypass.system.open_directory(directory)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dirfd)
        except FileExistsError as exc:
            fd = _reclaim(path, exc)
        except OSError as exc:
            raise irqbypass.DeviceError(
                f"cannot create {_WHAT} {_show(path)}: {exc.strerror}; check that the "
                "directory exists and is writable (/dev/shm is a good place)",
                errno=exc.errno,
            ) from exc
        else:
            try:
                os.fchmod(fd, 0o600)
                if not _try_lock(fd, fcntl.F_WRLCK, CREATOR_BYTE):  # just made: nobody has it
                    raise OSError(errno.EAGAIN, "the new record's creator lock is taken")
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dirfd)
                raise
    finally:
        os.close(dirfd)
    try:
        data = _record(size, memfd, nonce)
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(errno.EIO, "short write")
    except BaseException as exc:
        remove_record(path, fd)
        if isinstance(exc, OSError):
            raise irqbypass.DeviceError(
                f"cannot write {_WHAT} {_show(path)}: {exc.strerror}", errno=exc.errno
            ) from exc
        raise
    return fd


def _not_ours(path: str, why: str) -> irqbypass.DeviceError:
    return irqbypass.DeviceError(
        f"{_show(path)} already exists and is not a posted-interrupt descriptor record "
        f"({why}): refused, nothing was changed; name another path for the consumer's "
        "file (or remove that file if you know it is a leftover)",
        errno=errno.EEXIST,
    )


def _recognise(fd: int, path: str) -> None:
    """Refuse the open file ``fd`` unless it is recognisably a record."""
    size = os.fstat(fd).st_size
    if size != RECORD_SIZE:
        raise _not_ours(path, f"{size} bytes, a record has {RECORD_SIZE}")
    if os.pread(fd, len(RECORD_MAGIC), 0) != RECORD_MAGIC:
        raise _not_ours(path, "no record magic")


def _reclaim(path: str, exists: FileExistsError) -> int:
    """The fd of the record already at ``path`` if it is one and nobody holds
    its lock (then rewritten by the caller and announced); otherwise refused
    without a byte changed. Only a file that passes :func:`irqbypass.system.open_file`
    (ours or root's, writable by no one else) is looked at."""
    fd = irqbypass.system.open_file(path, os.O_RDWR, what=_WHAT)
    try:
        _recognise(fd, path)
        if not _try_lock(fd, fcntl.F_WRLCK, CREATOR_BYTE):
            raise irqbypass.DeviceError(
                f"posted-interrupt descriptor file {_show(path)} already exists and is in use "
                "(a process holds its lock): another consumer uses it; pick another path",
                errno=errno.EEXIST,
            ) from exists
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    _log.warning(
        "posted-interrupt descriptor record %s was left behind by a process that is gone (no "
        "process held its lock): reclaimed",
        path,
    )
    return fd


def remove_record(path: str, fd: int) -> None:
    """Close the record's fd and remove ``path`` if it still names that record
    (a file put there since is someone else's: left alone)."""
    try:
        mine = os.fstat(fd)
        try:
            there = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if os.path.samestat(mine, there):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            _log.warning(
                "posted-interrupt descriptor record %s was replaced by another file while in "
                "use: left alone",
                path,
            )
    finally:
        os.close(fd)


def _read_record(path: str) -> tuple[int, int, int, bytes]:
    """(size, pid, fd, nonce) from the record at ``path``."""
    _check_path(path)
    try:
        fd = irqbypass.system.open_file(path, os.O_RDONLY, what=_WHAT)
    except irqbypass.system.UnsafePathError:
        raise
    except OSError as exc:
        raise irqbypass.DeviceError(
            f"cannot open posted-interrupt descriptor {_show(path)}: {exc.strerror}; "
            "is the consumer that creates it open, and may this user read it?",
            errno=exc.errno,
        ) from exc
    try:
        data = os.pread(fd, RECORD_SIZE + 1, 0)
    finally:
        os.close(fd)
    if len(data) != RECORD_SIZE or not data.startswith(RECORD_MAGIC):
        raise irqbypass.InvalidEndpointError(
            f"{_show(path)} is not a posted-interrupt descriptor record ({RECORD_SIZE} "
            f"bytes with the record magic {RECORD_MAGIC.decode()}); check the path"
        )
    _, size, pid, memfd, nonce = _RECORD.unpack(data)
    return size, pid, memfd, nonce


def _gone(path: str, why: str, code: int) -> irqbypass.DeviceError:
    return irqbypass.DeviceError(
        f"posted-interrupt descriptor {_show(path)}: its creator's memory cannot be "
        f"opened ({why}); is the consumer that created it still open? (a record left by "
        "a process that is gone is reclaimed by the next creator)",
        errno=code,
    )


def open_memory(path: str, size: int) -> tuple[int, bytes]:
    """For an attacher: (a new open file description of the creator's sealed
    memfd, the nonce its sidecar must hold). Refuses memory that is not a
    sealed memfd of ``size`` bytes owned by a trusted user."""
    recorded, pid, number, nonce = _read_record(path)
    if recorded != size:
        raise irqbypass.InvalidEndpointError(
            f"{_show(path)} records a mapping of {recorded} bytes, not {size}: written by "
            "another version of irqbypass-posted? check the path"
        )
    where = f"/proc/{pid}/fd/{number}"
    try:
        target = os.readlink(where)
    except OSError as exc:
        raise _gone(path, f"{where}: {exc.strerror}", exc.errno or errno.ENOENT) from exc
    if not target.startswith(f"/memfd:{MEMFD_NAME}"):
        raise _gone(path, f"{where} is {_show(target)}, not its memfd", errno.ESRCH)
    try:
        fd = os.open(where, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _gone(path, f"{where}: {exc.strerror}", exc.errno or errno.EIO) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            raise _gone(path, f"{where} is not {size} bytes of memory", errno.EINVAL)
        irqbypass.system.check_owner(
            info, irqbypass.system.trusted_uids(), f"{_WHAT} memory {where}"
        )
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise _gone(path, f"{where} is not a memfd", errno.EINVAL) from exc
        if seals & SEALS != SEALS:
            raise irqbypass.system.UnsafePathError(
                f"posted-interrupt descriptor {_show(path)}: its memory is not sealed against "
                "shrinking (a truncation would kill this process with SIGBUS): refused",
                errno=errno.EPERM,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, nonce


def problem_with_path(path: str) -> str | None:
    """What ``check`` can tell about a consumer's ``file`` without creating it:
    a file already there that is not a record of ours (which ``open`` would
    refuse), or a directory that cannot hold it. None if ``open`` may go on."""
    try:
        _check_path(path)
        directory, _ = irqbypass.system.split_path(path)
        os.close(irqbypass.system.open_directory(directory))
        try:
            fd = irqbypass.system.open_file(path, os.O_RDONLY, what=_WHAT)
        except FileNotFoundError:
            return None
        try:
            _recognise(fd, path)
        finally:
            os.close(fd)
    except irqbypass.IrqBypassError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot look at {_show(path)}: {exc.strerror}"
    return None
