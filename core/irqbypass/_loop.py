"""One event loop for every endpoint's file descriptors and timers.

A VM has thousands of vectors; a thread per endpoint (a reader per eventfd, a
firing thread per mock) makes the scheduler the bottleneck long before the
work is. So every plugin waits through one :class:`EventLoop`: an epoll set and
a heap of timers, run by one daemon thread per process (started on first use;
:func:`event_loop` returns it), or by the embedding VMM's asyncio loop
(:meth:`EventLoop.attach`), then with no thread of its own.

The contract a plugin relies on:

- callbacks run on the loop's thread, one at a time, and must not block (every
  other endpoint waits meanwhile); a reader's callback may find nothing to read;
- :meth:`~EventLoop.add_reader`, :meth:`~EventLoop.call_later` and
  :meth:`~EventLoop.call_every` may be called from any thread, callbacks
  included; each returns a :class:`LoopHandle`;
- :meth:`LoopHandle.cancel` is idempotent; called outside the loop's thread it
  returns once the callback is not running and never will again (so ``close()``
  can release what the callback uses); called from a callback, at once;
- a callback that raises is removed and its error kept on the handle
  (:attr:`LoopHandle.problem`, for the endpoint's ``stats()``/``problem``) and in
  :attr:`EventLoop.faults`; the other callbacks go on (a Ctrl-C landing in one
  that asyncio runs on the main thread is the VMM's: it propagates, the callback
  stays);
- a callback running longer than ``watchdog_seconds`` is named on the
  ``irqbypass.loop`` logger (stderr when logging is not configured);
- the loop's threads block every asynchronous signal, so Ctrl-C always reaches
  the main thread at once;
- a reader given an :class:`~irqbypass.Eventfd` borrows it: closing the token
  under a registered reader removes the reader and calls its callback once more
  (whose read raises :class:`~irqbypass.EventfdClosedError`), and the fd number
  is not reused while the loop still watches it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import heapq
import itertools
import logging
import math
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ._errors import InvalidEndpointError, IrqBypassError, LoopClosedError
from ._eventfd import Eventfd
from ._options import show_exception, show_value

if TYPE_CHECKING:  # asyncio itself only where the VMM brings its loop (attach)
    import asyncio

__all__ = ["WATCHDOG_SECONDS", "EventLoop", "LoopFault", "LoopHandle", "event_loop"]

log = logging.getLogger("irqbypass.loop")

#: how long a callback may run before the watchdog names it
WATCHDOG_SECONDS = 1.0
#: the longest single wait (a far timer or none: the wait is cut, not the timer)
_MAX_WAIT = 60.0
#: seconds given as an int beyond this no float holds (refused, as any bad seconds)
_FLOAT_MAX = sys.float_info.max
#: how many faults :attr:`EventLoop.faults` keeps (the latest)
FAULTS_KEPT = 100
_WAKE = (1).to_bytes(8, "little")
#: signals the kernel sends to the thread that caused them: never blocked
_SYNCHRONOUS = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGABRT,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGKILL,
    signal.SIGSTOP,
}

Callback = Callable[[], object]


class _FileLike(Protocol):
    def fileno(self) -> int: ...


class LoopHandle:
    """One reader or timer on an :class:`EventLoop`; :meth:`cancel` takes it
    off the loop (its reader out of the epoll set, its timer out of the heap).

    What a registration gives is checked here, once, whichever method made it:
    the owner label, the callback and a timer's seconds (``seconds``: its
    ``("period", value)`` and ``("delay", value)``, in the order told)."""

    __slots__ = (
        "_loop",
        "borrowed",
        "callback",
        "error",
        "fd",
        "identity",
        "owner",
        "period",
        "state",
        "when",
    )

    def __init__(
        self, loop: EventLoop, callback: Callback, owner: str, *seconds: tuple[str, object]
    ) -> None:
        if not isinstance(owner, str) or not owner:
            raise InvalidEndpointError(
                f"the loop needs an owner label (a non-empty str naming the endpoint), "
                f"not {show_value(owner)}"
            )
        if not callable(callback):
            raise InvalidEndpointError(
                f"{owner}: loop callback {show_value(callback)} is not callable"
            )
        for what, value in seconds:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (isinstance(value, int) and value > _FLOAT_MAX)  # no float holds it
                or math.isnan(value)
                or value < 0
            ):
                raise InvalidEndpointError(
                    f"{owner}: loop timer {what} {show_value(value)} must be a number of "
                    "seconds >= 0"
                )
        self._loop = loop
        self.callback = callback
        #: who registered it: the label faults and watchdog lines name
        self.owner = owner
        self.fd = -1  # a reader's, set by add_reader; -1 for a timer
        self.period: float | None = None  # a periodic timer's
        self.when = 0.0
        #: "active", "cancelled", "failed" (the callback raised), "done" (a one-shot ran)
        self.state = "active"
        #: what the callback raised (it was removed then), or None
        self.error: BaseException | None = None
        self.borrowed: Eventfd | None = None
        #: a reader's file (st_dev, st_ino): tells a number closed and reused behind our back
        self.identity: tuple[int, int] | None = None

    @property
    def active(self) -> bool:
        """The handle is still served: not cancelled, failed or done (a one-shot that ran)."""
        return self.state == "active"

    @property
    def problem(self) -> str | None:
        """Why this handle was removed by the loop (its callback raised), or None."""
        if self.error is None:
            return None
        return (
            f"{self.owner}: its loop callback {_name(self.callback)} raised "
            f"{show_exception(self.error)} and was removed"
        )

    def cancel(self) -> None:
        """Remove it (idempotent). From another thread, returns once the
        callback is not running and never will again."""
        self._remove("cancelled")

    def _remove(self, state: str) -> None:
        """Take it off its loop as ``state`` ("cancelled", or "failed": its
        callback raised); unless called from the loop's thread, wait for a
        running callback to return."""
        loop = self._loop
        borrowed = None
        with loop._lock:
            running = loop._watchdog.current is self
            if self.state == "active":
                self.state = state
                if self.fd >= 0:
                    borrowed = self._unwatch()
                elif not running:  # (a running timer is out of the heap)
                    # it stays in the heap until due; not forever: a plugin may set
                    # and cancel far timers, so the cancelled never outnumber the live
                    loop._timers_cancelled += 1
                    if loop._timers_cancelled > 64 and loop._timers_cancelled * 2 > len(
                        loop._timers
                    ):
                        loop._timers = [e for e in loop._timers if e[2].state == "active"]
                        heapq.heapify(loop._timers)
                        loop._timers_cancelled = 0
            if running and threading.get_ident() != loop._loop_thread:
                # the lock held, the callback cannot begin meanwhile: wait until it returned
                loop._cancel_waiters += 1
                try:
                    while loop._watchdog.current is self:
                        loop._idle.wait()
                finally:
                    loop._cancel_waiters -= 1
        if borrowed is not None:
            borrowed.let_go(self._source_closed)

    def _unwatch(self) -> Eventfd | None:
        """Take a reader out of its loop's epoll set (the loop's lock held);
        returns the Eventfd it borrowed, to give back outside the lock."""
        loop = self._loop
        if loop._readers.get(self.fd) is self:
            del loop._readers[self.fd]
            if not loop._closed:
                # not contextlib.suppress: 0.35 us more in each reader's cancel
                try:  # noqa: SIM105
                    loop._epoll.unregister(self.fd)
                except OSError:
                    pass  # the owner closed a raw fd first
        borrowed, self.borrowed = self.borrowed, None
        return borrowed

    def _source_closed(self) -> None:
        """What a borrowed Eventfd calls when it is closed: drop the reader and
        let its callback find out (its read raises EventfdClosedError)."""
        if self.state != "active":
            return
        loop = self._loop
        with loop._lock:
            if self.state != "active":
                return
            self.state = "cancelled"
            borrowed = self._unwatch()
        if borrowed is not None:
            borrowed.let_go(self._source_closed)  # now the fd is closed
        with contextlib.suppress(LoopClosedError):  # a loop closing meanwhile runs nothing
            loop.call_later(0.0, self.callback, owner=self.owner)

    def __repr__(self) -> str:
        what = f"reader fd {self.fd}" if self.fd >= 0 else "timer"
        return f"<LoopHandle {what} of {self.owner} {self.state}>"


@dataclass(frozen=True)
class LoopFault:
    """A callback the loop removed because it raised, or one that ran too long."""

    owner: str
    callback: str
    #: "raised" or "blocked"
    kind: str
    message: str
    time: float


@dataclass(eq=False)
class _Faults:
    """What went wrong on the loop: the latest faults, their count, and the log."""

    #: the latest faults, oldest first (at most FAULTS_KEPT): the loop's ``faults``
    kept: collections.deque[LoopFault]
    count: int = 0

    def record(
        self, handle: LoopHandle, kind: str, message: str, level: int, exc_info: bool = False
    ) -> None:
        """Log the fault, then record it: whoever finds it in the record
        (another thread: the watchdog tells from its own) finds it logged too."""
        log.log(level, "irqbypass loop: %s", message, exc_info=exc_info)
        self.count += 1
        self.kept.append(
            LoopFault(handle.owner, _name(handle.callback), kind, message, time.time())
        )

    def raised(self, handle: LoopHandle, exc: BaseException) -> None:
        """A callback raised: it is removed (by the caller) and its error kept."""
        handle.error = exc
        message = f"{handle.problem}; the other callbacks go on"
        self.record(handle, "raised", message, logging.ERROR, log.isEnabledFor(logging.DEBUG))

    def reused(self, handle: LoopHandle) -> None:
        """A reader's fd was closed (and its number reused) behind the loop's
        back: it fails, as a fault of its owner (the caller removes it)."""
        handle.state = "failed"
        handle.error = InvalidEndpointError(
            f"{handle.owner}: fd {handle.fd} was closed while the loop watched it (cancel "
            "the reader first); its number was reused, so the reader was removed"
        )
        self.record(handle, "raised", str(handle.error), logging.ERROR)

    def blocked(
        self, handle: LoopHandle, elapsed: float, *, returned: bool, reported: bool
    ) -> None:
        """A callback ran (or has been running) longer than the watchdog allows."""
        what = f"{handle.owner}: loop callback {_name(handle.callback)}"
        if returned:
            if not reported:  # the watchdog did not see it (asyncio, or it was short of a check)
                message = (
                    f"{what} ran {elapsed:.1f} s; callbacks must not block (every other "
                    "endpoint waited for it)"
                )
                self.record(handle, "blocked", message, logging.WARNING)
            else:
                log.warning("irqbypass loop: %s returned after %.1f s", what, elapsed)
            return
        message = (
            f"{what} has been running for {elapsed:.1f} s; callbacks must not block "
            "(every other endpoint waits for it)"
        )
        self.record(handle, "blocked", message, logging.WARNING)


@dataclass(eq=False)
class _Watchdog:
    """Which callback runs now and since when; its own thread names one that
    runs longer than ``seconds``, once. The loop sets ``current``, ``since``
    and ``reported`` with ``lock`` held (the loop's), which ``cancel()`` waits
    on for a running callback to return."""

    lock: threading.Lock
    seconds: float
    faults: _Faults
    current: LoopHandle | None = None
    since: float = 0.0
    #: the watchdog named ``current`` already
    reported: bool = False
    #: set when the loop closes: the watchdog's wait ends at once
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """The watchdog's thread: a few times per threshold, names the running
        callback if it has run too long (once).

        It waits on an Event (closing wakes it at once), not time.sleep (which
        a test may patch). A check that raises is logged once and the
        watchdog goes on: a thread that died would leave the loop unwatched,
        and its traceback would land in whatever runs; a wait that raises
        stops it cleanly, logged, rather than spin."""
        tick = min(self.seconds / 4, threading.TIMEOUT_MAX)  # inf: it never fires, and waits
        failed = False
        while True:
            try:
                if self.stopped.wait(tick):
                    return
            except Exception as exc:
                log.error("irqbypass loop: the watchdog cannot wait (%s); it stops",
                          show_exception(exc))  # fmt: skip
                return
            try:
                self.check()
            except Exception as exc:
                if not failed:
                    failed = True
                    log.error("irqbypass loop: a watchdog check raised %s; it goes on "
                              "(told once)", show_exception(exc))  # fmt: skip

    def check(self) -> None:
        """Name the running callback if it has run too long (once)."""
        with self.lock:
            handle, since = self.current, self.since
            late = (
                handle is not None
                and not self.reported
                and time.monotonic() - since >= self.seconds
            )
            if late:
                self.reported = True
        if late and handle is not None:
            self.faults.blocked(handle, time.monotonic() - since, returned=False, reported=False)


class _Asyncio:
    """Runs an :class:`EventLoop` inside an asyncio loop: the epoll fd is one
    asyncio reader, the next timer of ours one asyncio timer."""

    def __init__(self, loop: EventLoop, host: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.host = host
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def take(cls, loop: EventLoop, host: asyncio.AbstractEventLoop) -> _Asyncio:
        """The driver of ``loop`` in ``host``, if ``loop`` runs nowhere yet."""
        if loop._thread is not None:
            raise LoopClosedError(
                f"event loop {loop.name!r} already runs its own thread; attach it to "
                "asyncio before any endpoint is opened"
            )
        if loop._asyncio is not None:
            raise LoopClosedError(f"event loop {loop.name!r} is already attached to asyncio")
        return cls(loop, host)

    def start(self) -> None:
        self.host.add_reader(self._loop._epoll.fileno(), self.turn)
        self.turn()

    def stop(self, release: Callable[[], None] | None = None) -> None:
        """Take the epoll fd out of asyncio's watch, then ``release()`` (a close:
        the loop's fds), in that order: an fd closed while asyncio still held
        it left asyncio taking the file that reused its number for ours, never
        watched. Done at once, from any thread: handed to asyncio's thread, it
        would never run (and the fds never close) once asyncio stopped first;
        what it changes in asyncio (a dict entry, an epoll_ctl) is atomic."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.host.remove_reader(self._loop._epoll.fileno())
        if release is not None:
            release()

    def turn(self) -> None:
        """One turn: run what is ready, then set asyncio's timer for the next
        due timer of ours."""
        loop = self._loop
        if loop._asyncio is not self or loop.closed:
            return
        try:
            loop.run_once(0.0)
        finally:  # an interrupt goes on to asyncio's caller: the next turn still comes
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            delay = loop._next_wait()
            if delay is not None:
                self._timer = self.host.call_later(delay, self.turn)


def _epoll_with_wakeup() -> tuple[select.epoll, int]:
    """An epoll set with a wakeup eventfd registered in it (written to cut a
    wait short); if a step fails (EMFILE, ENOMEM), neither fd is left open."""
    with contextlib.ExitStack() as undo:
        epoll = undo.enter_context(select.epoll())
        wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        undo.callback(os.close, wakeup)
        epoll.register(wakeup, select.EPOLLIN)
        undo.pop_all()
    return epoll, wakeup


class EventLoop:
    """An epoll set and a timer heap, run by one thread or by asyncio.

    Most code uses :func:`irqbypass.event_loop` (the process's loop). A loop
    of your own runs its thread from the first registration, or inside asyncio
    after :meth:`attach`; :meth:`close` releases it. This class registers and
    runs; a :class:`LoopHandle` takes itself off; the faults, the watchdog and
    asyncio are parts of their own.
    """

    def __init__(
        self, *, name: str = "irqbypass-loop", watchdog_seconds: float = WATCHDOG_SECONDS
    ) -> None:
        if not (isinstance(watchdog_seconds, (int, float)) and watchdog_seconds > 0) or (
            isinstance(watchdog_seconds, int) and watchdog_seconds > _FLOAT_MAX
        ):
            raise InvalidEndpointError(
                f"EventLoop watchdog_seconds={show_value(watchdog_seconds)}: use seconds > 0"
            )
        self.name = name
        self.watchdog_seconds = float(watchdog_seconds)
        #: guards the readers, the timers and the watchdog's record of the running callback
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        #: the epoll set: one reader per fd, and the wakeup eventfd that cuts a wait short
        self._epoll, self._wakeup = _epoll_with_wakeup()
        self._readers: dict[int, LoopHandle] = {}
        #: the timers by deadline, a heap of (when, sequence, handle). A cancelled
        #: timer stays in it until it is due or the cancelled outnumber the live
        self._timers: list[tuple[float, int, LoopHandle]] = []
        self._timer_sequence = itertools.count()
        self._timers_cancelled = 0
        #: the latest faults, oldest first (at most FAULTS_KEPT)
        self.faults: collections.deque[LoopFault] = collections.deque(maxlen=FAULTS_KEPT)
        self._faults = _Faults(self.faults)
        self._watchdog = _Watchdog(self._lock, self.watchdog_seconds, self._faults)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._watchdog_thread: threading.Thread | None = None
        self._asyncio: _Asyncio | None = None
        #: the thread running callbacks now
        self._loop_thread: int | None = None
        self._cancel_waiters = 0
        #: callbacks run, in all (readers and timers)
        self.callbacks_run = 0

    @property
    def fault_count(self) -> int:
        """How many faults in all."""
        return self._faults.count

    # -- registering ---------------------------------------------------------

    def add_reader(self, source: int | _FileLike, callback: Callback, *, owner: str) -> LoopHandle:
        """Call ``callback()`` on the loop whenever ``source`` (an fd, or an
        object with ``fileno()``) is readable, until cancelled. One reader per
        fd. An :class:`~irqbypass.Eventfd` is borrowed while watched."""
        handle = LoopHandle(self, callback, owner)
        #: the reader the fd number had, if that fd was closed and its number reused
        stale: LoopHandle | None = None
        stale_borrowed: Eventfd | None = None
        try:
            if isinstance(source, Eventfd):
                handle.borrowed = source  # before the borrow: the undo below finds it
                handle.fd = source.keep_open(handle._source_closed)
            else:
                handle.fd = _fileno(source, owner)
            with self._lock:
                if self._closed:
                    raise self._closed_error()
                try:  # the file, which tells a number closed and reused behind our back
                    info = os.fstat(handle.fd)
                except OSError as exc:
                    raise _unwatchable(handle, exc) from exc
                handle.identity = info.st_dev, info.st_ino
                stale = self._readers.get(handle.fd)
                if stale is not None and stale.identity == handle.identity:
                    raise InvalidEndpointError(
                        f"{owner}: fd {handle.fd} already has a reader on the loop "
                        f"({stale.owner}); one reader per fd"
                    )
                if stale is not None:
                    self._faults.reused(stale)
                    stale_borrowed = stale._unwatch()
                try:
                    self._epoll.register(handle.fd, select.EPOLLIN)
                except OSError as exc:
                    raise _unwatchable(handle, exc, by_epoll=True) from exc
                self._readers[handle.fd] = handle
        except BaseException:
            handle.state = "cancelled"
            if handle.borrowed is not None:
                handle.borrowed.let_go(handle._source_closed)
                handle.borrowed = None
            raise
        finally:
            if stale is not None and stale_borrowed is not None:
                stale_borrowed.let_go(stale._source_closed)
        self._ensure_running(handle)
        return handle

    def call_later(self, delay: float, callback: Callback, *, owner: str) -> LoopHandle:
        """Call ``callback()`` once, ``delay`` seconds from now, on the loop."""
        return self._add_timer(LoopHandle(self, callback, owner, ("delay", delay)), delay)

    def call_every(
        self, period: float, callback: Callback, *, owner: str, delay: float = 0.0
    ) -> LoopHandle:
        """Call ``callback()`` every ``period`` seconds (0: on every turn of the
        loop), the first time ``delay`` seconds from now, until cancelled. Late
        turns are made up (ticks keep the schedule, not the gaps)."""
        handle = LoopHandle(self, callback, owner, ("period", period), ("delay", delay))
        handle.period = float(period)
        return self._add_timer(handle, delay)

    def _add_timer(self, handle: LoopHandle, delay: float) -> LoopHandle:
        handle.when = time.monotonic() + delay
        with self._lock:
            if self._closed:
                raise self._closed_error()
            earliest = not self._timers or handle.when < self._timers[0][0]
            heapq.heappush(self._timers, (handle.when, next(self._timer_sequence), handle))
        # a thread waiting in epoll must learn of the earlier deadline; under
        # asyncio, so must asyncio's timer (the wakeup makes our epoll fd readable)
        if earliest and (threading.get_ident() != self._loop_thread or self._asyncio is not None):
            with contextlib.suppress(OSError):  # closed, or full (it is awake then)
                os.write(self._wakeup, _WAKE)
        self._ensure_running(handle)
        return handle

    def _closed_error(self) -> LoopClosedError:
        return LoopClosedError(
            f"event loop {self.name!r} is closed; use irqbypass.event_loop() for the process's loop"
        )

    # -- running ---------------------------------------------------------------

    def start(self) -> None:
        """Start the loop's thread now (the first registration does it anyway),
        unless it runs already or under asyncio."""
        if self._closed:
            raise self._closed_error()
        self._ensure_running()

    def _ensure_running(self, asking: LoopHandle | None = None) -> None:
        if self._thread is None and self._asyncio is None and not self._closed:
            _start(self, asking)

    def run_once(self, timeout: float = 0.0) -> None:
        """Wait up to ``timeout`` seconds for readers, then run what is ready and every due timer
        (asyncio does, once attached; not beside the loop's own thread); closed, it does nothing."""
        self._loop_thread = threading.get_ident()
        if self._closed:
            return
        try:
            ready = self._epoll.poll(timeout)
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.EINVAL) and self._closed:
                return
            raise
        for fd, _mask in ready:
            if fd == self._wakeup:  # it only cut the wait short
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup, 8)
                continue
            reader = self._readers.get(fd)
            if reader is not None:
                self._call(reader)
        now = time.monotonic()
        due_timers: list[LoopHandle] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if timer.state == "active":
                    due_timers.append(timer)
                else:
                    self._timers_cancelled = max(0, self._timers_cancelled - 1)
        for index, timer in enumerate(due_timers):
            if timer.state == "active":
                try:
                    self._call(timer, timer=True)
                except BaseException:  # a Ctrl-C for asyncio's caller: the rest stay due
                    _requeue(self, due_timers[index + 1 :])
                    raise

    def _run_thread(self) -> None:
        """The loop's own thread: turns until closed."""
        while not self._closed:
            wait = self._next_wait()
            self.run_once(_MAX_WAIT if wait is None else wait)

    def _next_wait(self) -> float | None:
        """Seconds to the earliest timer (at most a minute: the wait is cut), or None: no timer."""
        with self._lock:
            due = self._timers[0][0] if self._timers else None
        return None if due is None else min(_MAX_WAIT, max(0.0, due - time.monotonic()))

    def _call(self, handle: LoopHandle, *, timer: bool = False) -> None:
        """Run one callback. A timer's next turn is scheduled (or a one-shot
        marked done) under the lock that ends the call: one acquisition, and no
        moment at which it is neither running nor in the heap."""
        watchdog = self._watchdog
        with self._lock:
            if handle.state != "active":
                return
            watchdog.current, watchdog.since, watchdog.reported = handle, time.monotonic(), False
        try:
            handle.callback()
        except BaseException as exc:  # a loop thread has no Ctrl-C: anything raised is a fault
            if _for_the_vmm(exc):
                raise
            self._faults.raised(handle, exc)
            handle._remove("failed")
        finally:
            elapsed = time.monotonic() - watchdog.since
            with self._lock:
                reported, watchdog.current = watchdog.reported, None
                if timer and handle.state == "active" and not self._closed:
                    if handle.period is None:
                        handle.state = "done"
                    else:
                        handle.when += handle.period
                        entry = (handle.when, next(self._timer_sequence), handle)
                        heapq.heappush(self._timers, entry)
                if self._cancel_waiters:
                    self._idle.notify_all()
            self.callbacks_run += 1
            if elapsed >= self.watchdog_seconds:
                self._faults.blocked(handle, elapsed, returned=True, reported=reported)

    # -- asyncio ---------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run this loop inside asyncio's ``loop`` instead of a thread of its
        own: its epoll fd becomes one asyncio reader, its next timer one
        asyncio timer. Call from ``loop``'s thread before anything registers
        (a loop whose thread already runs cannot move); :meth:`detach` undoes it."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._asyncio = _Asyncio.take(self, loop)
        self._loop_thread = threading.get_ident()
        self._asyncio.start()

    def detach(self) -> None:
        """Stop running inside asyncio (from its thread); a later registration
        starts the loop's own thread."""
        driver, self._asyncio = self._asyncio, None
        if driver is None:
            return
        driver.stop()
        self._loop_thread = None
        if self.handles():  # what is still registered goes on, on the loop's own thread
            self._ensure_running()

    # -- looking and closing -----------------------------------------------------

    @property
    def running_thread(self) -> threading.Thread | None:
        """The loop's own thread, or None (not started yet, or under asyncio)."""
        return self._thread

    def handles(self, owner: str | None = None) -> list[LoopHandle]:
        """The active readers and timers (of ``owner``, if given)."""
        with self._lock:
            every = [*self._readers.values(), *(entry[2] for entry in self._timers)]
        return [h for h in every if h.state == "active" and owner in (None, h.owner)]

    def close(self) -> None:
        """Stop the loop and release its fds (idempotent). Timers and readers
        still registered are cancelled, never run; a callback running now
        finishes first (unless this is called from one). A close cut short (a
        Ctrl-C in that wait) is finished by the next."""
        with self._lock:
            if self._epoll.closed:  # released: nothing left to do
                return
            self._closed = True
            pending = [*self._readers.values(), *(entry[2] for entry in self._timers)]
            with contextlib.suppress(OSError):  # the loop's thread ends its wait
                os.write(self._wakeup, _WAKE)  # (under the lock: not released meanwhile)
        self._watchdog.stopped.set()
        for thread in (self._thread, self._watchdog_thread):
            if thread is not None and thread.ident != threading.get_ident():
                thread.join()
        for handle in pending:
            handle.cancel()
        driver, self._asyncio = self._asyncio, None
        if driver is None:
            _release(self)
        else:  # out of asyncio's watch first, then released
            driver.stop(functools.partial(_release, self))

    @property
    def closed(self) -> bool:
        """:meth:`close` was called: the loop takes no new handle."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._readers)} readers"
        return f"<EventLoop {self.name!r} {state}>"


def _start(loop: EventLoop, asking: LoopHandle | None) -> None:
    """Start the loop's threads, the watchdog's first: a loop thread that
    cannot start leaves none, and the next registration tries again. One that
    cannot (the process at its thread limit) takes ``asking``, the
    registration that needed it, off again: its caller is told it failed.
    None starts for an ``asking`` no longer active: registered from another
    thread under asyncio, it can have run, and the loop been detached, before
    its registration got here (each active handle's own registration, or the
    detach, starts what it needs)."""
    try:
        with loop._lock:
            if loop._thread is not None or loop._asyncio is not None or loop._closed:
                return
            if asking is not None and asking.state != "active":
                return
            if loop._watchdog_thread is None:
                loop._watchdog_thread = _start_thread(loop._watchdog.run, f"{loop.name}-watchdog")
            loop._thread = _start_thread(loop._run_thread, loop.name)
    except RuntimeError as exc:  # Thread.start's "can't start new thread"
        if asking is not None:
            asking._remove("cancelled")
        raise IrqBypassError(
            f"event loop {loop.name!r} cannot start its thread ({show_exception(exc)}): the "
            "process is at its limit of threads (ulimit -u, or its cgroup's pids.max); raise "
            "it, or start fewer threads",
            errno=errno.EAGAIN,
        ) from exc


def _for_the_vmm(exc: BaseException) -> bool:
    """Whether what a callback raised is an interrupt for the VMM, not a fault:
    a Ctrl-C (or SystemExit) on the main thread, where asyncio runs the loop.
    The loop's own threads block signals: there it is the callback's own."""
    return not isinstance(exc, Exception) and threading.current_thread() is threading.main_thread()


def _requeue(loop: EventLoop, timers: list[LoopHandle]) -> None:
    """Timers taken as due but not run (an interrupt came first): due still."""
    with loop._lock:
        for timer in timers:
            heapq.heappush(loop._timers, (timer.when, next(loop._timer_sequence), timer))


def _release(loop: EventLoop) -> None:
    """The end of a close: the loop's fds closed, its readers and timers forgotten."""
    with loop._lock:
        if loop._epoll.closed:  # another close did it
            return
        loop._timers.clear()
        loop._readers.clear()
        loop._epoll.close()
        os.close(loop._wakeup)


