"""Signal safety: a signal that lands in irqbypass's own bookkeeping waits for it.

CPython runs a Python-level signal handler (``KeyboardInterrupt`` for SIGINT)
in the main thread between two bytecodes, wherever that thread is. Landing
between "producer stopped" and "producer started", or between "paired" and
"recorded as registered", it would leave an endpoint quiesced forever or a
pairing the manager does not know of. So, as trio protects its own code from
``KeyboardInterrupt`` (``trio/_core/_ki.py``), code is marked where it is
defined, and the mark is read only when a signal arrives:

- :func:`signal_safe` marks a function as a *section*: a signal that arrives
  while it runs, or while anything it calls runs (hashing a token, formatting
  an error), is deferred;
- :func:`callout` ``(fn, *args)`` is the one way a section calls code that may
  hang (a plugin's callback): inside it the signal is passed on as usual, so
  one Ctrl-C ends the hang (the section catches the interrupt, finishes its
  sequence, and re-raises it);
- :func:`interruptible` ``(fn, *args)`` is the one way a section waits for
  another process: the same as :func:`callout`, but a signal deferred earlier
  in the section is delivered first (waiting with a Ctrl-C pending would defer
  it behind the peer); the section leaves its state consistent if it raises;
- ``with`` :class:`hold` ``(lock):`` takes a lock inside a section: a Ctrl-C
  ends the wait for a contended lock, and never leaves the lock taken;
- ``with`` :func:`delivering_deferred_signals` ``():`` around the call of a
  section runs, as the block ends, the handlers of the signals that waited;
- :func:`currently_signal_safe` says whether a signal would wait here (for
  assertions);
- :func:`uninterrupted` (``irqbypass.plugin.uninterrupted``) is the template a
  plugin uses for a method that, once begun, runs to its end: a section whose
  deferred signals act as it returns. The plugin's other templates mark, where
  they are defined, what such a method reaches: :func:`waits_on_peer` (a wait on
  another process: an :func:`interruptible` call), :func:`calls_partner` (another
  endpoint's code: a :func:`callout`) and :func:`holding` (an uninterrupted
  method run with a lock taken through :class:`hold`). So a plugin never needs
  this machinery itself.

For the manager's fast path, where a frame per callback would cost more
than the work, :func:`calling_out` marks a section whose every call is a
call-out (it calls callbacks and nothing else).

The innermost marked frame decides: a section called from inside a
:func:`callout` is safe again, a :func:`callout` inside a section passes.
Nothing else passes a signal in a section: not a ``with`` line, not a call.

:func:`guard_signals` puts the guard in front of the current Python-level
handlers of SIGINT and SIGTERM. The :class:`~irqbypass.Manager` installs it
when SIGINT still has Python's default handler, and only while some manager
that installed it lives (:func:`hold_interrupt_guard`): the last one to go puts
Python's handler back, so that ``asyncio.run`` (which installs its own graceful
handler only over Python's default one) and the rest of the process find what
they expect. ``Manager(guard_sigint=False)`` touches no handler at all. A VMM
that installs handlers of its own calls :func:`guard_signals` afterwards to have
them guarded too (that guard stays: it is the VMM's). The guard costs nothing
on the fast path: it walks the interrupted stack only when a signal arrives.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Protocol, TypeVar, cast

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")
_Handler = Callable[[int, "FrameType | None"], Any]

#: the marks: a signal landing in a frame of the code waits (a section), waits
#: in its own lines but passes in what it calls (:func:`calling_out`), or passes
#: (:func:`interruptible`)
_SECTION, _CALLING_OUT, _PASSES = "section", "calling out", "passes"
#: marked code object -> its mark; read only when a signal arrives
_SAFE: dict[CodeType, str] = {}

#: Signals that arrived in a safe section, by number, in arrival order. Standard
#: signals do not queue (a second SIGINT while one is pending is that same
#: SIGINT), so this holds at most one entry per signal number: bounded.
#: Private state: what waits is delivered by :func:`delivering_deferred_signals`.
_DEFERRED: dict[int, FrameType | None] = {}
#: how many signals were deferred so far (a wait tells those that arrived during it)
_ARRIVALS = [0]


def signal_safe(func: _F) -> _F:
    """Mark ``func`` as a section in which signals wait (see the module doc).

    Returns ``func`` itself: no wrapper, nothing added to a call.
    """
    _SAFE[func.__code__] = _SECTION
    return func


def uninterrupted(method: _F) -> _F:
    """Once begun, ``method`` runs to its end: a close that must finish, a file
    that must be recorded with what names it. The template a plugin uses for
    them instead of managing sections itself.

    A Ctrl-C that lands in it, or in what it calls, acts as it returns (its
    caller still sees the exception: an open that catches it undoes what was
    done); inside a section it waits for that section's end instead. Within
    it, another object's code (a partner endpoint's) runs through
    :func:`callout`, a wait on another process through :func:`interruptible`,
    and a lock is taken with :class:`hold`.
    """
    section = signal_safe(method)

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return section(*args, **kwargs)
        finally:
            if _DEFERRED and not in_safe_section(sys._getframe(1)):
                deliver_deferred_signals()

    return cast("_F", run)


def calling_out(func: _F) -> _F:
    """Mark ``func`` as a section whose every call is a call-out: a signal
    passes inside whatever it calls, and waits on its own lines.

    :func:`callout` is one (its one call: ``fn``). So is a sequence of
    plugin callbacks on a fast path, where a :func:`callout` frame per
    callback would cost more than the work (the manager's connect and
    disconnect: 12 frames per pair's life, measured when the sequence was
    written (18e2abf) at 43,600 callgrind instructions a pair's life against
    36,000, 2.5x the floor of ``benchmarks/registration.py``). Such a function calls
    nothing but callbacks: anything else it needs is computed before, in its
    caller (``tests/reliability/test_manager_signals.py`` counts its calls).
    """
    _SAFE[func.__code__] = _CALLING_OUT
    return func


def deliver_deferred_signals() -> None:
    """Run, now, the handler of each deferred signal, in arrival order.

    Main thread only (elsewhere it returns: the main thread delivers at the
    end of its own section). The first handler that raises ends the call; any
    other deferred signal stays deferred for the next call.
    """
    if not _DEFERRED or threading.current_thread() is not threading.main_thread():
        return  # nothing deferred (the common case, first: no thread lookup)
    while _DEFERRED:
        signum = next(iter(_DEFERRED))
        frame = _DEFERRED.pop(signum)
        handler = signal.getsignal(signum)
        if isinstance(handler, _Guard):
            handler = handler.previous
        if callable(handler):
            handler(signum, frame)


@calling_out
def callout(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, with signals passing even inside a signal-safe section.

    How a section calls code that is not its own (a plugin's callback): a
    Ctrl-C that lands while ``fn`` runs is raised there, so a callback that
    hangs is ended by one Ctrl-C. The section catches what this raises and
    leaves its state consistent. A signal deferred earlier stays deferred,
    and so does one landing here rather than in ``fn``: just after ``fn``
    returned, it would take a finished call for an interrupted one (an open
    done, taken as not done, leaks). A C function that blocks has no frame
    of its own to interrupt: wait through :func:`interruptible`.
    """
    return fn(*args)


