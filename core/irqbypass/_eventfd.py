"""An owned eventfd whose identity as a token is the kernel object.

In today's kernels the bypass token is the eventfd that the device signals and
the hypervisor listens to. Two file descriptors of one eventfd (``dup``'d, or
received from another process over a socket) are the same token, so
:class:`Eventfd` compares and hashes by the kernel's ``eventfd-id``, read from
``/proc/self/fdinfo/<fd>`` (Linux 6.2 and later). On a kernel without that field
the identity falls back to the file descriptor number: each ``Eventfd`` then
pairs only with wrappers of the same fd, not with its duplicates.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import EventfdClosedError, InvalidEndpointError
from ._options import show_value as show

_COUNTER = struct.Struct("=Q")
_T = TypeVar("_T")
#: how soon a waiting :meth:`Eventfd.read` notices that the Eventfd was closed
CLOSE_NOTICE_SECONDS = 0.1
_MAX_INITVAL = 2**32 - 1  # eventfd(2) takes an unsigned int
_MAX_COUNT = 2**64 - 2  # the counter's maximum; a write of 2**64 - 1 is EINVAL
_FOREVER = 10**9  # seconds: a longer read timeout waits forever
#: the types of a timeout the read's fast path takes as they are (not bool)
_SECONDS = (int, float)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: an eventfd's fdinfo is about 120 bytes; another file's fields past this are not needed
_FDINFO_BYTES = 4096
#: where the kernel shows an fd's fields, one a line
_FDINFO = "/proc/self/fdinfo/{}"
#: the fields read, each as it starts a line of the fdinfo
_EVENTFD_ID = b"\neventfd-id:"
_EVENTFD_COUNT = b"\neventfd-count:"


def _fdinfo_field(fd: int, tag: bytes) -> str | None:
    """The value of the field ``tag`` (``b"\\nname:"``) in ``/proc/self/fdinfo/<fd>``,
    or None (no such field, or no fdinfo to read).

    One open, one read and one close, without a Python file object (every
    eventfd made reads it once for its identity: a file object cost 16 us
    against 10), and the field found by one search rather than by splitting
    every line into a dict (0.4 us against 1.4)."""
    try:
        info = os.open(_FDINFO.format(fd), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = b"\n" + os.read(info, _FDINFO_BYTES)  # each field then follows a newline
    except OSError:
        return None
    finally:
        os.close(info)
    at = data.find(tag)
    if at < 0:
        return None
    start = at + len(tag)
    end = data.find(b"\n", start)
    return data[start : end if end >= 0 else len(data)].strip().decode("ascii", "replace")


class Eventfd:
    """An eventfd this object owns (or borrows, see :meth:`from_fd`).

    Use it as a context manager, or call :meth:`close`. ``write`` adds to the
    counter; ``read`` takes the whole counter (the number of writes since the
    last read for writes of 1), waiting up to ``timeout`` seconds.

    Closing is safe while another thread reads or writes: the fd number stays
    taken until that call has left it (so it can never read or write an unrelated
    file that reused the number), and a waiting :meth:`read` notices the close
    within :data:`CLOSE_NOTICE_SECONDS` and raises :class:`EventfdClosedError`.
    """

    __slots__ = (
        "__weakref__",
        "_borrowers",
        "_close_later",
        "_fd",
        "_guard",
        "_identity",
        "_nonblocking",
        "_owned",
        "_users",
    )
    _fd: int
    _identity: tuple[str, int]

    def __init__(self, initval: int = 0, *, semaphore: bool = False) -> None:
        if not (type(initval) is int or _is_int(initval)) or not 0 <= initval <= _MAX_INITVAL:
            raise InvalidEndpointError(
                f"Eventfd initval {show(initval)} is not an int from 0 to {_MAX_INITVAL}"
            )
        if not isinstance(semaphore, bool):
            raise InvalidEndpointError(f"Eventfd semaphore={show(semaphore)}: use True or False")
        flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
        if semaphore:
            flags |= os.EFD_SEMAPHORE
        # made non-blocking here; an fd from elsewhere may block
        self._adopt(os.eventfd(initval, flags), owned=True, nonblocking=True)

    def _adopt(self, fd: int, *, owned: bool, nonblocking: bool = False) -> None:
        """Take ``fd`` (an eventfd) as this object's: its state, and its
        identity as a token, the kernel's eventfd-id (else the fd number)."""
        self._fd = fd
        self._owned = owned
        self._nonblocking = nonblocking
        self._identity = ("fd", fd)
        self._guard = threading.Lock()
        #: calls using the fd right now; close() leaves it open until they are done
        self._users = 0
        self._close_later = -1
        #: who borrowed the fd for longer than a call (the event loop's readers):
        #: each is called on close() and gives its borrow back
        self._borrowers: list[Callable[[], object]] = []
        _LIVE.add(self)
        kernel_id = _fdinfo_field(fd, _EVENTFD_ID)
        if kernel_id is not None and kernel_id.isdigit():
            self._identity = ("eventfd-id", int(kernel_id))

    @classmethod
    def from_fd(cls, fd: int, *, owned: bool = False) -> Eventfd:
        """Wrap an eventfd opened elsewhere (by the embedding VMM, say).

        With ``owned=False`` (the default) :meth:`close` leaves the fd open: the
        caller keeps owning it. The fd must be an eventfd; anything else is
        refused with EINVAL (EBADF for a closed fd).
        """
        return cls._wrap(_check_eventfd(fd, owned), owned=owned)

    @classmethod
    def _wrap(cls, fd: int, *, owned: bool) -> Eventfd:
        """An Eventfd around ``fd``, an eventfd already checked."""
        self = cls.__new__(cls)
        self._adopt(fd, owned=owned)
        return self

    @property
    def kernel_id(self) -> int | None:
        """The kernel's eventfd-id, or None where the kernel does not show it."""
        kind, value = self._identity
        return value if kind == "eventfd-id" else None

    @property
    def closed(self) -> bool:
        """The fd is closed (:meth:`close` ran): every I/O on it is refused."""
        return self._fd < 0

    @property
    def owned(self) -> bool:
        """:meth:`close` closes the fd: False for ``Eventfd.from_fd(fd)`` (the caller's fd)."""
        return self._owned

    def fileno(self) -> int:
        """The fd number; valid only until :meth:`close` (do not keep it)."""
        fd = self._fd
        if fd < 0:
            raise self._closed_error()
        return fd

    def _closed_error(self, during: str = "") -> EventfdClosedError:
        kind, value = self._identity
        return EventfdClosedError(
            f"I/O operation on a closed Eventfd ({kind} {value}){during}; "
            "close a token only after every endpoint using it is closed"
        )

    def _using(self, use: Callable[..., _T], *args: Any) -> _T:
        """``use(fd, *args)``, the fd borrowed for the length of the call:
        ``_users`` counts the calls inside, and close() leaves the number taken
        until the last is out. Between the increment and ``inside = True`` (and
        in the decrement) no call is made, so no signal handler can run there
        and the count is exact."""
        guard, inside = self._guard, False
        try:
            with guard:
                fd = self._fd
                if fd < 0:
                    raise self._closed_error()
                self._users += 1
                inside = True
            return use(fd, *args)
        finally:
            if inside:
                with guard:
                    self._users -= 1
                    later = self._close_later if self._users == 0 else -1
                    if later >= 0:
                        self._close_later = -1
                        os.close(later)

    def write(self, value: int = 1) -> None:
        """Add ``value`` to the counter: signal the interrupt ``value`` times."""
        if not (type(value) is int or _is_int(value)) or not 0 <= value <= _MAX_COUNT:
            raise InvalidEndpointError(
                f"Eventfd.write({show(value)}): the value must be an int from 0 to {_MAX_COUNT}"
            )
        if not self._nonblocking:  # a write that may wait: the fd borrowed meanwhile
            self._using(os.write, _COUNTER.pack(value))
            return
        with self._guard:  # the write cannot wait: done under the guard, in one section
            fd = self._fd
            if fd < 0:
                raise self._closed_error()
            os.write(fd, _COUNTER.pack(value))

    def read(self, timeout: float | None = None) -> int:
        """Take the counter, waiting up to ``timeout`` seconds (None: forever).

        Returns 0 when nothing arrived in time; raises
        :class:`EventfdClosedError` if the Eventfd is (or gets) closed.
        """
        if type(timeout) in _SECONDS and timeout == 0 and self._nonblocking:
            # the loop's readers: the read cannot wait, so (as a write) it is
            # done under the guard, in one section: a close waits for it
            with self._guard:
                fd = self._fd
                if fd < 0:
                    raise self._closed_error()
                try:
                    return _read_now(fd)  # never waits, whoever shares the fd
                except BlockingIOError:
                    return 0
        return self._using(_take_counter, self, _read_timeout(timeout))

    def dup(self) -> Eventfd:
        """A new owned fd for the same eventfd (the same token)."""
        return Eventfd._wrap(self._using(os.dup), owned=True)

    def keep_open(self, on_close: Callable[[], object]) -> int:
        """The fd number, kept open until :meth:`let_go`, for whatever is bound
        to it for longer than a call: the event loop watching it, or a kernel
        object that must be undone through it (KVM drops an irqfd only when the
        eventfd itself goes, which a copy in another process delays). A
        :meth:`close` meanwhile leaves the number taken and calls ``on_close()``,
        which is expected to undo that and let go. Raises EventfdClosedError
        once closed."""
        with self._guard:
            fd = self._fd
            if fd < 0:
                raise self._closed_error()
            self._users += 1
            self._borrowers.append(on_close)
            return fd

    def let_go(self, on_close: Callable[[], object]) -> None:
        """End the :meth:`keep_open` of ``on_close`` (idempotent); the last one
        out closes an fd that close() left open for it."""
        with self._guard:
            try:
                self._borrowers.remove(on_close)
            except ValueError:
                return  # let go already
            self._users -= 1
            later = self._close_later if self._users == 0 else -1
            if later >= 0:
                self._close_later = -1
                os.close(later)

    def close(self) -> None:
        """Close (idempotent). A call still using the fd keeps the number
        until it returns; a waiting read raises EventfdClosedError."""
        with self._guard:
            fd, self._fd = self._fd, -1
            if fd >= 0 and self._owned:
                if self._users:
                    self._close_later = fd
                else:
                    os.close(fd)
            borrowers = list(self._borrowers) if fd >= 0 else []
        for on_close in borrowers:  # outside the guard: each gives its borrow back
            on_close()

    def __enter__(self) -> Eventfd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        later = getattr(self, "_close_later", -1)
        if later >= 0:  # a call was interrupted before it could close it
            self._close_later = -1
            os.close(later)
        if getattr(self, "_fd", -1) >= 0 and getattr(self, "_owned", False):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()

    def __eq__(self, other: object) -> bool:
        """The same kernel eventfd. A closed Eventfd equals only itself: the
        kernel reuses eventfd-ids and fd numbers, so its identity may already
        name an unrelated new eventfd."""
        if self is other:
            return True
        if not isinstance(other, Eventfd):
            return NotImplemented
        if self._fd < 0 or other._fd < 0:
            return False
        return self._identity == other._identity

    def __hash__(self) -> int:
        # stable across close(), so a closed token can still be found (by
        # identity) and removed where it is a key
        return hash(self._identity)

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        kind, value = self._identity
        return f"<Eventfd {state} {kind}={value}>"


