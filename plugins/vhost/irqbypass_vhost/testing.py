"""A model of a kernel vhost device behind the core's seam, for tests without one.

:class:`FakeVhost` answers as drivers/vhost/vhost.c and net.c do: every open is
a device of its own (vhost-net admits many openers), ``VHOST_GET_FEATURES``
for anyone holding the fd, ``VHOST_SET_OWNER`` once (EBUSY after), the
per-virtqueue ioctls only for the owner's process (EPERM; ownership is the
``mm`` that called SET_OWNER, not the fd) and only below the virtqueue count
(ENOBUFS), and ``VHOST_SET_VRING_CALL`` keeping a reference on the eventfd.
The recording half (every call with its payload, failures on demand, real fds)
is :class:`irqbypass.testing.FakeDevice`. It is a model, not a device.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field

import irqbypass
import irqbypass.testing

from . import _abi

__all__ = ["FEATURES", "REQUEST_NAMES", "FakeVhost"]

REQUEST_NAMES = irqbypass.testing.FakeDevice.request_names(
    _abi, "VHOST_GET_FEATURES", "VHOST_SET_OWNER", "VHOST_SET_VRING_CALL"
)
#: what the model offers: net.c's VHOST_NET_FEATURES bits (MRG_RXBUF 15, NOTIFY_ON_EMPTY 24,
#: LOG_ALL 26, ANY_LAYOUT 27, INDIRECT_DESC 28, EVENT_IDX 29, VERSION_1 32, ACCESS_PLATFORM 33);
#: the producer only records them
FEATURES = sum(1 << bit for bit in (15, 24, 26, 27, 28, 29, 32, 33))
_err = irqbypass.testing.FakeDevice.error


@dataclass
class _Device:
    owner_mm: object | None = None
    calls: dict[int, tuple[int, int]] = field(default_factory=dict)  # vq -> (fd, our ref)


class FakeVhost(irqbypass.testing.FakeDevice[_Device | None]):
    """``path`` (a vhost node with ``nvqs`` virtqueues); ``others`` open but
    are no vhost device (ioctl: ENOTTY)."""

    def __init__(
        self,
        *,
        path: str = "/dev/vhost-net",
        nvqs: int = 2,
        others: tuple[str, ...] = ("/dev/null",),
        denied: tuple[str, ...] = (),
    ) -> None:
        super().__init__(REQUEST_NAMES, denied=denied)
        self.path, self.nvqs, self.others = path, nvqs, others
        #: the calling process ("current->mm"); set it to act as another process
        self.mm: object = "this process"

    def call_of(self, fd: int, queue: int) -> int | None:
        """The fd number the last SET_VRING_CALL on ``fd`` bound to ``queue``."""
        device = self.files.get(fd)
        entry = device.calls.get(queue) if device else None
        return entry[0] if entry else None

    def fire(self, fd: int, queue: int, n: int = 1) -> int:
        """The device signals virtqueue ``queue``'s call ``n`` times."""
        device = self.files.get(fd)
        entry = device.calls.get(queue) if device else None
        return 0 if entry is None else self.signal(entry[1], n)

    def hand_over(self) -> int:
        """What a VMM does before handing its fd over: open and own it."""
        fd = self.open(self.path, os.O_RDWR)
        device = self.files[fd]
        assert device is not None
        device.owner_mm = self.mm
        return fd

    # -- the seam --------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        self.check_access(path)
        if path != self.path and path not in self.others:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return self.new_fd(path, _Device() if path == self.path else None)

    def close(self, fd: int) -> None:
        device = self.drop_fd(fd)
        for _, ref in device.calls.values() if device else ():
            os.close(ref)  # vhost_dev_cleanup drops the call eventfds

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        self.record(fd, request, arg)
        device = self.files.get(fd)
        if device is None:
            raise _err(errno.ENOTTY)
        if request == _abi.VHOST_GET_FEATURES:
            return self.put(arg, struct.pack("=Q", FEATURES))
        if request == _abi.VHOST_SET_OWNER:
            if device.owner_mm is not None:  # vhost_dev_set_owner
                raise _err(errno.EBUSY)
            device.owner_mm = self.mm
            return 0
        if request != _abi.VHOST_SET_VRING_CALL:
            raise _err(errno.ENOTTY)
        if device.owner_mm != self.mm:  # vhost_dev_check_owner, whichever fd
            raise _err(errno.EPERM)
        assert isinstance(arg, bytearray)
        index, value = struct.unpack_from("=Ii", arg)
        if index >= self.nvqs:
            raise _err(errno.ENOBUFS)
        new = (value, self.take_eventfd(value)) if value >= 0 else None
        old = device.calls.pop(index, None)
        if old is not None:
            os.close(old[1])
        if new is not None:
            device.calls[index] = new
        return 0
