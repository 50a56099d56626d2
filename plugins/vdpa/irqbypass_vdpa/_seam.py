"""The one place where this plugin touches the kernel: open, close, ioctl.

Everything else goes through a :class:`Seam`, so tests (and embedders without a
device) can hand in a model that records every call and answers as the kernel
documents (``irqbypass_vdpa.testing.FakeVdpa``).
"""

from __future__ import annotations

import fcntl
import os
from typing import Protocol


class Seam(Protocol):
    """open/close device nodes, ioctl on fds, and where sysfs is."""

    sysfs_root: str

    def open(self, path: str, flags: int) -> int: ...

    def close(self, fd: int) -> None: ...

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        """``ioctl(fd, request, arg)``: a bytearray is passed by pointer and
        updated in place with what the kernel wrote; an int is passed by value.
        Returns the ioctl's result; raises OSError with the kernel's errno."""
        ...


class RealSeam:
    """The kernel itself: ``os.open``, ``os.close`` and ``fcntl.ioctl``."""

    sysfs_root = "/sys"

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        if isinstance(arg, int):
            result: int = fcntl.ioctl(fd, request, arg)
        else:
            result = fcntl.ioctl(fd, request, arg, True)
        return result