#: every Eventfd made, while it lives: what a fork()ed child must set free
_LIVE: weakref.WeakSet[Eventfd] = weakref.WeakSet()


def _forked() -> None:
    """In a fork()ed child only the thread that forked exists: a guard another
    thread of the parent held (the loop's, reading) is copied held, and the
    calls it was making never end; each Eventfd gets a free guard, and only its
    borrows (the loop's readers) still count as users."""
    for eventfd in list(_LIVE):
        eventfd._guard = threading.Lock()
        eventfd._users = len(eventfd._borrowers)


os.register_at_fork(after_in_child=_forked)


def _check_eventfd(fd: int, owned: bool) -> int:
    """``fd`` itself if it is an open eventfd (and ``owned`` a bool); else the
    EINVAL (EBADF) saying what is wrong, in that order."""
    if not _is_int(fd) or fd < 0:
        raise InvalidEndpointError(
            f"fd {show(fd)} is not a file descriptor; pass the int of an open eventfd"
        )
    if not isinstance(owned, bool):
        raise InvalidEndpointError(f"Eventfd.from_fd owned={show(owned)}: use True or False")
    try:
        os.fstat(fd)
    except OSError as exc:
        raise InvalidEndpointError(
            f"fd {fd} is not open ({exc.strerror}); pass an open eventfd", errno=errno.EBADF
        ) from exc
    except OverflowError as exc:
        raise InvalidEndpointError(
            f"fd {show(fd)} is not a file descriptor; pass the int of an open eventfd"
        ) from exc
    if _fdinfo_field(fd, _EVENTFD_COUNT) is None:
        raise InvalidEndpointError(
            f"fd {fd} is not an eventfd; create one with os.eventfd() or irqbypass.Eventfd()"
        )
    return fd


