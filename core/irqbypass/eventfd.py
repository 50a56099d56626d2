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
import warnings
from types import TracebackType

from .errors import InvalidEndpointError

_COUNTER = struct.Struct("=Q")


def _read_fdinfo(fd: int) -> dict[str, str]:
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
            lines = info.read().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


class Eventfd:
    """An eventfd this object owns (or borrows, see :meth:`from_fd`).

    Use it as a context manager, or call :meth:`close`. ``write`` adds to the
    counter; ``read`` takes the whole counter (the number of writes since the
    last read for writes of 1), waiting up to ``timeout`` seconds.
    """

    __slots__ = ("__weakref__", "_fd", "_identity", "_owned")

    def __init__(self, initval: int = 0, *, semaphore: bool = False) -> None:
        flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
        if semaphore:
            flags |= os.EFD_SEMAPHORE
        self._fd: int = -1
        fd = os.eventfd(initval, flags)
        self._fd = fd
        self._owned = True
        self._identity = self._kernel_identity(fd)

    @classmethod
    def from_fd(cls, fd: int, *, owned: bool = False) -> Eventfd:
        """Wrap an eventfd opened elsewhere (by the embedding VMM, say).

        With ``owned=False`` (the default) :meth:`close` leaves the fd open: the
        caller keeps owning it. The fd must be an eventfd; anything else is
        refused with EINVAL (EBADF for a closed fd).
        """
        try:
            os.fstat(fd)
        except OSError as exc:
            raise InvalidEndpointError(
                f"fd {fd} is not open ({exc.strerror}); pass an open eventfd",
                errno=errno.EBADF,
            ) from exc
        if "eventfd-count" not in _read_fdinfo(fd):
            raise InvalidEndpointError(
                f"fd {fd} is not an eventfd; create one with os.eventfd() or irqbypass.Eventfd()"
            )
        self = cls.__new__(cls)
        self._fd = fd
        self._owned = owned
        self._identity = cls._kernel_identity(fd)
        return self

    @staticmethod
    def _kernel_identity(fd: int) -> tuple[str, int]:
        kernel_id = _read_fdinfo(fd).get("eventfd-id")
        if kernel_id is not None and kernel_id.isdigit():
            return ("eventfd-id", int(kernel_id))
        return ("fd", fd)

    @property
    def kernel_id(self) -> int | None:
        """The kernel's eventfd-id, or None where the kernel does not show it."""
        kind, value = self._identity
        return value if kind == "eventfd-id" else None

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def owned(self) -> bool:
        return self._owned

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on a closed Eventfd")
        return self._fd

    def write(self, value: int = 1) -> None:
        """Add ``value`` to the counter: signal the interrupt ``value`` times."""
        os.write(self.fileno(), _COUNTER.pack(value))

    def read(self, timeout: float | None = None) -> int:
        """Take the counter, waiting up to ``timeout`` seconds (None: forever).

        Returns 0 when nothing arrived in time.
        """
        fd = self.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        wait_ms = None if timeout is None else max(0, int(timeout * 1000))
        while True:
            if not poller.poll(wait_ms):
                return 0
            try:
                value: int = _COUNTER.unpack(os.read(fd, 8))[0]
                return value
            except BlockingIOError:
                if wait_ms == 0:
                    return 0

    def dup(self) -> Eventfd:
        """A new owned fd for the same eventfd (the same token)."""
        return Eventfd.from_fd(os.dup(self.fileno()), owned=True)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._owned:
            os.close(fd)

    def __enter__(self) -> Eventfd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0 and getattr(self, "_owned", False):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Eventfd):
            return NotImplemented
        return self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        kind, value = self._identity
        return f"<Eventfd {state} {kind}={value}>"


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

    def close(self) -> None:
        if self._eventfd is not None:
            self._eventfd.close()
            self._eventfd = None
