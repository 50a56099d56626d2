"""The one place where a device producer touches the kernel: open, close, ioctl.

A producer built on :class:`~irqbypass.plugin.DeviceProducer` makes every system call
on its device through a :class:`Seam`, so tests (and embedders without the
device) hand in a model that records every call and answers as the kernel
documents (``irqbypass.testing.FakeDevice`` is the base of the plugins' models).
:func:`ioctl_number` encodes a request number as ``asm-generic/ioctl.h`` does.
"""

from __future__ import annotations

import fcntl
import os
from typing import Protocol

__all__ = ["IOC_NONE", "IOC_READ", "IOC_WRITE", "RealSeam", "Seam", "ioctl_number"]

#: asm-generic/ioctl.h: the direction bits of a request number
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioctl_number(direction: int, kind: int, nr: int, size: int) -> int:
    """``_IOC(direction, kind, nr, size)``: what ``_IO``/``_IOR``/``_IOW``/``_IOWR`` expand to."""
    return (direction << 30) | (size << 16) | (kind << 8) | nr


class Seam(Protocol):
    """open/close device nodes, ioctl on fds, and where sysfs is."""

    sysfs_root: str

    def open(self, path: str, flags: int) -> int:
        """Open ``path`` with ``flags``; the fd."""

    def close(self, fd: int) -> None:
        """Close ``fd``."""

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        """``ioctl(fd, request, arg)``: a bytearray is passed by pointer and
        updated in place with what the kernel wrote; an int is passed by value.
        Returns the ioctl's result; raises OSError with the kernel's errno."""
        ...


class RealSeam:
    """The kernel itself: ``os.open`` (close-on-exec), ``os.close`` and ``fcntl.ioctl``."""

    sysfs_root = "/sys"

    def open(self, path: str, flags: int) -> int:
        """``os.open`` with O_CLOEXEC added."""
        return os.open(path, flags | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        """``os.close``."""
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        """``fcntl.ioctl``: an int argument by value, a bytearray in place (mutated as the
        kernel writes it)."""
        if isinstance(arg, int):
            result: int = fcntl.ioctl(fd, request, arg)
        else:
            result = fcntl.ioctl(fd, request, arg, True)
        return result