def _read_timeout(timeout: float | None) -> float | None:
    """A read's ``timeout`` checked: seconds, 0 for a negative one, None
    (forever) for one beyond what a clock can add."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidEndpointError(
            f"Eventfd.read timeout={show(timeout)}: use seconds (a number) or None"
        )
    if timeout != timeout:  # NaN (math.isnan takes no int a float cannot hold)
        raise InvalidEndpointError("Eventfd.read timeout=nan: use seconds or None")
    if timeout > _FOREVER:  # inf, or an int beyond any clock
        return None
    return max(timeout, 0.0)


def _take_counter(fd: int, eventfd: Eventfd, timeout: float | None) -> int:
    """:meth:`Eventfd.read` once ``fd`` is borrowed: a poll in steps of
    :data:`CLOSE_NOTICE_SECONDS` (a close meanwhile is noticed) up to
    ``timeout`` (the loop readers' read(0) never comes here: it cannot wait)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        wait = CLOSE_NOTICE_SECONDS
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        ready = poller.poll(int(wait * 1000))
        if eventfd._fd < 0:
            raise eventfd._closed_error(" while a read waited on it")
        if ready:
            try:
                return _read_now(fd)
            except BlockingIOError:
                pass  # another reader took it
        if deadline is not None and time.monotonic() >= deadline:
            return 0


#: whether this kernel takes RWF_NOWAIT for an eventfd's read (found at the first refusal)
_NOWAIT = [True]


def _read_now(fd: int) -> int:
    """Take the counter, never waiting: another reader (the VMM's, KVM's irqfd
    in the kernel) may have taken it since the poll said ready, and a read(2)
    of an eventfd opened blocking (the VMM's) would then wait for the next
    signal, past any timeout. Nor is one made here safe by its O_NONBLOCK: it
    belongs to the open file description, which every holder of the fd shares
    (a back-end given the token over SCM_RIGHTS) and any of them can clear.
    RWF_NOWAIT makes this one read non-blocking whatever the description's
    flags say, without touching them (BlockingIOError: nothing there); a kernel
    that refuses it for an eventfd gets read(2)."""
    if _NOWAIT[0]:
        buffer = bytearray(8)
        try:
            os.preadv(fd, [buffer], -1, os.RWF_NOWAIT)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _NOWAIT[0] = False
        else:
            value: int = _COUNTER.unpack(buffer)[0]
            return value
    value = _COUNTER.unpack(os.read(fd, 8))[0]
    return value


class HoldingEventfd:
    """Where a stopped producer's device signals meanwhile, so a quiesce loses
    no interrupt: QEMU's pattern for vectors it cannot mask.

    On ``stop()`` point the device at :meth:`fileno`; on ``start()`` point it
    back at the token and call :meth:`replay`, which writes what was caught to
    the token. The eventfd is opened on first use and by :meth:`close` closed
    (a later :meth:`fileno` opens a new one); the counts survive both.
    """

    def __init__(self) -> None:
        self._eventfd: Eventfd | None = None
        #: interrupts caught while stopped, and those written on to the token
        self.held = 0
        self.replayed = 0

    def fileno(self) -> int:
        """The holding eventfd's fd, opened on first use: what the device points at while
        stopped."""
        if self._eventfd is None:
            self._eventfd = Eventfd()
        return self._eventfd.fileno()

    def replay(self, token: object) -> int:
        """Forward what arrived since the last replay to ``token``; a token that
        is not an open :class:`Eventfd` only has it counted as held."""
        if self._eventfd is None:
            return 0
        count = self._eventfd.read(0)
        if count:
            self.held += count
            if isinstance(token, Eventfd) and not token.closed:
                token.write(count)
                self.replayed += count
        return count

    def absorb(self, n: int = 1) -> int:
        """Take up to ``n`` signals off the holding eventfd without counting
        them as held (a device's own signal on a new fd); returns how many."""
        if self._eventfd is None:
            return 0
        count = self._eventfd.read(0)
        taken = min(count, n)
        if count > taken:
            self._eventfd.write(count - taken)
        return taken

    def close(self) -> None:
        """Close the holding eventfd (the counts stay; a later :meth:`fileno` opens a new
        one)."""
        if self._eventfd is not None:
            self._eventfd.close()
            self._eventfd = None
