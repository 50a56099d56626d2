"""The posted-interrupt descriptor: Linux ``struct pi_desc`` / VT-d PID, in a shared mapping.

The layout is in :mod:`._layout` and the posting rules in :mod:`._posting`;
here is where a descriptor lives (an anonymous mapping, or a sealed memfd that
a record at a path names, see :mod:`._backing`), how another process attaches
to it, and how it is closed, in a fork()ed child too.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
import weakref

import irqbypass
import irqbypass.plugin

from ._backing import NONCE_SIZE, create_record, make_memory, open_memory, remove_record
from ._layout import (
    _MAGIC,
    _NONCE,
    _PENDING,
    _SIZE,
    CONTROL_OFFSET,
    DESCRIPTOR_SIZE,
    MAGIC,
    MAPPING_SIZE,
    NDST_OFFSET,
    NV_OFFSET,
    SN_BIT,
    LockMode,
    Port,
    SyncResult,
    _check_control,
    check_vector,
)
from ._posting import PostingRules
from ._waiting import PeerWait

__all__ = [
    "DESCRIPTOR_SIZE",
    "MAPPING_SIZE",
    "LockMode",
    "Port",
    "PostedDescriptor",
    "SyncResult",
    "check_vector",
]

_log = logging.getLogger("irqbypass.posted")

_show = irqbypass.plugin.show_value

#: every descriptor not yet closed, so a fork()ed child can mark the ones it
#: inherited: their flock belongs to the open file description, which fork
#: shares with the parent, so posts from both would race (see ``_forked``)
_LIVE: weakref.WeakSet[PostedDescriptor] = weakref.WeakSet()


def _forked() -> None:
    for descriptor in list(_LIVE):
        descriptor._in_child = True
        descriptor._usable[0] = False
        descriptor._disarm()
        descriptor._waiting.timer = None  # the parent's loop's: the child's close leaves it
    _LIVE.clear()


os.register_at_fork(after_in_child=_forked)


def _failed(what: str, exc: OSError) -> irqbypass.DeviceError:
    """An OSError of a step that makes an fd or a mapping, as a DeviceError
    that says what to do when the process is out of fds."""
    out_of_fds = exc.errno in (errno.EMFILE, errno.ENFILE)
    advice = "; the process is out of file descriptors: raise its limit (ulimit -n)"
    return irqbypass.DeviceError(
        f"{what} failed: {exc.strerror} (errno {exc.errno}){advice if out_of_fds else ''}",
        errno=exc.errno,
    )


def _check_notification(notification: object) -> None:
    if notification is None:
        return
    if not isinstance(notification, irqbypass.Eventfd):
        raise irqbypass.InvalidEndpointError(
            f"notification must be an irqbypass.Eventfd or None, not {_show(notification)}"
        )
    # the notification is written holding Python's lock (see _layout._write): a
    # write that could wait, on a counter the sharing process filled, would
    # freeze every thread of this one, Ctrl-C included
    if not fcntl.fcntl(notification.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK:
        raise irqbypass.InvalidEndpointError(
            "the notification eventfd blocks (it was made without EFD_NONBLOCK): a "
            "process sharing it that fills its counter would freeze this one at its next "
            "notification; make it with EFD_NONBLOCK (as irqbypass.Eventfd() does)",
            errno=errno.EINVAL,
        )


class PostedDescriptor(PostingRules):
    """A posted-interrupt descriptor and its notification eventfd.

    Anonymous (``file=None``): an in-process shared mapping; the lock mode is
    ``"process"`` (a ``threading.Lock``). File-backed: the memory is a sealed
    memfd nobody can truncate (so no mapping of it can fault), and ``file`` a
    record naming it (see ``_backing``), created with ``O_EXCL`` and mode 0600
    and removed on :meth:`close`; other processes map the memory with
    :meth:`attach`. With lock mode ``"file"`` (the default for a file), every
    post, sync and SN change also holds ``flock(LOCK_EX)`` on the memfd (each
    process its own open file description), so processes that all use this
    class never lose a vector. Without it, another process that writes the
    mapping can race a read-modify-write here.
    """

    _path: str | None

    def __init__(
        self,
        *,
        nv: int = 0,
        ndst: int = 0,
        sn: bool = False,
        file: str | None = None,
        lock: LockMode | None = None,
        notification: irqbypass.Eventfd | None = None,
    ) -> None:
        _check_control(nv, ndst)
        if not isinstance(sn, bool):
            raise irqbypass.InvalidEndpointError(f"sn must be True or False, not {_show(sn)}")
        if file is not None and (not isinstance(file, str) or not file):
            raise irqbypass.InvalidEndpointError(
                f"file must be a path (a non-empty str) or None, not {_show(file)}"
            )
        _check_notification(notification)
        mode: LockMode = lock if lock is not None else ("file" if file else "process")
        if not isinstance(mode, str) or mode not in ("process", "file"):
            raise irqbypass.InvalidEndpointError(
                f"lock mode {_show(mode)} is unknown; use 'process' or 'file'"
            )
        if mode == "file" and not file:
            raise irqbypass.InvalidEndpointError(
                "lock mode 'file' needs a file-backed descriptor; pass file=PATH"
            )
        self._blank(mode)
        try:
            self._setup(notification, memory=bool(file))
            self._q[_MAGIC] = MAGIC
            self._q[_SIZE] = MAPPING_SIZE
            self._b[NV_OFFSET] = nv
            self._b[NDST_OFFSET : NDST_OFFSET + 4] = ndst.to_bytes(4, "little")
            self._b[CONTROL_OFFSET] = SN_BIT if sn else 0
            if file:
                nonce = os.urandom(NONCE_SIZE)
                self._b[_NONCE * 8 : _NONCE * 8 + NONCE_SIZE] = nonce
                # once the memory is whole: attachers may come; a Ctrl-C that waited
                # for the record acts as it returns, and close() removes it
                self._publish(file, nonce)
        except OSError as exc:  # a new fd or mapping refused (an fd limit, low memory)
            self.close()
            where = f" {_show(file)}" if file else ""
            raise _failed(f"making the posted-interrupt descriptor{where}", exc) from exc
        except BaseException:
            self.close()
            raise

    @irqbypass.plugin.uninterrupted
    def _publish(self, file: str, nonce: bytes) -> None:
        """Write the record naming this memory at ``file`` and own it at once:
        uninterrupted, so a Ctrl-C landing after the file exists and before this
        object knows its fd waits, instead of leaving the file behind."""
        self._path = file
        self._record_fd = create_record(file, MAPPING_SIZE, self._fd, nonce)

    @classmethod
    def attach(
        cls,
        path: str,
        *,
        lock: LockMode = "file",
        notification: irqbypass.Eventfd | None = None,
    ) -> PostedDescriptor:
        """Map the descriptor another process created at ``path`` (the vCPU
        side of a VMM, say). It is never removed by this object's ``close``.
        ``notification``: that process's notification eventfd, if passed over
        (fork, ``pass_fds`` or SCM_RIGHTS); this object does not own it."""
        if not isinstance(path, str) or not path:
            raise irqbypass.InvalidEndpointError(
                f"attach: path must be a non-empty str, not {_show(path)}"
            )
        if not isinstance(lock, str) or lock not in ("process", "file"):
            raise irqbypass.InvalidEndpointError(
                f"lock mode {_show(lock)} is unknown; use 'process' or 'file'"
            )
        _check_notification(notification)
        self = cls.__new__(cls)
        self._blank(lock)
        self._path = path
        try:
            self._fd, nonce = open_memory(path, MAPPING_SIZE)
            self._setup(notification, owned_notification=False)
            if self._q[_MAGIC] != MAGIC or self._q[_SIZE] != MAPPING_SIZE:
                raise irqbypass.InvalidEndpointError(
                    f"{_show(path)} names memory without a posted-interrupt descriptor's "
                    "magic; check the path"
                )
            if bytes(self._b[_NONCE * 8 : _NONCE * 8 + NONCE_SIZE]) != nonce:
                raise irqbypass.DeviceError(
                    f"posted-interrupt descriptor {_show(path)}: the memory its record names "
                    "belongs to another descriptor (the record is being rewritten by a new "
                    "creator, or is stale); attach again once its consumer is open",
                    errno=errno.ESTALE,
                )
        except OSError as exc:
            self.close()
            raise _failed(f"attaching to posted-interrupt descriptor {_show(path)}", exc) from exc
        except BaseException:
            self.close()
            raise
        return self

    def _blank(self, mode: LockMode) -> None:
        """The state :meth:`close` can always undo, set before anything is made."""
        self.lock_mode: LockMode = mode
        self.closed = True
        self._lock = threading.Lock()
        #: [False] once closed or inherited by a fork()ed child: every use refuses
        self._usable = [False]
        self._in_child = False
        self._pid = os.getpid()
        #: the memory's fd (a sealed memfd; -1 for an anonymous mapping) and its record's
        self._fd = -1
        self._record_fd = -1
        self._path = None
        self._mm: mmap.mmap | None = None
        self._b: memoryview = memoryview(b"")
        self._q: memoryview = self._b
        #: posts per vector since its bit was last drained: the sidecar's slots
        #: (another process may map a file-backed one), or this process's own
        #: list for an anonymous mapping (nobody else maps it: a list is cheaper)
        self._pending: memoryview | list[int] = [0] * 256
        #: one cell per poster of an anonymous descriptor: [True] while its
        #: vector's bit and ON are both set, it may post and is not held (see
        #: :meth:`poster`); cleared under the lock by whatever changes that
        self._armed: list[list[bool]] = []
        #: posts (and the drainer's sync) the event loop could not make at once: a
        #: peer held the file lock; made by its timer, or whatever locks next
        self._waiting = PeerWait()
        self.notification: irqbypass.Eventfd | None = None
        self._own_notification = False
        self._nfd = -1
        self.irr = 0  # this side's IRR: vectors synced and not yet acknowledged

    def _setup(
        self,
        notification: irqbypass.Eventfd | None,
        *,
        owned_notification: bool = True,
        memory: bool = False,
    ) -> None:
        """Map (``memory``: a new sealed memfd, else ``self._fd`` or an
        anonymous mapping), make the views and the notification eventfd;
        :meth:`close` undoes whatever of it was done."""
        if memory:
            self._fd = make_memory(MAPPING_SIZE)
        self._mm = (
            mmap.mmap(self._fd, MAPPING_SIZE) if self._fd >= 0 else mmap.mmap(-1, MAPPING_SIZE)
        )
        self._b = memoryview(self._mm)
        self._q = self._b.cast("Q")
        if self._fd >= 0:
            self._pending = self._q[_PENDING : _PENDING + 256]
        if notification is None:
            if owned_notification:
                self.notification = irqbypass.Eventfd()
                self._own_notification = True
        else:
            self.notification = notification
        self._nfd = self.notification.fileno() if self.notification is not None else -1
        self.closed = False
        self._usable[0] = True
        _LIVE.add(self)

    def _close_file(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self._remove_file()

    def _remove_file(self) -> None:
        record, self._record_fd = self._record_fd, -1
        if record >= 0 and self._path is not None:
            remove_record(self._path, record)

    @irqbypass.plugin.uninterrupted
    def close(self) -> None:
        """Unmap; remove the file if this object created it; close the
        notification eventfd if it owns it. Posters made by :meth:`poster`
        must no longer be called. Idempotent, and undoes a half-made descriptor.

        In a fork()ed child it only drops the child's copies: the file and the
        notification eventfd stay the parent's. Uninterrupted: a Ctrl-C (or a
        second one) that lands in it waits until the file is gone."""
        try:
            self.closed = True
            _LIVE.discard(self)
            if self._in_child:
                self._own_notification = False  # the parent's, not ours
                self._drop_record()  # the parent's file: closed here, never removed
                # the child has no other thread: no lock (its copy may be stale)
                self._usable[0] = False
                self._unmap()
                self._close_file()
            else:
                self._close_shared()
                return
            self._close_notification()
        finally:
            self._waiting.cancel()  # its timer: unusable now, it would make nothing
            self._remove_file()  # whatever cut the above short: the file goes

    @irqbypass.plugin.holding(lambda self: self._lock)
    def _close_shared(self) -> None:
        """Under the lock, so no post is between its check and its flock (a
        Ctrl-C still ends the wait for it)."""
        self._usable[0] = False
        self._unmap()
        self._close_file()
        self._close_notification()

    def _drop_record(self) -> None:
        record, self._record_fd = self._record_fd, -1
        if record >= 0:
            os.close(record)

    def _close_notification(self) -> None:
        notification, self.notification = self.notification, None
        self._nfd = -1
        if notification is not None and self._own_notification:
            notification.close()

    def _unmap(self) -> None:
        self._disarm()
        if isinstance(self._pending, memoryview):
            self._pending.release()
        self._q.release()
        self._b.release()
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()

    def __enter__(self) -> PostedDescriptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._path or "anonymous"
        return f"<PostedDescriptor {where} lock={self.lock_mode}{' closed' if self.closed else ''}>"

    @property
    def path(self) -> str | None:
        return self._path
