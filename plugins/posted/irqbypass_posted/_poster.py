"""The direct path's posting functions: the hot path, with everything bound in advance.

Each is the discipline of :meth:`PostingRules._locked` written out (the thread
lock, and in lock mode ``"file"`` the flock, around the post), its names bound
as closure cells when the function is made: no attribute lookup per post.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import irqbypass

from ._layout import _NOTIFIED, _ONE, CONTROL_OFFSET, ON_BIT, SN_BIT, Port, _write, _write_error

if TYPE_CHECKING:
    from ._posting import PostingRules

__all__ = ["flocked", "process_locked"]


def _views(
    rules: PostingRules,
) -> tuple[
    threading.Lock,
    memoryview,
    memoryview,
    memoryview | list[int],
    list[bool],
    Callable[[], irqbypass.IrqBypassError],
    int,
]:
    """What every post touches: the lock, the byte and u64 views, the pending
    counts, the usable cell and its error, the notification fd."""
    return (
        rules._lock,
        rules._b,
        rules._q,
        rules._pending,
        rules._usable,
        rules._unusable_error,
        rules._nfd,
    )


def _bits(port: Port) -> tuple[int, int, int, int]:
    """The port's vector, its PIR byte and bit, and the control bits that
    silence its notification (ON, and SN unless the port is urgent)."""
    vector = port.vector
    return vector, vector >> 3, 1 << (vector & 7), ON_BIT if port.urgent else ON_BIT | SN_BIT


def flocked(rules: PostingRules, port: Port) -> Callable[[], None]:
    """The poster of a descriptor in lock mode ``"file"``: the whole rule on
    every post, under the flock (another process may clear ON or a bit)."""
    lock, b, q, counts, usable, unusable, nfd = _views(rules)
    vector, index, mask, test = _bits(port)
    write, one, control_at, on_bit, notified = _write, _ONE, CONTROL_OFFSET, ON_BIT, _NOTIFIED
    fd = rules._fd
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


def process_locked(rules: PostingRules, port: Port, armed: list[bool]) -> Callable[[], None]:
    """The poster of a descriptor in lock mode ``"process"``. On an anonymous
    descriptor it arms itself (``armed[0]``, cleared under the lock by
    whatever changes the bit or ON) once its post left its bit and ON set;
    armed, a post only counts. A file-backed one never arms."""
    lock, b, q, counts, usable, unusable, nfd = _views(rules)
    vector, index, mask, test = _bits(port)
    write, one, control_at, on_bit, notified = _write, _ONE, CONTROL_OFFSET, ON_BIT, _NOTIFIED
    armable = rules._fd < 0  # another process may clear ON or a bit of a file's mapping

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
