"""Posts the event loop could not make at once: a peer process holds the file lock.

A descriptor in lock mode ``"file"`` takes ``flock`` on its memory for every
change, and another process (an attacher stopped in its sync, or a hostile one)
may hold it as long as it likes. The process's one event-loop thread serves
every endpoint, so it never waits for that lock: a post made there (the relay,
a producer's direct post from its loop timer) that finds it taken is kept here,
as a count per vector, and the drainer's sync as a flag. One loop timer per
descriptor tries the lock again, :data:`FIRST_RETRY` after, each wait twice the
last up to :data:`LAST_RETRY`, until it is free; whatever takes the locks first
(that timer, another post, a sync, a count) makes the waiting posts before its
own work, with the rule of each post: every count lands behind its vector's PIR
bit, and the notification goes as it would have for those posts made then, one
at most (ON clear, and SN clear or one of them urgent).

Everything here but :meth:`PeerWait.cancel` and :meth:`PeerWait.stats` runs
under the descriptor's thread lock.
"""

from __future__ import annotations

import fcntl
import functools
from typing import TYPE_CHECKING

import irqbypass
import irqbypass.plugin

from ._layout import CONTROL_OFFSET, ON_BIT, SN_BIT, Port

if TYPE_CHECKING:
    from ._posting import PostingRules

__all__ = ["FIRST_RETRY", "LAST_RETRY", "PeerWait"]

#: seconds from a post kept to the loop's first try of the lock again
FIRST_RETRY = 0.001
#: the longest wait between two tries (each wait doubles the last up to it)
LAST_RETRY = 0.05


class PeerWait:
    """What waits for a peer's file lock: posts as counts per vector (bounded:
    256 counts, whatever the number of posts), whether the drainer's sync
    waits, and the loop timer that tries the lock again."""

    __slots__ = ("counts", "delay", "drain", "kept", "posts", "retries", "timer", "urgent")

    def __init__(self) -> None:
        #: posts waiting per vector
        self.counts = [0] * 256
        #: one of them is urgent (it notifies even while SN is set)
        self.urgent = False
        #: posts waiting now; posts that ever waited; timer turns that tried the lock again
        self.posts = self.kept = self.retries = 0
        #: the drainer's sync waits for the lock too
        self.drain = False
        self.delay = FIRST_RETRY
        self.timer: irqbypass.plugin.LoopHandle | None = None

    def keep(self, rules: PostingRules, vector: int, count: int, urgent: bool) -> bool:
        """Keep ``count`` posts of ``vector`` until the lock is free (False: no
        notification now)."""
        self.counts[vector] += count
        self.urgent = self.urgent or urgent
        self.posts += count
        self.kept += count
        self.schedule(rules)
        return False

    def keep_port(self, rules: PostingRules, port: Port, count: int) -> bool:
        """:meth:`keep` the posts of ``port``, or count them in it while it is
        held (the thread lock guards a port: no flock needed)."""
        if port.held:
            port.held_count += count
            return False
        return self.keep(rules, port.vector, count, port.urgent)

    def keep_drain(self, rules: PostingRules) -> int:
        """Leave the drainer's sync to the timer (none taken now)."""
        self.drain = True
        self.schedule(rules)
        return 0

    def schedule(self, rules: PostingRules) -> None:
        """The timer, unless it is set already: one per descriptor."""
        if self.timer is not None and self.timer.active:
            return
        try:
            self.timer = irqbypass.event_loop().call_later(
                self.delay,
                functools.partial(self._retry, rules),
                owner=f"{rules!r} (waiting for a peer's file lock)",
            )
        except irqbypass.LoopClosedError:
            self.timer = None  # the loop is going: whoever takes the locks next makes them

    def make(self, rules: PostingRules) -> None:
        """Make every waiting post (the caller holds both locks), as those
        posts made now would: counts behind the bits, then one notification if
        ON is clear and SN is clear or one of them urgent. One vector at a
        time, with no call in a step (so a signal finds each vector moved whole
        or not at all)."""
        if not self.posts:
            return
        b, pending, counts = rules._b, rules._pending, self.counts
        urgent = self.urgent
        for vector, count in enumerate(counts):
            if count:
                counts[vector] = 0
                b[vector >> 3] |= 1 << (vector & 7)
                pending[vector] += count
                self.posts -= count
        self.urgent = False
        self.delay = FIRST_RETRY
        control = b[CONTROL_OFFSET]
        if not control & (ON_BIT if urgent else ON_BIT | SN_BIT):
            rules._notify_locked(control)

    def _retry(self, rules: PostingRules) -> None:
        """The timer, on the loop: the flock at once, or a try later (never a
        wait; the thread lock is never held by a thread waiting for a peer)."""
        with rules._lock:
            self.timer = None
            if not rules._usable[0] or not (self.posts or self.drain):
                return
            self.retries += 1
            fd = rules._fd
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self.delay = min(self.delay * 2, LAST_RETRY)
                    self.schedule(rules)
                    return
                if self.posts:
                    self.make(rules)
                if self.drain:
                    self.drain = False
                    rules._drain_locked()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def cancel(self) -> None:
        """Take the timer off the loop (the descriptor closes: nothing is made
        any more; the caller does not hold the thread lock, which the timer takes)."""
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def stats(self) -> dict[str, int]:
        """``waiting_for_peer`` (posts waiting now), ``waited_for_peer`` (in
        all) and ``lock_retries`` (the timer's tries), once a post or a drain
        ever waited; else nothing."""
        if not (self.kept or self.retries or self.drain):
            return {}
        return {
            "waiting_for_peer": self.posts,
            "waited_for_peer": self.kept,
            "lock_retries": self.retries,
        }
