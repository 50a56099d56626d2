"""The posting rules over a mapped posted-interrupt descriptor.

Posting follows VT-d "Interrupt-Posting Hardware Operation": set the vector's PIR
bit; if ON was clear and (the post is urgent or SN is clear), set ON and send the
notification event (here: a write to the notification eventfd). ``sync`` is
Linux's ``sync_pir_to_irr``: clear ON, then take PIR into the IRR.

Every locked section is ``with self._lock`` around ``flock`` in try/finally: a
KeyboardInterrupt (or any exception) landing anywhere in it releases both.
Unlocking a flock that was not taken is harmless, so the finally need not know
how far the ``try`` got. The flock is only tried under the thread lock, never
waited for: a peer process may hold it as long as it likes, and the process's
event loop must not wait for it, neither in a post of its own nor for the
thread lock of a thread that waits. On the loop's thread a post that finds it
taken is kept for later (:mod:`._waiting`); elsewhere the thread waits for the
peer with the thread lock released, then tries again.

The notification is written under the lock right after ON is set, with no
call in between (so no point where a signal handler can run): ON set without
its notification would leave the vCPU asleep for good.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import irqbypass
import irqbypass.plugin

from . import _poster
from ._layout import (
    _DRAINED,
    _NOTIFIED,
    _ONE,
    _POSTS_DRAINED,
    _SYNCS,
    _VECTORS_DRAINED,
    CONTROL_OFFSET,
    NDST_OFFSET,
    NV_OFFSET,
    ON_BIT,
    PIR_BYTES,
    PIR_OFFSET,
    SN_BIT,
    DescriptorFields,
    LockMode,
    Port,
    SyncResult,
    _check_control,
    _write,
    _write_error,
    check_vector,
)
from ._waiting import LAST_RETRY, PeerWait

__all__ = ["PostingRules"]

_T = TypeVar("_T")


class PostingRules(DescriptorFields):
    """Post, hold, sync, drain and read a descriptor mapped at ``_b`` (bytes)
    and ``_q`` (u64 slots), under ``_lock`` and, in lock mode ``"file"``, the
    flock of ``_fd``. :class:`~irqbypass_posted.PostedDescriptor` maps it and
    sets every attribute below before any of these runs."""

    lock_mode: LockMode
    notification: irqbypass.Eventfd | None
    irr: int
    _lock: threading.Lock
    _usable: list[bool]
    _in_child: bool
    _pid: int
    _path: str | None
    _fd: int
    _mm: mmap.mmap | None
    _b: memoryview
    _q: memoryview
    _pending: memoryview | list[int]
    _armed: list[list[bool]]
    _nfd: int
    _waiting: PeerWait

    # -- locking (see the module's docstring) --------------------------------------

    def _locked(
        self, body: Callable[..., _T], *args: object, busy: Callable[..., _T] | None = None
    ) -> _T:
        """``body(*args)`` under the thread lock and, in file mode, the flock (the
        posts waiting for it made first). If a peer holds it, on the event loop's
        thread ``busy(self, *args)`` keeps the work for later; elsewhere (or without
        ``busy``) this waits for the peer without the thread lock, and tries again."""
        waiter = -1
        try:
            while True:
                with self._lock:
                    self._check_usable()
                    if self.lock_mode != "file":
                        return body(*args)
                    try:
                        if _took_file_lock(self._fd):
                            if self._waiting.posts:
                                self._waiting.make(self)
                            return body(*args)
                        if busy is not None and irqbypass.plugin.on_loop_thread():
                            return busy(self, *args)
                        if waiter < 0:
                            waiter = _another_description(self._fd)
                    finally:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
                _wait_for_file_lock(waiter)
        finally:
            if waiter >= 0:
                os.close(waiter)

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
        return self._locked(self._post_locked, vector, count, urgent, busy=self._waiting.keep)

    def _post_locked(self, vector: int, count: int, urgent: bool) -> bool:
        b = self._b
        b[vector >> 3] |= 1 << (vector & 7)
        self._pending[vector] += count
        control = b[CONTROL_OFFSET]
        if control & (ON_BIT if urgent else ON_BIT | SN_BIT):
            return False
        return self._notify_locked(control)

    def _notify_locked(self, control: int) -> bool:
        """Write ``control`` with ON set, and notify (the caller holds the
        locks). ON and its notification come together: a signal can land as
        this starts (before ON is set) or once the write returned, never
        between the two."""
        self._b[CONTROL_OFFSET] = control | ON_BIT
        self._q[_NOTIFIED] += 1
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
        self._check_usable()
        if self.lock_mode == "file":
            return _poster.flocked(self, port)
        armed = [False]
        with self._lock:
            self._armed.append(armed)
        return _poster.process_locked(self, port, armed)

    def post_port(self, port: Port, count: int) -> bool:
        """Post ``count`` interrupts through ``port`` (held while it is held):
        how the eventfd relay posts what one read took."""
        if count <= 0:
            return False
        return self._locked(self._post_port_locked, port, count, busy=self._waiting.keep_port)

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

    def drain(self, *, defer: bool = False) -> int:
        """:meth:`sync`, then :meth:`acknowledge` every vector in the IRR, in
        one locked step: what a vCPU that takes every interrupt at once does
        (the consumer's drainer). Returns the posts taken. ``defer``: on the
        event loop's thread, a peer holding the file lock leaves the drain to
        the loop, done once the peer lets go (0 returned now)."""
        return self._locked(self._drain_locked, busy=self._waiting.keep_drain if defer else None)

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
        return self._notify_locked(control)

    def set_nv(self, nv: int) -> None:
        _check_control(nv, 0)
        self._locked(self._b.__setitem__, NV_OFFSET, nv)

    def set_ndst(self, ndst: int) -> None:
        _check_control(0, ndst)
        self._locked(
            self._b.__setitem__, slice(NDST_OFFSET, NDST_OFFSET + 4), ndst.to_bytes(4, "little")
        )

    # -- looking (the fields themselves: DescriptorFields) --------------------

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

    def counters(self, *, wait: bool = True) -> dict[str, int]:
        """posted, notified, syncs, vectors_drained, posts_drained, pending;
        once a post waited for a peer's file lock, also waiting_for_peer,
        waited_for_peer and lock_retries (:meth:`PeerWait.stats`).
        ``wait=False`` reads them without waiting for a lock: a snapshot a post
        or another process's sync may be changing (what a close keeps when a
        Ctrl-C ended its wait for a peer holding the file lock)."""
        if not wait:
            self._check_usable()
            return self._counters_locked()
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
            **self._waiting.stats(),
        }


def _took_file_lock(fd: int) -> bool:
    """flock(LOCK_EX) on the memory if it is free now (never a wait)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _another_description(fd: int) -> int:
    """A new open file description of the memory, to wait on for the peer's
    flock without the thread lock (a flock belongs to the description: this
    one excludes ours too, which is then only held for a moment); -1 if none
    can be opened (out of fds): the wait then polls."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


@irqbypass.plugin.waits_on_peer
def _wait_for_file_lock(waiter: int) -> None:
    """Wait until no other process holds the memory's flock (an attacher may
    hold it as long as it likes, so a Ctrl-C ends this, even inside an
    uninterrupted close); the caller then tries for it again."""
    if waiter < 0:
        time.sleep(LAST_RETRY)
        return
    try:
        fcntl.flock(waiter, fcntl.LOCK_EX)
    finally:
        fcntl.flock(waiter, fcntl.LOCK_UN)


def _forked_error(path: str | None, pid: int) -> irqbypass.DeviceError:
    where = repr(path) if path else "(anonymous)"
    return irqbypass.DeviceError(
        f"posted-interrupt descriptor {where} was opened by process {pid} and is used from "
        f"its fork()ed child {os.getpid()}: the two share its lock (a flock belongs to the open "
        "file description, which fork shares), so their posts would race and miscount; "
        "in the child, close this copy and map the file again with "
        "PostedDescriptor.attach(path) (an anonymous descriptor cannot be shared)"
    )
