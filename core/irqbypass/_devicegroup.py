"""What the interrupts of one device fd share: the device group, and the lock order.

vfio-pci keeps a device's interrupt state per device, not per fd, and a group
node opens only once: so the producers of one device's vectors share one device
fd, opened by the first to open and closed by the last. A :class:`DeviceGroup`
owns what they share: the fd (and the fds it hangs off), one lock that
serializes the device's calls with the bookkeeping they need (which producer
holds which interrupt), and the calls that point many interrupts at once (vfio's
one ``VFIO_DEVICE_SET_IRQS`` for a run of vectors). A plugin subclasses it for
what its device adds; a device of one interrupt per fd (vhost, vhost-vdpa) uses
it alone, unshared. It is the role of cloud-hypervisor's ``InterruptSourceGroup``
(``vm-device/src/interrupt/mod.rs``): one object per device, many interrupts.

:class:`DeviceCalls` is a producer's system calls on its device, each failure
worded with who made it, what failed, the errno and what to do.

The lock order: a batch (:meth:`~irqbypass.plugin.DeviceProducer.open_batch`) takes
the locks of all its producers, each lock's place in one order fixed when it is
made (:func:`lock_order`), whatever the batch's own order: two batches sharing
producers cannot each hold what the other waits for. :class:`HeldLocks` takes
them.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

from ._errors import DeviceError
from ._seam import RealSeam, Seam
from ._signals import hold, signal_safe

if TYPE_CHECKING:
    from ._device import DeviceInterrupt

__all__ = ["DeviceCalls", "DeviceGroup", "HeldLocks", "detach_each", "lock_order", "point_each"]

_G = TypeVar("_G", bound="DeviceGroup")
_ORDER = itertools.count()
#: what to do when an open (or an ioctl handing out an fd) finds no fd free
_OUT_OF_FDS = (
    "the process (EMFILE) or the system (ENFILE) is out of file descriptors: raise the "
    "limit (`ulimit -n`, RLIMIT_NOFILE; fs.file-max) or close others"
)


def lock_order() -> int:
    """The next place in the one order in which batches take locks (creation order)."""
    return next(_ORDER)


class DeviceCalls:
    """The system calls of one producer's device, through its seam, every
    failure a :class:`~irqbypass.DeviceError` that starts with ``describe()``
    and says what failed, the kernel's errno and what to do (``hint``: the
    advice for an errno the call named none for)."""

    def __init__(
        self, seam: Seam, describe: Callable[[], str], hint: Callable[[int, str, int], str]
    ) -> None:
        self.seam = seam
        self.describe = describe
        self.hint = hint

    def refuse(self, problem: str, code: int = errno.EINVAL) -> DeviceError:
        """A refusal of ours (not the kernel's), saying what is wrong."""
        return DeviceError(f"{self.describe()}: {problem}", errno=code)

    def failure(self, op: str, exc: OSError, hint: str) -> DeviceError:
        """``op`` failed in the kernel: its errno, and ``hint`` (what to do;
        for a process or system out of fds, what to do about that instead)."""
        code = exc.errno if exc.errno is not None else errno.EIO
        if code in (errno.EMFILE, errno.ENFILE):
            hint = _OUT_OF_FDS
        return DeviceError(
            f"{self.describe()}: {op} failed: {os.strerror(code)} (errno {code}); {hint}",
            errno=code,
        )

    def ioctl(
        self,
        fd: int,
        name: str,
        request: int,
        arg: bytearray | int,
        hints: Mapping[int, str] | None = None,
    ) -> int:
        """The ioctl; a failure worded with the hint for its errno (``hints``, else ``hint``)."""
        try:
            return self.seam.ioctl(fd, request, arg)
        except OSError as exc:
            code = exc.errno or 0
            raise self.failure(
                name, exc, (hints or {}).get(code) or self.hint(code, name, fd)
            ) from exc

    def open(self, path: str, hints: Mapping[int, str]) -> int:
        """``open(path, O_RDWR)``, a failure worded as :meth:`ioctl`'s."""
        op = f"open({path})"
        try:
            return self.seam.open(path, os.O_RDWR)
        except OSError as exc:
            code = exc.errno or 0
            raise self.failure(op, exc, hints.get(code) or self.hint(code, op, -1)) from exc


class DeviceGroup:
    """One device fd and what the interrupts on it share.

    ``owned``: the fds :meth:`close` closes, the device's first (empty for a
    VMM's fd, which stays the VMM's). A group :meth:`share`\\ d under a key is
    found by the other producers of this process that name the same device.
    """

    #: open groups shared in this process, by (the seam's device space, key):
    #: the kernel is one device space, each model its own
    _SHARED: ClassVar[dict[Hashable, DeviceGroup]] = {}
    #: reentrant: a group's open (or close) may share (or give up) another's
    _SHARED_LOCK: ClassVar[threading.RLock] = threading.RLock()

    def __init__(
        self, fd: int, owned: Sequence[int] = (), calls: DeviceCalls | None = None
    ) -> None:
        self.fd = fd
        self.owned = list(owned)
        #: the calls that opened it: :meth:`close` words its failures with them
        self.calls = calls
        #: one call on the device at a time, with the bookkeeping it needs
        #: (reentrant: a batch holds it across the calls that each take it)
        self.lock = threading.RLock()
        self.users = 0
        self.key: Hashable = None
        #: interrupt (the plugin's key) -> the name of the producer holding it
        self.holders: dict[Hashable, str] = {}

    @property
    def ours(self) -> bool:
        """Opened here (not the VMM's fd): no one outside this process sets it up."""
        return bool(self.owned)

    @classmethod
    def take(
        cls: type[_G],
        calls: DeviceCalls,
        device: str | None,
        device_fd: int | None,
        hints: Mapping[int, str],
    ) -> _G:
        """The VMM's ``device_fd``, or ``device`` opened (and owned), with
        ``hints`` for the open's errnos."""
        if device_fd is not None:
            return cls(device_fd, calls=calls)
        assert device is not None
        fd = calls.open(device, hints)
        return cls(fd, [fd], calls)

    # -- shared by the producers of one device ----------------------------------------

    @classmethod
    def share(cls, seam: Seam, key: Hashable, open_group: Callable[[], _G]) -> _G:
        """The group of this class open under ``key``, opened by ``open_group``
        when none is: one more user (inside a signal-safe section, paired with
        :meth:`unshare`). Keys are per class: two plugins' keys never meet."""
        space = "kernel" if type(seam) is RealSeam else seam
        full = (space, cls, key)
        with hold(cls._SHARED_LOCK):
            group = cls._SHARED.get(full)
            if group is None:
                group = open_group()
                group.key = full
                cls._SHARED[full] = group
            group.users += 1
            return cast(_G, group)

    def unshare(self, close: Callable[[], None] | None = None) -> bool:
        """One user fewer: True when it was the last (its caller then closes
        it, or ``close`` does, before another producer can share the device:
        one whose node opens only once would find it still open)."""
        with hold(self._SHARED_LOCK):
            self.users -= 1
            if self.users > 0:
                return False
            if self._SHARED.get(self.key) is self:
                del self._SHARED[self.key]
            if close is not None:
                close()
            return True

    def locked(self) -> hold:
        """``with group.locked():`` takes the group's lock as a signal-safe
        section must: a Ctrl-C ends a wait for it and never leaves it taken."""
        return hold(self.lock)

    def claim(self, what: Hashable, name: str) -> str | None:
        """Record producer ``name`` as the holder of interrupt ``what``; the
        name of the one already holding it instead, if any."""
        with hold(self.lock):
            holder = self.holders.get(what)
            if holder is None:
                self.holders[what] = name
            return holder

    def unclaim(self, what: Hashable) -> None:
        """Interrupt ``what`` is no longer held."""
        with hold(self.lock):
            self.holders.pop(what, None)

    def close(self, failure: Callable[[int, OSError], DeviceError] | None = None) -> None:
        """Close the owned fds, the device first; every one attempted, then the
        first failure raised (``failure(fd, oserror)``: its wording; by default
        that of the calls that opened it)."""
        first: DeviceError | None = None
        fds, self.owned = sorted(self.owned, key=lambda fd: fd != self.fd), []
        assert self.calls is not None or not fds, "a group that owns fds knows its calls"
        for fd in fds:
            try:
                assert self.calls is not None
                self.calls.seam.close(fd)
            except OSError as exc:
                first = first or (failure or self._close_failure)(fd, exc)
        if first is not None:
            raise first

    def _close_failure(self, fd: int, exc: OSError) -> DeviceError:
        assert self.calls is not None
        return self.calls.failure("close", exc, "the fd was already closed")

    # -- many interrupts at once -------------------------------------------------------

    def point_batch(self, batch: Sequence[tuple[DeviceInterrupt, int]]) -> None:
        """Point each interrupt at its fd, all or nothing: on failure none is
        pointed and the error names the one that failed (by default one by
        one: a device that points many in one call overrides this)."""
        point_each(batch)

    def detach_batch(self, batch: Sequence[DeviceInterrupt]) -> None:
        """Detach each interrupt (by default one by one); raise the first failure."""
        detach_each(batch)


def point_each(batch: Sequence[tuple[DeviceInterrupt, int]]) -> None:
    """Point each interrupt at its fd in turn; on failure detach those pointed."""
    done: list[DeviceInterrupt] = []
    try:
        for interrupt, fd in batch:
            interrupt.point(fd)
            done.append(interrupt)
    except BaseException:
        for interrupt in reversed(done):
            with contextlib.suppress(Exception):  # the failure being raised is the news
                interrupt.detach()
        raise


def detach_each(batch: Sequence[DeviceInterrupt]) -> None:
    """Detach each interrupt in turn."""
    for interrupt in batch:
        interrupt.detach()


class HeldLocks:
    """Every lock of a batch, all held or none, taken in :func:`lock_order`
    (whatever the batch's own order: two batches sharing producers cannot each
    hold what the other waits for), each through :class:`~irqbypass.signalsafe.hold`, so
    a Ctrl-C ends a wait for a contended lock and none is left taken."""

    def __init__(self, locks: Sequence[tuple[int, threading.RLock]]) -> None:
        self.order = [lock for _, lock in sorted(dict(locks).items())]
        self._held = contextlib.ExitStack()

    @signal_safe  # each lock taken and recorded as one step
    def __enter__(self) -> None:
        try:
            for lock in self.order:
                self._held.enter_context(hold(lock))
        except BaseException:
            self._held.close()
            raise

    @signal_safe  # a signal as it starts would otherwise skip the release
    def __exit__(self, *exc: object) -> None:
        self._held.close()
