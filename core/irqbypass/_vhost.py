"""A virtqueue's call interrupt of a kernel vhost device, for the plugins that drive one.

vhost-net, vhost-vsock and vhost-vdpa answer the same two ioctls for it, in the
common code of ``drivers/vhost/vhost.c``: ``VHOST_SET_OWNER`` (``vhost_dev_ioctl``:
the calling process becomes the owner) and ``VHOST_SET_VRING_CALL``
(``vhost_vring_ioctl``: the virtqueue's call signals an eventfd, -1 none).
:class:`VhostVirtqueue` is that part once; a plugin subclasses it with what its
device checks at open (vhost's features, vhost-vdpa's status and groups).
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Mapping

from ._device import DeviceInterrupt
from ._devicegroup import DeviceCalls, DeviceGroup
from ._seam import IOC_NONE, IOC_WRITE, ioctl_number

__all__ = ["VhostVirtqueue"]

_VHOST_VIRTIO = 0xAF


class _vhost_vring_file(ctypes.Structure):
    """``fd`` -1 unbinds."""

    _fields_ = [("index", ctypes.c_uint), ("fd", ctypes.c_int)]


class VhostVirtqueue(DeviceInterrupt):
    """Virtqueue ``queue``'s call interrupt of the vhost device ``device`` (a
    node: opened, and made ours with ``VHOST_SET_OWNER``) or ``device_fd`` (the
    VMM's, whose owner it is already)."""

    # linux/vhost.h, as the plugins' ABI tests check it against the header
    VHOST_VIRTIO = _VHOST_VIRTIO
    vhost_vring_file = _vhost_vring_file
    VHOST_SET_OWNER = ioctl_number(IOC_NONE, _VHOST_VIRTIO, 0x01, 0)
    VHOST_SET_VRING_CALL = ioctl_number(
        IOC_WRITE, _VHOST_VIRTIO, 0x21, ctypes.sizeof(_vhost_vring_file)
    )

    def __init__(
        self, calls: DeviceCalls, device: str | None, device_fd: int | None, queue: int
    ) -> None:
        self.calls = calls
        self.device, self.device_fd, self.queue = device, device_fd, queue

    def take(self, hints: Mapping[int, str]) -> int:
        """The device's group: the node opened (``hints`` wording its errnos),
        this producer's own; or the VMM's fd, shared with this process's other
        producers handed it, one per virtqueue (EBUSY for a second: the
        virtqueue has one call eventfd, and it would take the first's). Its fd."""
        fd = self.device_fd
        if fd is None:
            self.group = DeviceGroup.take(self.calls, self.device, None, hints)
            return self.group.fd
        group = self.join(
            DeviceGroup,
            self.calls.seam,
            ("vhost device fd", fd),
            lambda: DeviceGroup.take(self.calls, None, fd, hints),
        )
        holder = self.claim(self.queue, self.calls.describe())
        if holder is not None:
            raise self.calls.refuse(
                f"virtqueue {self.queue} of this device is already bound by {holder} in "
                "this process: a virtqueue has one call eventfd; close that producer first, "
                "or use another virtqueue",
                errno.EBUSY,
            )
        return group.fd

    def close(self) -> None:
        """Give back the virtqueue and the share of a VMM's fd (which stays
        open); close a node this producer opened."""
        group, self.group = self.group, None
        if group is None:
            return
        if self.claimed:
            group.unclaim(self.queue)
            self.claimed = False
        if group.key is None or group.unshare():
            group.close()

    def set_owner(self, hints: Mapping[int, str] | None = None) -> None:
        """``VHOST_SET_OWNER`` on a node this open opened (a VMM's fd is left as it is)."""
        assert self.group is not None
        if self.group.ours:
            self.calls.ioctl(self.group.fd, "VHOST_SET_OWNER", self.VHOST_SET_OWNER, 0, hints)

    def point(self, fd: int) -> None:
        """``VHOST_SET_VRING_CALL``: the virtqueue's call interrupt signals ``fd`` (-1: none)."""
        assert self.group is not None
        arg = bytearray(bytes(_vhost_vring_file(index=self.queue, fd=fd)))
        self.calls.ioctl(
            self.group.fd,
            "VHOST_SET_VRING_CALL",
            self.VHOST_SET_VRING_CALL,
            arg,
            {
                errno.ENOBUFS: f"virtqueue {self.queue} does not exist: the device has "
                f"{self.queues()}",
                **self.point_hints(),
            },
        )

    def queues(self) -> str:
        """What the device has, for the refusal of a virtqueue it lacks ("2 virtqueues")."""
        return "fewer virtqueues"

    def point_hints(self) -> Mapping[int, str]:
        """The device's own hints for ``VHOST_SET_VRING_CALL``'s errnos (default: none)."""
        return {}
