"""The ``vhost`` producer: one virtqueue's call interrupt of a kernel vhost device.

vhost-net (``/dev/vhost-net``) is how most virtio-net guests get their
interrupts without a VMM round trip (QEMU's ``vhost=on``): the kernel moves the
frames and signals the virtqueue's call eventfd, which the VMM registers as a
KVM irqfd. ``/dev/vhost-vsock`` speaks the same ioctls. ``open()`` takes the
VMM's fd (or opens the node and becomes its owner), checks that it is a vhost
device (``VHOST_GET_FEATURES``) and binds the token with
``VHOST_SET_VRING_CALL``; ``close()`` unbinds it (fd -1).

Everything else (open/close from any state, the quiesce, the counts, signal
safety, the error wording) is :class:`irqbypass.plugin.DeviceProducer`'s: this module
holds only what is vhost's own.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Hashable
from typing import TYPE_CHECKING

import irqbypass
import irqbypass.plugin
import irqbypass.system

from . import _abi

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["VHOST_NODES", "VhostProducer", "VhostQueue"]

#: the vhost devices whose call interrupt this producer binds, and their virtqueues
VHOST_NODES = {
    "/dev/vhost-net": "2 virtqueues: 0 receive, 1 transmit",
    "/dev/vhost-vsock": "2 virtqueues: 0 receive, 1 transmit",
}

DEVICE_HELP = "/dev/vhost-net or /dev/vhost-vsock"
LOAD_HOWTO = "load the module (`modprobe vhost_net`, or `modprobe vhost_vsock`)"


class VhostProducer(irqbypass.plugin.DeviceProducer):
    """The call interrupt of virtqueue ``queue`` of a kernel vhost device.

    Give exactly one of ``device`` (a node such as ``/dev/vhost-net``: the
    producer opens it, becomes its owner with ``VHOST_SET_OWNER`` and closes
    it) and ``device_fd`` (the VMM's fd, owned by this process: the producer
    only binds and unbinds the virtqueue's call). Constructing never touches
    the device.
    """

    kind = "vhost"
    NUMBER_LABEL = "queue"
    # vhost swaps the call eventfd under the virtqueue's mutex, which the worker
    # holds while it signals: a completion signals the old fd or the new one, so
    # stop() swaps to the holding eventfd (measured lossless: docs/plugins/vhost.md)

    def __init__(
        self,
        *,
        token: Hashable,
        queue: int | None = None,
        **device: Unpack[irqbypass.plugin.DeviceArgs],
    ) -> None:
        super().__init__(token=token, number=queue, device_help=DEVICE_HELP, **device)
        self.queue = self.interrupt_number
        self.interrupt: VhostQueue = VhostQueue(self.calls, self.device, self.device_fd, self.queue)

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> VhostProducer:
        opts = spec.options_reader()
        device, fd = cls.device_or_fd(opts, DEVICE_HELP)
        queue = cls.number_option(opts, spec.irq)
        opts.finish()
        return cls(**cls.spec_common(spec), device=device, device_fd=fd, queue=queue)

    def interrupt_name(self) -> str:
        return f"virtqueue {self.queue}"

    def hint(self, code: int, op: str, fd: int) -> str:
        return _HINTS.get(code, "see the kernel log (dmesg)")

    #: What VHOST_GET_FEATURES offered, once open.
    features = irqbypass.plugin.Alias[int | None]("interrupt.features")


class VhostQueue(irqbypass.plugin.VhostVirtqueue):
    """Virtqueue ``queue``'s call interrupt of the vhost device ``device`` (a
    node, opened and owned) or ``device_fd`` (the VMM's fd)."""

    #: what VHOST_GET_FEATURES offered, once open
    features: int | None = None

    def open(self) -> None:
        path = self.device
        fd = self.take(
            {
                errno.ENOENT: f"{path} does not exist: {LOAD_HOWTO}",
                errno.EACCES: f"no permission to open {path}: run as root, or give this "
                f"user the node (`chown $USER {path}`, or the kvm group's udev rule)",
            },
        )
        features = bytearray(ctypes.sizeof(ctypes.c_uint64))
        self.calls.ioctl(fd, "VHOST_GET_FEATURES", _abi.VHOST_GET_FEATURES, features)
        self.features = int.from_bytes(features, "little")
        self.set_owner()

    def queues(self) -> str:
        return VHOST_NODES.get(self.device or "", "fewer")


_HINTS = {
    errno.ENOTTY: (
        "the fd is not a kernel vhost device: pass /dev/vhost-net or /dev/vhost-vsock "
        "(a vhost-vdpa device is the vdpa kind's), or the VMM's vhost fd"
    ),
    errno.EPERM: (
        "this process is not the device's vhost owner: the owner is the process that "
        "called VHOST_SET_OWNER, so embed the producer in the VMM and hand it the fd there "
        "(an fd inherited by another process is refused with EPERM)"
    ),
    errno.EBUSY: "the device already has an owner: hand this producer that owner's fd",
    errno.EFAULT: "the kernel could not read the argument: a bug; report it",
    errno.EBADF: "the call eventfd is not open",
    errno.EINVAL: "the kernel refused the eventfd: is the token an open eventfd?",
}
