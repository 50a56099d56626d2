"""The posted-interrupt descriptor: Linux ``struct pi_desc`` / VT-d PID, in a shared mapping.

Bytes 0-63 of the mapping are bit-exact with ``struct pi_desc``
(arch/x86/include/asm/posted_intr.h)::

    u64 pir[4];                                   bytes  0-31  PIR, bit v = vector v
    u64 on:1, sn:1, rsvd_1:14, nv:8, rsvd_2:8, ndst:32   bytes 32-39  control
    u32 rsvd[6];                                  bytes 40-63

Behind the descriptor (from byte 64) lies a software sidecar that hardware does
not have: a magic, counters, and per-vector post counts. It lets any process that
maps the file count exactly what it drains, because a PIR bit alone cannot say how
many posts it stands for (posts of one vector before a sync coalesce into one bit).

Posting follows VT-d "Interrupt-Posting Hardware Operation": set the vector's PIR
bit; if ON was clear and (the post is urgent or SN is clear), set ON and send the
notification event (here: a write to the notification eventfd). ``sync`` is
Linux's ``sync_pir_to_irr``: clear ON, then take PIR into the IRR.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import irqbypass

from ._backing import NONCE_SIZE, create_record, make_memory, open_memory, remove_record

__all__ = [
    "DESCRIPTOR_SIZE",
    "MAPPING_SIZE",
    "LockMode",
    "Port",
    "PostedDescriptor",
    "SyncResult",
]

#: The hardware descriptor: 64 bytes, 64-byte aligned.
DESCRIPTOR_SIZE = 64
#: The whole mapping: the descriptor and the software sidecar (two pages).
MAPPING_SIZE = 8192

# Byte offsets in the hardware descriptor.
PIR_OFFSET = 0
PIR_BYTES = 32
CONTROL_OFFSET = 32  # ON is bit 0 and SN bit 1 of this byte (bits 256 and 257)
NV_OFFSET = 34
NDST_OFFSET = 36
ON_BIT = 0x01
SN_BIT = 0x02

# The sidecar, in u64 slots (slot i = bytes 8i .. 8i+7), little-endian like x86.
MAGIC = int.from_bytes(b"IRQBPID1", "little")
_MAGIC = 8  # byte 64
_SIZE = 9  # byte 72: MAPPING_SIZE, so an attacher can check it
_NOTIFIED = 10  # notifications sent (ON 0 -> 1 with a notification)
_SYNCS = 11  # sync() calls
_VECTORS_DRAINED = 12  # PIR bits taken by sync()
_POSTS_DRAINED = 13  # posts taken by sync() (the sum of the counts behind those bits)
_NONCE = 14  # bytes 112-127: the file-backed descriptor's nonce, repeated in its record
_PENDING = 64  # bytes 512..2559: posts per vector since its bit was last drained
_DRAINED = 320  # bytes 2560..4607: posts drained per vector, cumulative

_ZERO_PIR = bytes(PIR_BYTES)
_ONE = (1).to_bytes(8, "little")  # what an eventfd write of 1 sends

_log = logging.getLogger("irqbypass.posted")

LockMode = Literal["process", "file"]
_T = TypeVar("_T")
_show = irqbypass.show_value

#: every descriptor not yet closed, so a fork()ed child can mark the ones it
#: inherited: their flock belongs to the open file description, which fork
#: shares with the parent, so posts from both would race (see ``_forked``)
_LIVE: weakref.WeakSet[PostedDescriptor] = weakref.WeakSet()


def _forked() -> None:
    for descriptor in list(_LIVE):
        descriptor._in_child = True
        descriptor._usable[0] = False
        descriptor._disarm()
    _LIVE.clear()


os.register_at_fork(after_in_child=_forked)


def _gil_holding_write() -> Callable[[int, bytes, int], int]:
    """``write(fd, data, len)`` through libc *without* releasing the GIL;
    returns -1 on failure (see :func:`_write_error`).

    ``os.write`` releases the GIL, and a vCPU thread woken by that very
    notification then takes it: poster and vCPU ping-pong the GIL on every
    notification (measured with a flat-out mock: about 6,000 notifications and
    syncs per 200,000 posts instead of about 45). An eventfd write never blocks
    (the fd is non-blocking), so holding the GIL over it is safe.

    It is the C function itself, not a Python wrapper: a signal can then land
    only after it returned, never between setting ON and notifying. Falls back
    to ``os.write`` (which raises instead of returning -1)."""
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        raw = libc.write
    except (OSError, AttributeError):
        return lambda fd, data, size: os.write(fd, data)
    raw.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    raw.restype = ctypes.c_ssize_t
    written: Callable[[int, bytes, int], int] = raw
    return written


_write = _gil_holding_write()


def _write_error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"writing the notification eventfd: {os.strerror(code)}")


@dataclass(frozen=True)
class SyncResult:
    """What one ``sync`` took: the PIR bitmap and the posts behind each bit."""

    vectors: int = 0
    posts: Mapping[int, int] = field(default_factory=dict)

    @property
    def vector_list(self) -> list[int]:
        return [v for v in range(256) if self.vectors >> v & 1]

    @property
    def total_posts(self) -> int:
        return sum(self.posts.values())


class Port:
    """One producer's way in: while ``held`` (the pair is stopped), posts are
    counted here instead of reaching the descriptor, and flushed on release.
    Guarded by the descriptor's lock."""

    __slots__ = ("held", "held_count", "urgent", "vector")

    def __init__(self, vector: int, urgent: bool = False) -> None:
        check_vector(vector)
        if not isinstance(urgent, bool):
            raise irqbypass.InvalidEndpointError(
                f"urgent must be True or False, not {_show(urgent)}"
            )
        self.vector = vector
        self.urgent = urgent
        self.held = False
        self.held_count = 0


