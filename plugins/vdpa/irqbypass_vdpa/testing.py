"""A model of a vhost-vdpa device behind the plugin's seam, for tests without one.

:class:`FakeVdpa` answers as drivers/vhost/vdpa.c does: one opener at a time
(EBUSY), device id / status / virtqueue count readable by anyone holding the
fd, everything per-virtqueue only for the vhost owner (EPERM; the owner is the
process, ``mm``, that called ``VHOST_SET_OWNER``, not the fd) and only for an
existing virtqueue (ENOBUFS), ``VHOST_VDPA_GET_VRING_GROUP`` EOPNOTSUPP when the
parent has no groups, and ``VHOST_SET_VRING_CALL`` keeping (a reference to)
the call eventfd. Every call is recorded with its payload bytes; any request
can be made to fail. Its fds are real (``/dev/null``) so leak checks see them
(the recording half is the core's :class:`irqbypass.testing.FakeDevice`).
It is a model, not a device.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence

import irqbypass
import irqbypass.testing

from . import _abi

Call = irqbypass.testing.DeviceCall

__all__ = ["REQUEST_NAMES", "Call", "FakeVdpa"]

REQUEST_NAMES = irqbypass.testing.FakeDevice.request_names(
    _abi,
    "VHOST_SET_OWNER",
    "VHOST_SET_VRING_CALL",
    "VHOST_VDPA_GET_DEVICE_ID",
    "VHOST_VDPA_GET_STATUS",
    "VHOST_VDPA_GET_VQS_COUNT",
    "VHOST_VDPA_GET_VRING_GROUP",
)

READY = (
    _abi.VIRTIO_CONFIG_S_ACKNOWLEDGE
    | _abi.VIRTIO_CONFIG_S_DRIVER
    | _abi.VIRTIO_CONFIG_S_FEATURES_OK
    | _abi.VIRTIO_CONFIG_S_DRIVER_OK
)
_err = irqbypass.testing.FakeDevice.error
_put = irqbypass.testing.FakeDevice.put


class FakeVdpa(irqbypass.testing.FakeDevice[str]):
    """A virtio device (``device_id``, default 1 = net) with ``vq_groups[i]``
    the group of virtqueue i (None for all: the parent has no groups), at
    ``path``; ``status`` is what a driver left in the status byte."""

    def __init__(
        self,
        *,
        path: str = "/dev/vhost-vdpa-0",
        device_id: int = 1,
        status: int = READY,
        vq_groups: Sequence[int | None] = (0, 0, 1),
        vqs_count_supported: bool = True,
        others: tuple[str, ...] = ("/dev/null",),
        denied: tuple[str, ...] = (),
    ) -> None:
        super().__init__(REQUEST_NAMES, denied=denied)
        self.path = path
        self.device_id = device_id
        self.status = status
        self.vq_groups = list(vq_groups)
        self.vqs_count_supported = vqs_count_supported
        self.others = others
        self.owner: int | None = None  # the fd that did VHOST_SET_OWNER
        #: the calling process ("current->mm"); set it to act as another process
        self.mm: object = "this process"
        self._owner_mm: object | None = None  # vhost_dev's mm: who owns it
        self._calls_fd: dict[int, tuple[int, int]] = {}  # vq -> (caller's fd, our dup)

    def call_of(self, queue: int) -> int | None:
        entry = self._calls_fd.get(queue)
        return entry[0] if entry else None

    def fire(self, queue: int, n: int = 1) -> int:
        """The device signals virtqueue ``queue``'s call interrupt ``n`` times."""
        entry = self._calls_fd.get(queue)
        return 0 if entry is None else self.signal(entry[1], n)

    # -- the seam --------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        self.check_access(path)
        if path == self.path:
            if "vdpa" in self.files.values():
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
            kind = "vdpa"
        elif path in self.others:
            kind = "other"
        else:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        fd = self.new_fd(path, kind)
        if kind == "vdpa":
            self.status = 0  # vhost_vdpa_open resets the device
        return fd

    def close(self, fd: int) -> None:
        if self.drop_fd(fd) == "vdpa":  # release: reset, drop the call eventfds and the owner
            for _, dup in self._calls_fd.values():
                os.close(dup)
            self._calls_fd.clear()
            self.owner = self._owner_mm = None
            self.status = 0

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        self.record(fd, request, arg)
        if self.files.get(fd) != "vdpa":
            raise _err(errno.ENOTTY)
        if request == _abi.VHOST_VDPA_GET_DEVICE_ID:
            return _put(arg, struct.pack("=I", self.device_id))
        if request == _abi.VHOST_VDPA_GET_STATUS:
            return _put(arg, struct.pack("=B", self.status))
        if request == _abi.VHOST_VDPA_GET_VQS_COUNT and self.vqs_count_supported:
            return _put(arg, struct.pack("=I", len(self.vq_groups)))
        if request == _abi.VHOST_SET_OWNER:
            if self._owner_mm is not None:  # vhost_dev_set_owner
                raise _err(errno.EBUSY)
            self.owner, self._owner_mm = fd, self.mm
            return 0
        if request in (_abi.VHOST_VDPA_GET_VRING_GROUP, _abi.VHOST_SET_VRING_CALL):
            return self._vring(fd, request, arg)
        raise _err(errno.ENOTTY)

    def _vring(self, fd: int, request: int, arg: bytearray | int) -> int:
        assert isinstance(arg, bytearray)
        if self._owner_mm is None or self._owner_mm != self.mm:
            # vhost_dev_check_owner: dev->mm == current->mm, whichever fd
            raise _err(errno.EPERM)
        index, value = struct.unpack_from("=Ii", arg)
        if index >= len(self.vq_groups):  # vhost_vdpa_vring_ioctl
            raise _err(errno.ENOBUFS)
        if request == _abi.VHOST_VDPA_GET_VRING_GROUP:
            group = self.vq_groups[index]
            if group is None:
                raise _err(errno.EOPNOTSUPP)
            return _put(arg, struct.pack("=II", index, group))
        old = self._calls_fd.pop(index, None)
        if old is not None:
            os.close(old[1])
        if value >= 0:
            self._calls_fd[index] = (value, self.take_eventfd(value))
        return 0

    def hand_over(self) -> int:
        """What a VMM does before handing its fd over: open, own, drive the
        device to DRIVER_OK. Returns the fd (the caller closes it)."""
        fd = self.open(self.path, os.O_RDWR)
        self.owner, self._owner_mm = fd, self.mm
        self.status = READY
        return fd