def _name(callback: Callback) -> str:
    """How a fault or watchdog line names a callback (a partial by its function)."""
    callback = getattr(callback, "func", callback)
    name = getattr(callback, "__qualname__", None) or getattr(callback, "__name__", None)
    return name if isinstance(name, str) else type(callback).__name__


def _fileno(source: object, owner: str) -> int:
    fd = source.fileno() if hasattr(source, "fileno") else source
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise InvalidEndpointError(
            f"{owner}: a loop reader needs an fd or an object with fileno(), not "
            f"{show_value(source)}"
        )
    return fd


def _unwatchable(
    handle: LoopHandle, exc: OSError, *, by_epoll: bool = False
) -> InvalidEndpointError:
    """Why the loop cannot watch ``handle``'s fd (fstat, or epoll, refused it)."""
    hint = (
        ": epoll takes pipes, sockets, eventfds and devices, not a regular file or a directory"
        if by_epoll and exc.errno == errno.EPERM
        else ""
    )
    return InvalidEndpointError(
        f"{handle.owner}: fd {handle.fd} cannot be watched: {exc.strerror} "
        f"(errno {exc.errno}){hint}",
        errno=exc.errno,
    )


def _start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread with every asynchronous signal blocked, from its first
    instruction (set in the creator around start): signals go to the main thread."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    blocked = set(signal.valid_signals()) - _SYNCHRONOUS
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