def interruptible(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, with signals passing even inside a signal-safe section.

    Every wait on another process (a reply, a drain, a child's exit) goes
    through this, so Ctrl-C acts at once whatever the peer does. A signal
    deferred earlier in the enclosing section is delivered first: waiting
    with a Ctrl-C pending would defer it behind the peer. The caller must
    leave its state consistent if this raises.
    """
    if _DEFERRED:
        deliver_deferred_signals()
    return fn(*args)


# every line of it waits: signals pass (a wait interrupted just as it ended
# loses only a reply its caller then treats as never come)
_SAFE[interruptible.__code__] = _PASSES
# A finalizer (a Manager's, giving its guard lease back) runs wherever the
# garbage collector happens to run, and what it raises is printed and dropped
# ("Exception ignored in"): a signal landing in one waits for the next delivery
# instead of being lost: a section, every line of it waits.
_SAFE[weakref.finalize.__call__.__code__] = _SECTION

#: how often a section waiting for a contended lock looks for a deferred signal
#: (well within the 0.5 s in which Ctrl-C must act)
HOLD_WAKE_SECONDS = 0.05


class _Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class hold:  # lower case: it reads as a call, ``with hold(lock):``
    """``with hold(lock):`` takes ``lock`` inside a signal-safe section.

    A plain ``with lock:`` there would wait deaf to Ctrl-C while another
    thread holds the lock. Here a free lock is taken at once; a contended one
    is waited for in steps of :data:`HOLD_WAKE_SECONDS`, and a signal that
    arrived during the wait is delivered between two steps, before the lock is
    ours (so it is never left taken); one deferred before the wait began still
    waits for the section's end (a close must not be cut by a Ctrl-C that
    landed before it had to wait). Once taken, the block is part of the section.
    """

    __slots__ = ("_lock",)

    def __init__(self, lock: _Lock) -> None:
        self._lock = lock

    @signal_safe
    def __enter__(self) -> None:
        lock = self._lock
        if lock.acquire(False):
            return
        arrived = _ARRIVALS[0]  # a signal deferred before the wait waits for the section
        while not lock.acquire(True, HOLD_WAKE_SECONDS):
            if _ARRIVALS[0] != arrived:
                deliver_deferred_signals()

    @signal_safe
    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def waits_on_peer(func: _F) -> _F:
    """A plugin's template for a function that waits on another process (a
    reply, a drain, a child's exit): each call is an :func:`interruptible` one.

    Ctrl-C acts inside it at once, even when an :func:`uninterrupted` method
    calls it, whatever the peer does; a Ctrl-C that waited in that method is
    delivered as it begins. What it raises, its caller leaves consistent.
    """

    def waiting(*args: Any, **kwargs: Any) -> Any:
        return interruptible(functools.partial(func, *args, **kwargs))

    _SAFE[waiting.__code__] = _PASSES  # as interruptible's: every line of it waits
    return cast("_F", functools.wraps(func)(waiting))


def calls_partner(method: _F) -> _F:
    """A plugin's template for a method that runs another endpoint's code (its
    partner's, a plugin it does not know): each call is a :func:`callout`.

    Called from an :func:`uninterrupted` method, a Ctrl-C that lands in it is
    raised there, so one Ctrl-C ends a partner that hangs (the caller, which
    runs to its end, re-raises it); one landing just as it returned waits for
    the caller's end, as in any :func:`callout`. Called outside a section, such
    a signal acts as it returns.
    """

    @functools.wraps(method)
    def calling(*args: Any, **kwargs: Any) -> Any:
        try:
            return callout(functools.partial(method, *args, **kwargs))
        finally:
            if _DEFERRED and not in_safe_section(sys._getframe(1)):
                deliver_deferred_signals()

    return cast("_F", calling)


def holding(lock_of: Callable[[Any], _Lock]) -> Callable[[_F], _F]:
    """A plugin's template for an :func:`uninterrupted` method that runs with a
    lock held: ``@holding(lambda self: self._lock)``.

    The lock is taken through :class:`hold`: a Ctrl-C still ends the wait for a
    lock another thread holds (a plain ``with lock:`` in a section would wait
    deaf to it), and the lock is never left taken.
    """

    def template(method: _F) -> _F:
        @functools.wraps(method)
        def locked(self: object, *args: Any, **kwargs: Any) -> Any:
            with hold(lock_of(self)):
                return method(self, *args, **kwargs)

        return uninterrupted(cast("_F", locked))

    return template


class delivering_deferred_signals:  # lower case: it reads as a call
    """``with delivering_deferred_signals():`` around the call of a section:
    as the block ends, in the main thread, the handler of each signal that
    waited runs, in arrival order (the first that raises ends the block; what
    it raises replaces what the block raised, if anything)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if _DEFERRED and not in_safe_section(sys._getframe(1)):
            deliver_deferred_signals()  # (inside a section, the section's caller delivers)


def currently_signal_safe() -> bool:
    """Whether a signal arriving here, in the caller, would wait: inside a
    section and not in a :func:`callout` or :func:`interruptible` within it."""
    return in_safe_section(sys._getframe(1))


@dataclass(frozen=True, slots=True, eq=False)
class _Guard:
    """The installed handler: defer inside a safe section, else pass the signal on.

    A value: the signal, and the handler it stands in front of (its repr
    names both); compared by identity, as any handler is."""

    signum: int
    previous: _Handler

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        if in_safe_section(frame):
            _DEFERRED[signum] = frame
            _ARRIVALS[0] += 1
            return None
        return self.previous(signum, frame)


def guard_signals(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> list[int]:
    """Put the guard in front of each signal's current Python-level handler.

    Idempotent. Only the main thread can install handlers: elsewhere this does
    nothing. A signal whose handler is not a Python callable (SIG_DFL, SIG_IGN)
    is left alone: no Python code runs for it that could be cut. Returns the
    signal numbers guarded now. A guard the managers' leases put there is the
    program's from now on: no manager going takes it away.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    guarded = []
    for signum in signums:
        current = signal.getsignal(signum)
        if isinstance(current, _Guard):
            with _LEASES_LOCK:
                if current in _INSTALLED:
                    _INSTALLED.clear()
            guarded.append(signum)
        elif callable(current):
            signal.signal(signum, _Guard(signum, current))
            guarded.append(signum)
    return guarded


#: the leases of the managers that want SIGINT guarded (see hold_interrupt_guard)
_LEASES: set[object] = set()
#: the guard those leases installed in front of Python's default SIGINT handler
_INSTALLED: list[_Guard] = []
_LEASES_LOCK = threading.Lock()


def hold_interrupt_guard() -> object:
    """A lease on the SIGINT guard (what a Manager takes when created): the guard
    is put in front of SIGINT's handler if that is still Python's own
    (``default_int_handler``), in the main thread. A handler of the program's
    own is left alone (the program calls :func:`guard_signals` for it). Give the
    lease back with :func:`release_interrupt_guard`."""
    lease = object()
    with _LEASES_LOCK:
        _LEASES.add(lease)
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            guard = _Guard(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGINT, guard)
            _INSTALLED[:] = [guard]
    return lease


def release_interrupt_guard(lease: object) -> None:
    """Give a lease back; the last one restores Python's default SIGINT handler
    if the guard the leases installed is still the handler (one the program set
    since is left alone). Called from a finalizer too, so it never blocks: in
    another thread, or while a lease is being taken, the guard stays (it only
    passes signals on) until the next lease is given back in the main thread."""
    _LEASES.discard(lease)
    if _LEASES or not _LEASES_LOCK.acquire(blocking=False):
        return
    try:
        if (
            not _LEASES
            and _INSTALLED
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is _INSTALLED[0]
        ):
            signal.signal(signal.SIGINT, _INSTALLED[0].previous)
            _INSTALLED.clear()
    finally:
        _LEASES_LOCK.release()


def in_safe_section(frame: FrameType | None) -> bool:
    """Whether a signal interrupting ``frame`` must wait.

    Walks outwards to the innermost marked frame: the signal waits in a
    section, and in a :func:`calling_out` section's own frame (not in what
    it calls); it passes in an :func:`interruptible` wait, or with no mark.
    """
    interrupted = frame
    while frame is not None:
        mark = _SAFE.get(frame.f_code)
        if mark is not None:
            if mark is _CALLING_OUT:
                return frame is interrupted  # in its own lines, not in a callback
            return mark is _SECTION
        frame = frame.f_back
    return False