def check_vector(vector: object) -> int:
    if not isinstance(vector, int) or isinstance(vector, bool) or not 0 <= vector <= 255:
        raise irqbypass.InvalidEndpointError(
            f"vector {_show(vector)} is outside the PIR: use an int from 0 to 255"
        )
    return vector


def _check_notification(notification: object) -> None:
    if notification is not None and not isinstance(notification, irqbypass.Eventfd):
        raise irqbypass.InvalidEndpointError(
            f"notification must be an irqbypass.Eventfd or None, not {_show(notification)}"
        )


class PostedDescriptor:
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
                self._publish(file, nonce)  # once the memory is whole: attachers may come
                irqbypass.deliver_deferred_signals()  # a Ctrl-C that waited: close() removes it
        except BaseException:
            self.close()
            raise

    @irqbypass.signal_safe
    def _publish(self, file: str, nonce: bytes) -> None:
        """Write the record naming this memory at ``file`` and own it at once:
        signal-safe, so a Ctrl-C landing after the file exists and before this
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

    def close(self) -> None:
        """Unmap; remove the file if this object created it; close the
        notification eventfd if it owns it. Posters made by :meth:`poster`
        must no longer be called. Idempotent, and undoes a half-made descriptor.

        In a fork()ed child it only drops the child's copies: the file and the
        notification eventfd stay the parent's. Signal-safe: a Ctrl-C (or a
        second one) that lands in it waits until the file is gone."""
        try:
            self._close()
        finally:
            irqbypass.deliver_deferred_signals()

    @irqbypass.signal_safe
    def _close(self) -> None:
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
                # under the lock, so no post is between its check and its flock
                with self._lock:
                    self._usable[0] = False
                    self._unmap()
                    self._close_file()
                    self._close_notification()
                return
            self._close_notification()
        finally:
            self._remove_file()  # whatever cut the above short: the file goes

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

    # -- locking -------------------------------------------------------------

    # Every locked section is ``with self._lock`` around ``flock`` in
    # try/finally: a KeyboardInterrupt (or any exception) landing anywhere in it
    # releases both. Unlocking a flock that was not taken is harmless, so the
    # finally need not know how far the ``try`` got. The notification is
    # written under the lock right after ON is set, with no call in between
    # (so no point where a signal handler can run): ON set without its
    # notification would leave the vCPU asleep for good.

    def _locked(self, body: Callable[..., _T], *args: object) -> _T:
        """``body(*args)`` under the thread lock and, in file mode, the flock."""
        with self._lock:
            self._check_usable()
            if self.lock_mode != "file":
                return body(*args)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                return body(*args)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _check_usable(self) -> None:
        if not self._usable[0]:
            raise self._unusable_error()

    def _unusable_error(self) -> irqbypass.IrqBypassError:
        if self._in_child:
            return _forked_error(self._path, self._pid)
        return irqbypass.IrqBypassError(
            f"{self!r} is closed; its posters and methods must no longer be called "
            "(open a new descriptor, or attach again)"
        )

    # -- posting (the device / IOMMU side) -----------------------------------

    def post(self, vector: int, urgent: bool = False) -> bool:
        """Post ``vector`` once; True if this post sent a notification."""
        return self.post_many(vector, 1, urgent)

    def post_many(self, vector: int, count: int, urgent: bool = False) -> bool:
        """Post ``vector`` ``count`` times at once (one PIR bit, ``count`` posts
        behind it, at most one notification)."""
        check_vector(vector)
        if count <= 0:
            return False
        return self._locked(self._post_locked, vector, count, urgent)

    def _post_locked(self, vector: int, count: int, urgent: bool) -> bool:
        b = self._b
        b[vector >> 3] |= 1 << (vector & 7)
        self._pending[vector] += count
        control = b[CONTROL_OFFSET]
        if control & (ON_BIT if urgent else ON_BIT | SN_BIT):
            return False
        b[CONTROL_OFFSET] = control | ON_BIT
        self._q[_NOTIFIED] += 1
        # written out, not a helper: a signal could land as a helper starts
        if self._nfd >= 0 and _write(self._nfd, _ONE, 8) < 0:
            raise _write_error()
        return True

    def poster(self, port: Port) -> Callable[[], None]:
        """A no-argument function posting ``port.vector`` once: the direct path
        offered to a producer. Everything it needs is bound in advance.

        On an anonymous descriptor (nobody else maps it, so only this
        process's locked code changes it) a poster whose last post left its
        bit and ON set is *armed*: until a sync, a hold or a close disarms it
        (under the same lock), its post can only add one to its vector's
        count (the bit is set, ON set means no notification), so it does just
        that. The state a post leaves is the same either way."""
        lock = self._lock
        b = self._b
        q = self._q
        counts = self._pending
        vector = port.vector
        index = vector >> 3
        mask = 1 << (vector & 7)
        test = ON_BIT if port.urgent else ON_BIT | SN_BIT
        nfd = self._nfd
        write = _write
        one = _ONE
        control_at = CONTROL_OFFSET
        on_bit = ON_BIT
        notified = _NOTIFIED
        usable, unusable = self._usable, self._unusable_error
        self._check_usable()

        # the same discipline as _locked(), written out: this is the hot path
        if self.lock_mode == "file":
            fd = self._fd
            flock = fcntl.flock
            ex, un = fcntl.LOCK_EX, fcntl.LOCK_UN

            def post_file_locked() -> None:
                with lock:
                    if not usable[0]:
                        raise unusable()
                    try:
                        flock(fd, ex)
                        if port.held:
                            port.held_count += 1
                            return
                        b[index] |= mask
                        counts[vector] += 1
                        control = b[control_at]
                        if control & test:
                            return
                        b[control_at] = control | on_bit
                        q[notified] += 1
                        if nfd >= 0 and write(nfd, one, 8) < 0:
                            raise _write_error()
                    finally:
                        flock(fd, un)

            return post_file_locked

        armed = [False]
        armable = self._fd < 0  # another process may clear ON or a bit of a file's mapping
        with lock:
            self._armed.append(armed)

        def post() -> None:
            with lock:
                if armed[0]:
                    counts[vector] += 1
                    return
                if not usable[0]:
                    raise unusable()
                if port.held:
                    port.held_count += 1
                    return
                b[index] |= mask
                counts[vector] += 1
                control = b[control_at]
                if control & test:
                    if armable and control & on_bit:
                        armed[0] = True
                    return
                b[control_at] = control | on_bit
                q[notified] += 1
                armed[0] = armable
                if nfd >= 0 and write(nfd, one, 8) < 0:
                    raise _write_error()

        return post

    def post_port(self, port: Port, count: int) -> bool:
        """Post ``count`` interrupts through ``port`` (held while it is held):
        how the eventfd relay posts what one read took."""
        if count <= 0:
            return False
        return self._locked(self._post_port_locked, port, count)

    def _post_port_locked(self, port: Port, count: int) -> bool:
        if port.held:
            port.held_count += count
            return False
        return self._post_locked(port.vector, count, port.urgent)

    def hold(self, port: Port) -> None:
        """Hold the port's posts (the pair is stopped)."""
        self._locked(self._hold_locked, port)

    def _hold_locked(self, port: Port) -> None:
        port.held = True
        self._disarm()

    def _disarm(self) -> None:
        """Send every poster's next post the whole way (the caller holds the
        lock, or no other thread can post: closing, a fork()ed child)."""
        for cell in self._armed:
            cell[0] = False

    def release_port(self, port: Port) -> int:
        """Stop holding; post what was held (one PIR bit). Returns the count."""
        return self._locked(self._release_port_locked, port)

    def _release_port_locked(self, port: Port) -> int:
        count, port.held, port.held_count = port.held_count, False, 0
        if count > 0:
            self._post_locked(port.vector, count, port.urgent)
        return count

    # -- the vCPU side -------------------------------------------------------

    def sync(self) -> SyncResult:
        """Take PIR into the IRR (Linux ``sync_pir_to_irr``): clear ON first, so
        a post racing this sync notifies again instead of hiding behind ON."""
        return self._locked(self._sync_locked)

    def _sync_locked(self) -> SyncResult:
        posts: dict[int, int] = {}
        return SyncResult(self._take_locked(posts), posts)

    def drain(self) -> int:
        """:meth:`sync`, then :meth:`acknowledge` every vector in the IRR, in
        one locked step: what a vCPU that takes every interrupt at once does
        (the consumer's drainer). Returns the posts taken."""
        return self._locked(self._drain_locked)

    def _drain_locked(self) -> int:
        before = self._q[_POSTS_DRAINED]
        self._take_locked(None)
        self.irr = 0
        return int(self._q[_POSTS_DRAINED] - before)

    def _take_locked(self, posts: dict[int, int] | None) -> int:
        """The sync itself (the caller holds the locks): the vectors taken,
        and into ``posts`` the count behind each."""
        b, q, pending = self._b, self._q, self._pending
        b[CONTROL_OFFSET] &= ~ON_BIT & 0xFF
        self._disarm()  # ON is clear: the next post of each port goes the whole way
        vectors = int.from_bytes(b[PIR_OFFSET:PIR_BYTES], "little")
        q[_SYNCS] += 1
        bits = vectors
        while bits:
            low = bits & -bits
            vector = low.bit_length() - 1
            bits ^= low
            # one vector at a time, with no call from here to the loop's end,
            # so a signal (handled at a call or the jump back) finds each vector
            # either drained whole or untouched: an interrupted sync loses no
            # post, and the next sync takes the rest
            count = pending[vector]
            pending[vector] = 0
            q[_DRAINED + vector] += count
            b[vector >> 3] &= ~(1 << (vector & 7)) & 0xFF
            self.irr |= low
            q[_VECTORS_DRAINED] += 1
            q[_POSTS_DRAINED] += count
            if posts is not None:
                posts[vector] = count
        return vectors

    def wait(self, timeout: float | None = None) -> int:
        """Wait for notifications (up to ``timeout`` s); returns how many came."""
        if self.notification is None:
            raise irqbypass.IrqBypassError(
                "this descriptor has no notification eventfd; pass notification= to attach()"
            )
        return self.notification.read(timeout)

    def acknowledge(self) -> int | None:
        """The vCPU takes its highest-priority pending vector out of the IRR
        (as the local APIC does); None when the IRR is empty."""
        self._check_usable()
        with self._lock:
            if not self.irr:
                return None
            vector = self.irr.bit_length() - 1
            self.irr &= ~(1 << vector)
            return vector

    def set_sn(self, suppress: bool) -> bool:
        """Set or clear SN (the vCPU is scheduled out / back in). Clearing it
        while PIR holds vectors and ON is clear sets ON and notifies, so posts
        suppressed meanwhile wake the vCPU (Linux's ``vmx_vcpu_pi_load`` sets ON
        and lets the next VM entry process PIR; here the notification stands in).
        Returns True if it notified."""
        return self._locked(self._set_sn_locked, bool(suppress))

    def _set_sn_locked(self, suppress: bool) -> bool:
        b = self._b
        control = b[CONTROL_OFFSET]
        if suppress:
            b[CONTROL_OFFSET] = control | SN_BIT
            return False
        control &= ~SN_BIT & 0xFF
        notify = not control & ON_BIT and any(b[PIR_OFFSET:PIR_BYTES])
        if not notify:
            b[CONTROL_OFFSET] = control
            return False
        b[CONTROL_OFFSET] = control | ON_BIT
        self._q[_NOTIFIED] += 1
        if self._nfd >= 0 and _write(self._nfd, _ONE, 8) < 0:
            raise _write_error()
        return True

    def set_nv(self, nv: int) -> None:
        _check_control(nv, 0)
        self._locked(self._b.__setitem__, NV_OFFSET, nv)

    def set_ndst(self, ndst: int) -> None:
        _check_control(0, ndst)
        self._locked(
            self._b.__setitem__, slice(NDST_OFFSET, NDST_OFFSET + 4), ndst.to_bytes(4, "little")
        )

    # -- looking -------------------------------------------------------------

    def raw(self) -> bytes:
        """The 64 descriptor bytes, exactly as mapped."""
        return bytes(self._b[:DESCRIPTOR_SIZE])

    @property
    def pir(self) -> int:
        return int.from_bytes(self._b[PIR_OFFSET:PIR_BYTES], "little")

    @property
    def on(self) -> bool:
        return bool(self._b[CONTROL_OFFSET] & ON_BIT)

    @property
    def sn(self) -> bool:
        return bool(self._b[CONTROL_OFFSET] & SN_BIT)

    @property
    def nv(self) -> int:
        return self._b[NV_OFFSET]

    @property
    def ndst(self) -> int:
        return int.from_bytes(self._b[NDST_OFFSET : NDST_OFFSET + 4], "little")

    def posted_per_vector(self) -> dict[int, int]:
        """Posts per vector so far (drained and pending), vectors with any."""
        drained, pending = self._locked(self._per_vector_locked)
        counts = {v: drained[v] + pending[v] for v in range(256)}
        return {v: n for v, n in counts.items() if n}

    def drained_per_vector(self) -> dict[int, int]:
        drained, _ = self._locked(self._per_vector_locked)
        return {v: n for v, n in enumerate(drained) if n}

    def _per_vector_locked(self) -> tuple[list[int], list[int]]:
        q = self._q
        return q[_DRAINED : _DRAINED + 256].tolist(), list(self._pending)

    def counters(self) -> dict[str, int]:
        """posted, notified, syncs, vectors_drained, posts_drained, pending."""
        return self._locked(self._counters_locked)

    def _counters_locked(self) -> dict[str, int]:
        q = self._q
        pending = sum(self._pending)
        drained = q[_POSTS_DRAINED]
        return {
            "posted": drained + pending,
            "notified": q[_NOTIFIED],
            "syncs": q[_SYNCS],
            "vectors_drained": q[_VECTORS_DRAINED],
            "posts_drained": drained,
            "pending": pending,
        }


def _check_control(nv: int, ndst: int) -> None:
    if not isinstance(nv, int) or isinstance(nv, bool) or not 0 <= nv <= 255:
        raise irqbypass.InvalidEndpointError(
            f"notification vector nv={_show(nv)} does not fit its byte; use 0 to 255"
        )
    if not isinstance(ndst, int) or isinstance(ndst, bool) or not 0 <= ndst <= 0xFFFFFFFF:
        raise irqbypass.InvalidEndpointError(
            f"notification destination ndst={_show(ndst)} does not fit its u32; "
            "use 0 to 0xffffffff (the x2APIC ID, or the xAPIC ID shifted left by 8)"
        )


def _forked_error(path: str | None, pid: int) -> irqbypass.DeviceError:
    where = repr(path) if path else "(anonymous)"
    return irqbypass.DeviceError(
        f"posted-interrupt descriptor {where} was opened by process {pid} and is used from "
        f"its fork()ed child {os.getpid()}: the two share its lock (a flock belongs to the open "
        "file description, which fork shares), so their posts would race and miscount; "
        "in the child, close this copy and map the file again with "
        "PostedDescriptor.attach(path) (an anonymous descriptor cannot be shared)"
    )