_default: EventLoop | None = None
_default_lock = threading.Lock()


def on_loop_thread(loop: EventLoop | None = None) -> bool:
    """Whether the calling thread runs ``loop``'s turns (the process's loop by
    default): its own thread, or the thread of the asyncio loop it is attached
    to. Code there must never wait on another process: every endpoint of the
    process waits on that thread."""
    return threading.get_ident() == (loop or event_loop())._loop_thread


def event_loop() -> EventLoop:
    """The process's event loop, created on first use (its thread starts with
    the first registration, unless it was attached to asyncio first)."""
    global _default
    loop = _default
    if loop is None or loop._closed:
        with _default_lock:
            if _default is None or _default._closed:
                _default = EventLoop()
            loop = _default
    return loop


def _forked() -> None:
    """A fork()ed child has no loop thread, and its epoll set is the parent's
    (shared across fork): drop ours unused and let the child make its own.
    The old loop is closed for good here (its fds once, the epoll set through
    its object): freed or closed later, it must not close the numbers again,
    by then the child's own files. What a thread of the parent was doing with
    it is over in the child: the lock it held is free, the callback it ran is
    not running (the child's cancel and token close would wait on them)."""
    global _default, _default_lock
    loop, _default = _default, None
    _default_lock = threading.Lock()
    if loop is not None:
        loop._closed = True  # no handle, no close(), no unregister: the child is alone here
        loop._lock = loop._watchdog.lock = threading.Lock()
        loop._idle = threading.Condition(loop._lock)
        loop._watchdog.current = None
        loop._epoll.close()
        with contextlib.suppress(OSError):
            os.close(loop._wakeup)


os.register_at_fork(after_in_child=_forked)
