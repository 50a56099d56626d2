"""The ``vdpa`` producer: one virtqueue's call interrupt of a vhost-vdpa device.

``open()`` gets a ``/dev/vhost-vdpa-N`` fd (or takes the VMM's), reads the
device id, status, virtqueue count and the virtqueue's group, and binds the
token eventfd as the virtqueue's call eventfd with ``VHOST_SET_VRING_CALL``;
``close()`` unbinds it (fd -1). In the kernel, vhost-vdpa registers an
``irq_bypass_producer`` for that eventfd once the device is DRIVER_OK, which is
why this producer checks the status.

``stop()``/``start()`` quiesce without losing an interrupt: the call eventfd
is swapped to a holding eventfd while stopped, and what arrived there is written
to the token on start. That life (open/close from any state, the quiesce, the
counts, signal safety) is :class:`irqbypass.plugin.DeviceProducer`'s; this module holds
only what is vhost-vdpa's own.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

import irqbypass
import irqbypass.plugin
import irqbypass.system

from . import _abi

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["VdpaProducer", "VdpaQueue"]

CREATE_HOWTO = (
    "create a vDPA device and give it to vhost-vdpa: `modprobe vhost_vdpa`, list the "
    "management devices with `vdpa mgmtdev show`, then `vdpa dev add name vdpa0 mgmtdev "
    "<mgmtdev>` (e.g. mgmtdev vdpasim_net from the vdpa_sim_net module to try it); if "
    "virtio_vdpa took it, `echo vdpa0 > /sys/bus/vdpa/drivers/virtio_vdpa/unbind; "
    "echo vdpa0 > /sys/bus/vdpa/drivers/vhost_vdpa/bind`"
)


def status_names(status: int) -> str:
    names = [
        name
        for bit, name in (
            (_abi.VIRTIO_CONFIG_S_ACKNOWLEDGE, "ACKNOWLEDGE"),
            (_abi.VIRTIO_CONFIG_S_DRIVER, "DRIVER"),
            (_abi.VIRTIO_CONFIG_S_FEATURES_OK, "FEATURES_OK"),
            (_abi.VIRTIO_CONFIG_S_DRIVER_OK, "DRIVER_OK"),
            (_abi.VIRTIO_CONFIG_S_NEEDS_RESET, "NEEDS_RESET"),
            (_abi.VIRTIO_CONFIG_S_FAILED, "FAILED"),
        )
        if status & bit
    ]
    return f"{status:#04x} ({'|'.join(names) or 'reset'})"


class VdpaProducer(irqbypass.plugin.DeviceProducer):
    """The call interrupt of virtqueue ``queue`` of a vhost-vdpa device.

    Give exactly one of ``device`` (``/dev/vhost-vdpa-N``; the producer opens
    it, becomes its owner with ``VHOST_SET_OWNER`` and closes it) and
    ``device_fd`` (the VMM's fd, already owned and set up; the producer only
    binds and unbinds its virtqueue's call eventfd). ``require_driver_ok``
    refuses a device whose status lacks DRIVER_OK (the kernel sets up the IRQ
    bypass only then); ``group`` is the virtqueue group the queue must be in,
    if given. Constructing validates but never touches the device.
    """

    kind = "vdpa"
    NUMBER_LABEL = "queue"

    def __init__(
        self,
        *,
        token: Hashable,
        queue: int | None = None,
        require_driver_ok: bool = True,
        group: int | None = None,
        **device: Unpack[irqbypass.plugin.DeviceArgs],
    ) -> None:
        super().__init__(token=token, number=queue, device_help="/dev/vhost-vdpa-N", **device)
        q = self.interrupt_number
        if group is not None and (isinstance(group, bool) or group < 0):
            raise irqbypass.InvalidEndpointError(
                f"vdpa producer {self.name!r}: group {group!r} must be >= 0"
            )
        self.queue = q
        self.require_driver_ok = require_driver_ok
        self.expected_group = group
        self.interrupt: VdpaQueue = VdpaQueue(
            self.calls,
            self.device,
            self.device_fd,
            q,
            require_driver_ok=require_driver_ok,
            group=group,
        )

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> VdpaProducer:
        opts = spec.options_reader()
        device, fd = cls.device_or_fd(opts, "/dev/vhost-vdpa-N")
        queue = cls.number_option(opts, spec.irq)
        require = opts.get_bool("require_driver_ok", True)
        group = opts.get_raw("group")
        if group is not None and (
            isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < 2**32
        ):
            raise opts.error(
                "group", f"expected a virtqueue group number 0..2**32-1, got {group!r}"
            )
        opts.finish()
        return cls(
            **cls.spec_common(spec), device=device, device_fd=fd, queue=queue,
            require_driver_ok=require, group=group,
        )  # fmt: skip

    # -- the device's primitives -------------------------------------------------

    def interrupt_name(self) -> str:
        return f"virtqueue {self.queue}"

    def hint(self, code: int, op: str, fd: int) -> str:
        return _HINTS.get(code) or "see the kernel log (dmesg)"

    #: The eventfd the virtqueue's call interrupt signals (the token, or the holding eventfd
    #: while stopped), None when unbound.
    bound_to = irqbypass.plugin.Alias[int | None]("pointed_at")

    # -- what open() found ------------------------------------------------------

    #: The virtio device id (VHOST_VDPA_GET_DEVICE_ID), once open.
    device_id = irqbypass.plugin.Alias[int | None]("interrupt.device_id")
    #: The virtio status the device had at open (VHOST_VDPA_GET_STATUS).
    status = irqbypass.plugin.Alias[int | None]("interrupt.status")
    #: How many virtqueues the device has (None: the kernel predates the question).
    vq_count = irqbypass.plugin.Alias[int | None]("interrupt.vq_count")
    #: The virtqueue's group (None: the parent has no groups).
    vq_group = irqbypass.plugin.Alias[int | None]("interrupt.vq_group")


class VdpaQueue(irqbypass.plugin.VhostVirtqueue):
    """Virtqueue ``queue``'s call interrupt of the vhost-vdpa device ``device``
    (opened, owned and made ours with VHOST_SET_OWNER) or ``device_fd`` (the VMM's)."""

    # vhost-vdpa swaps the call eventfd under the virtqueue's mutex: lossless
    # (measured: docs/testing.md), so stop() swaps to the holding eventfd

    def __init__(
        self,
        calls: irqbypass.plugin.DeviceCalls,
        device: str | None,
        device_fd: int | None,
        queue: int,
        *,
        require_driver_ok: bool,
        group: int | None,
    ) -> None:
        super().__init__(calls, device, device_fd, queue)
        self.require_driver_ok = require_driver_ok
        self.expected_group = group
        self.device_id: int | None = None
        self.status: int | None = None
        self.vq_count: int | None = None
        self.vq_group: int | None = None

    def open(self) -> None:
        path = self.device
        fd = self.take(
            {
                errno.ENOENT: f"{path} does not exist: {CREATE_HOWTO}",
                errno.EACCES: _no_permission(path),
                errno.EPERM: _no_permission(path),
                errno.EBUSY: (
                    f"{path} is already open (vhost-vdpa has one user at a time): stop the "
                    "other VMM, or let it hand its fd to this producer (device_fd=...)"
                ),
            },
        )
        self._check_status(fd)
        self._count_queues(fd)
        self.set_owner({errno.EBUSY: "the device already has an owner"})
        self._check_group(fd)

    def queues(self) -> str:
        return f"{self.vq_count if self.vq_count is not None else 'fewer'} virtqueues"

    def point_hints(self) -> Mapping[int, str]:
        return {errno.EPERM: _NOT_OWNER}

    # -- what vhost-vdpa has of its own ------------------------------------------

    def _read(self, fd: int, name: str, request: int, ctype: type[ctypes._SimpleCData[int]]) -> int:
        buf = bytearray(ctypes.sizeof(ctype))
        self.calls.ioctl(fd, name, request, buf)
        value: int = ctype.from_buffer_copy(buf).value
        return value

    def _check_status(self, fd: int) -> None:
        """Device id and status; refuse a device that failed, or is not ready
        and must be (the kernel bypasses only once DRIVER_OK)."""
        self.device_id = self._read(
            fd, "VHOST_VDPA_GET_DEVICE_ID", _abi.VHOST_VDPA_GET_DEVICE_ID, ctypes.c_uint32
        )
        self.status = self._read(
            fd, "VHOST_VDPA_GET_STATUS", _abi.VHOST_VDPA_GET_STATUS, ctypes.c_uint8
        )
        bad = self.status & (_abi.VIRTIO_CONFIG_S_FAILED | _abi.VIRTIO_CONFIG_S_NEEDS_RESET)
        if bad:
            raise self.calls.refuse(
                f"the device status is {status_names(self.status)}: it failed or needs a reset; "
                "the VMM must reset it (VHOST_VDPA_SET_STATUS 0) and set it up again",
                errno.EIO,
            )
        if self.require_driver_ok and not self.status & _abi.VIRTIO_CONFIG_S_DRIVER_OK:
            raise self.calls.refuse(
                f"the device is not ready: its status is {status_names(self.status)}, without "
                "DRIVER_OK (4); the kernel bypasses a virtqueue's interrupt only once the "
                "driver set DRIVER_OK. Hand over the fd of a VMM that negotiated features, set "
                "up the vrings and set DRIVER_OK (device_fd=...), or set require_driver_ok = "
                "false to bind the call eventfd before that",
                errno.EAGAIN,
            )

    def _count_queues(self, fd: int) -> None:
        """The virtqueue count, and the queue checked against it."""
        try:
            count = bytearray(4)
            self.calls.seam.ioctl(fd, _abi.VHOST_VDPA_GET_VQS_COUNT, count)
            self.vq_count = int.from_bytes(count, "little")
        except OSError:
            self.vq_count = None  # before Linux 5.18: SET_VRING_CALL's ENOBUFS will tell
        if self.vq_count is not None and self.queue >= self.vq_count:
            raise self.calls.refuse(
                f"virtqueue {self.queue} is out of range: the {self._kind()} device has "
                f"{self.vq_count} virtqueues (VHOST_VDPA_GET_VQS_COUNT), 0..{self.vq_count - 1}",
                errno.ENOBUFS,
            )

    def _check_group(self, fd: int) -> None:
        """The virtqueue's group, checked against the configured one."""
        state = bytearray(bytes(_abi.vhost_vring_state(index=self.queue, num=0)))
        try:
            self.calls.seam.ioctl(fd, _abi.VHOST_VDPA_GET_VRING_GROUP, state)
            self.vq_group = _abi.vhost_vring_state.from_buffer_copy(state).num
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY):
                hints = {
                    errno.EIO: "the parent driver reports a group beyond its group count: a "
                    "driver bug; report it, or use another virtqueue",
                    errno.EPERM: _NOT_OWNER,
                    errno.ENOBUFS: f"virtqueue {self.queue} does not exist on this device",
                }
                hint = hints.get(exc.errno or 0) or _HINTS.get(exc.errno or 0, "see dmesg")
                raise self.calls.failure("VHOST_VDPA_GET_VRING_GROUP", exc, hint) from exc
            # EOPNOTSUPP: the parent has no virtqueue groups; ENOTTY: before Linux 5.19
            self.vq_group = None
        if self.expected_group is not None and self.vq_group != self.expected_group:
            got = "no group (the parent has none)" if self.vq_group is None else self.vq_group
            raise self.calls.refuse(
                f"virtqueue {self.queue} is in group {got}, not in group "
                f"{self.expected_group} as configured: on devices that isolate the control "
                "virtqueue in its own group (and address space) pick a data virtqueue, or fix "
                "the group option"
            )

    def _kind(self) -> str:
        if self.device_id is None:
            return "vDPA"
        return f"virtio-{_abi.VIRTIO_IDS.get(self.device_id, str(self.device_id))}"


def _no_permission(path: str | None) -> str:
    return (
        f"no permission to open {path}: run as root or give this user the node "
        f"(`chown $USER {path}`, or a udev rule)"
    )


_NOT_OWNER = (
    "this process is not the fd's vhost owner: vhost ownership belongs to the process "
    "that called VHOST_SET_OWNER (its mm), not to the fd, so the VMM must call it and "
    "hand the fd over within its own process (embed the producer); an fd passed to or "
    "inherited by another process (fd = N in a topology) is refused there with EPERM"
)

_HINTS = {
    errno.ENOTTY: (
        "the fd is not a vhost-vdpa device: pass /dev/vhost-vdpa-N (not /dev/vhost-net or "
        "another vhost device), or the VMM's vhost-vdpa fd"
    ),
    errno.EINVAL: "the kernel refused the arguments: check the virtqueue index",
    errno.EBUSY: "the device is in use by another owner: close that user, or take its fd",
    errno.EPERM: _NOT_OWNER,
    errno.ENODEV: "the vDPA device is gone (deleted with `vdpa dev del`?): create it again",
    errno.EBADF: "the call eventfd is not open",
}
