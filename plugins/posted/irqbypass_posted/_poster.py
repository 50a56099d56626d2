"""The direct path's posting functions: the hot path, with everything bound in advance.

Each is the discipline of :meth:`PostingRules._locked` written out (the thread
lock, and in lock mode ``"file"`` the flock, around the post), its names bound
as closure cells when the function is made: no attribute lookup per post.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._layout import _NOTIFIED, _ONE, CONTROL_OFFSET, ON_BIT, SN_BIT, Port, _write, _write_error

if TYPE_CHECKING:
    from ._posting import PostingRules

__all__ = ["flocked", "process_locked"]


def flocked(rules: PostingRules, port: Port) -> Callable[[], None]:
    """The poster of a descriptor in lock mode ``"file"``: the whole rule on
    every post, under the flock (another process may clear ON or a bit)."""
    lock = rules._lock
    b = rules._b
    q = rules._q
    counts = rules._pending
    vector = port.vector
    index = vector >> 3
    mask = 1 << (vector & 7)
    test = ON_BIT if port.urgent else ON_BIT | SN_BIT
    nfd = rules._nfd
    write = _write
    one = _ONE
    control_at = CONTROL_OFFSET
    on_bit = ON_BIT
    notified = _NOTIFIED
    usable, unusable = rules._usable, rules._unusable_error
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
    lock = rules._lock
    b = rules._b
    q = rules._q
    counts = rules._pending
    vector = port.vector
    index = vector >> 3
    mask = 1 << (vector & 7)
    test = ON_BIT if port.urgent else ON_BIT | SN_BIT
    nfd = rules._nfd
    write = _write
    one = _ONE
    control_at = CONTROL_OFFSET
    on_bit = ON_BIT
    notified = _NOTIFIED
    usable, unusable = rules._usable, rules._unusable_error
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
