"""The direct path's posting functions: the hot path, with everything bound in advance.

Each is the discipline of :meth:`PostingRules._locked` written out (the thread
lock, and in lock mode ``"file"`` the flock, around the post), its names bound
as closure cells when the function is made: no attribute lookup per post. The
rule itself (set the bit, count, test ON, notify) is one closure both call.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._layout import _NOTIFIED, _ONE, CONTROL_OFFSET, ON_BIT, SN_BIT, Port, _write, _write_error

if TYPE_CHECKING:
    from ._posting import PostingRules

__all__ = ["flocked", "process_locked"]


def _marker(
    rules: PostingRules, port: Port, armed: list[bool], armable: bool
) -> Callable[[], None]:
    """The rule's middle, which both posters run under their locks: a held port
    only counts; else set the port's bit and count the post, and unless ON (or
    SN) already silences it, set ON and notify. ``armed[0]`` is left True once
    the bit and ON are known set, if the poster is ``armable``."""
    b, q, counts, nfd = rules._b, rules._q, rules._pending, rules._nfd
    vector = port.vector
    index, mask = vector >> 3, 1 << (vector & 7)  # its byte and bit of the PIR
    test = ON_BIT if port.urgent else ON_BIT | SN_BIT  # what silences its notification
    write, one, control_at, on_bit, notified = _write, _ONE, CONTROL_OFFSET, ON_BIT, _NOTIFIED

    def mark() -> None:
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

    return mark


def flocked(rules: PostingRules, port: Port) -> Callable[[], None]:
    """The poster of a descriptor in lock mode ``"file"``: the whole rule on
    every post, under the flock (another process may clear ON or a bit), the
    posts that waited for it made first. The flock is only tried: when a peer
    holds it, the post goes the general way (:meth:`PostingRules.post_port`:
    kept for later on the event loop's thread, else a wait with the thread
    lock released)."""
    lock, usable, unusable = rules._lock, rules._usable, rules._unusable_error
    mark = _marker(rules, port, [False], armable=False)
    fd, waiting, post_port = rules._fd, rules._waiting, rules.post_port
    flock = fcntl.flock
    ex, un = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN

    def post_file_locked() -> None:
        with lock:
            if not usable[0]:
                raise unusable()
            try:
                try:
                    flock(fd, ex)
                except BlockingIOError:
                    taken = False
                else:
                    taken = True
                    if waiting.posts:
                        waiting.make(rules)
                    mark()
            finally:
                flock(fd, un)
        if not taken:
            post_port(port, 1)

    return post_file_locked


def process_locked(rules: PostingRules, port: Port, armed: list[bool]) -> Callable[[], None]:
    """The poster of a descriptor in lock mode ``"process"``. On an anonymous
    descriptor it arms itself (``armed[0]``, cleared under the lock by
    whatever changes the bit or ON) once its post left its bit and ON set;
    armed, a post only counts. A file-backed one never arms."""
    lock, usable, unusable, counts = (
        rules._lock,
        rules._usable,
        rules._unusable_error,
        rules._pending,
    )
    vector = port.vector
    # another process may clear ON or a bit of a file's mapping
    mark = _marker(rules, port, armed, armable=rules._fd < 0)

    def post() -> None:
        with lock:
            if armed[0]:
                counts[vector] += 1
                return
            if not usable[0]:
                raise unusable()
            mark()

    return post
