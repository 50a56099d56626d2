"""A model of a vhost-vdpa device behind the plugin's seam, for tests without one.

:class:`FakeVdpa` answers as drivers/vhost/vdpa.c does: one opener at a time
(EBUSY), device id / status / virtqueue count readable by anyone holding the
fd, everything per-virtqueue only for the vhost owner (EPERM; the owner is the
process, ``mm``, that called ``VHOST_SET_OWNER``, not the fd) and only for an
existing virtqueue (ENOBUFS), ``VHOST_VDPA_GET_VRING_GROUP`` EOPNOTSUPP when the
parent has no groups, and ``VHOST_SET_VRING_CALL`` keeping (a reference to)
the call eventfd. Every call is recorded with its payload bytes; any request
can be made to fail. Its fds are real (``/dev/null``) so leak checks see them.
It is a model, not a device.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import irqbypass

from . import _abi

__all__ = ["REQUEST_NAMES", "Call", "FakeVdpa"]

REQUEST_NAMES: dict[int, str] = {
    getattr(_abi, name): name
    for name in (
        "VHOST_SET_OWNER",
        "VHOST_SET_VRING_CALL",
        "VHOST_VDPA_GET_DEVICE_ID",
        "VHOST_VDPA_GET_STATUS",
        "VHOST_VDPA_GET_VQS_COUNT",
        "VHOST_VDPA_GET_VRING_GROUP",
    )
}

READY = (
    _abi.VIRTIO_CONFIG_S_ACKNOWLEDGE
    | _abi.VIRTIO_CONFIG_S_DRIVER
    | _abi.VIRTIO_CONFIG_S_FEATURES_OK
    | _abi.VIRTIO_CONFIG_S_DRIVER_OK
)
_U64 = struct.Struct("=Q")


@dataclass(frozen=True)
class Call:
    fd: int
    request: int
    payload: bytes | int

    @property
    def name(self) -> str:
        return REQUEST_NAMES.get(self.request, f"{self.request:#x}")


class FakeVdpa:
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
        self.path = path
        self.device_id = device_id
        self.status = status
        self.vq_groups = list(vq_groups)
        self.vqs_count_supported = vqs_count_supported
        self.others = others
        self.denied = denied
        self.sysfs_root = "/nonexistent-sysfs"
        self.calls: list[Call] = []
        self.opened: list[str] = []
        self.closed: list[int] = []
        self._kinds: dict[int, str] = {}
        self.owner: int | None = None  # the fd that did VHOST_SET_OWNER
        #: the calling process ("current->mm"); set it to act as another process
        self.mm: object = "this process"
        self._owner_mm: object | None = None  # vhost_dev's mm: who owns it
        self._failures: dict[int, list[int]] = {}
        self._calls_fd: dict[int, tuple[int, int]] = {}  # vq -> (caller's fd, our dup)

    def fail(self, request: int, code: int, times: int = 1) -> None:
        self._failures.setdefault(request, []).extend([code] * times)

    def call_of(self, queue: int) -> int | None:
        entry = self._calls_fd.get(queue)
        return entry[0] if entry else None

    def fire(self, queue: int, n: int = 1) -> int:
        """The device signals virtqueue ``queue``'s call interrupt ``n`` times."""
        entry = self._calls_fd.get(queue)
        if entry is None:
            return 0
        for _ in range(n):
            os.write(entry[1], _U64.pack(1))
        return n

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    @property
    def open_fds(self) -> list[int]:
        return sorted(self._kinds)

    # -- the seam --------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        if path in self.denied:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        if path == self.path:
            if "vdpa" in self._kinds.values():
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
            kind = "vdpa"
        elif path in self.others:
            kind = "other"
        else:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self._kinds[fd] = kind
        self.opened.append(path)
        if kind == "vdpa":
            self.status = 0  # vhost_vdpa_open resets the device
        return fd

    def close(self, fd: int) -> None:
        kind = self._kinds.pop(fd, None)
        if kind is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        self.closed.append(fd)
        os.close(fd)
        if kind == "vdpa":  # release: reset, drop the call eventfds and the owner
            for _, dup in self._calls_fd.values():
                os.close(dup)
            self._calls_fd.clear()
            self.owner = self._owner_mm = None
            self.status = 0

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        self.calls.append(Call(fd, request, arg if isinstance(arg, int) else bytes(arg)))
        pending = self._failures.get(request)
        if pending:
            code = pending.pop(0)
            raise OSError(code, os.strerror(code))
        if self._kinds.get(fd) != "vdpa":
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if request == _abi.VHOST_VDPA_GET_DEVICE_ID:
            return _put(arg, struct.pack("=I", self.device_id))
        if request == _abi.VHOST_VDPA_GET_STATUS:
            return _put(arg, struct.pack("=B", self.status))
        if request == _abi.VHOST_VDPA_GET_VQS_COUNT and self.vqs_count_supported:
            return _put(arg, struct.pack("=I", len(self.vq_groups)))
        if request == _abi.VHOST_SET_OWNER:
            if self._owner_mm is not None:  # vhost_dev_set_owner
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            self.owner, self._owner_mm = fd, self.mm
            return 0
        if request in (_abi.VHOST_VDPA_GET_VRING_GROUP, _abi.VHOST_SET_VRING_CALL):
            return self._vring(fd, request, arg)
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    def _vring(self, fd: int, request: int, arg: bytearray | int) -> int:
        assert isinstance(arg, bytearray)
        if self._owner_mm is None or self._owner_mm != self.mm:
            # vhost_dev_check_owner: dev->mm == current->mm, whichever fd
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        index, value = struct.unpack_from("=Ii", arg)
        if index >= len(self.vq_groups):  # vhost_vdpa_vring_ioctl
            raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
        if request == _abi.VHOST_VDPA_GET_VRING_GROUP:
            group = self.vq_groups[index]
            if group is None:
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
            return _put(arg, struct.pack("=II", index, group))
        old = self._calls_fd.pop(index, None)
        if old is not None:
            os.close(old[1])
        if value >= 0:
            try:  # eventfd_ctx_fdget: EBADF for a closed fd, EINVAL for one not an eventfd
                irqbypass.Eventfd.from_fd(value)
            except irqbypass.InvalidEndpointError as exc:
                raise OSError(exc.errno, os.strerror(exc.errno)) from exc
            self._calls_fd[index] = (value, os.dup(value))
        return 0

    def hand_over(self) -> int:
        """What a VMM does before handing its fd over: open, own, drive the
        device to DRIVER_OK. Returns the fd (the caller closes it)."""
        fd = self.open(self.path, os.O_RDWR)
        self.owner, self._owner_mm = fd, self.mm
        self.status = READY
        return fd


def _put(arg: bytearray | int, data: bytes) -> int:
    assert isinstance(arg, bytearray)
    arg[: len(data)] = data
    return 0
