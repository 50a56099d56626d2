"""Opening a VFIO device: its iommufd cdev, its group in a container, or the VMM's fd.

A PCI address is resolved through sysfs to the cdev when the kernel has one,
else to the group. What was opened on the way is closed again when a later
step fails (the device first, then what it hangs off).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from collections.abc import Callable, Hashable

import irqbypass
import irqbypass.plugin

from . import _abi
from ._device import VfioDevice
from ._hints import BIND_HOWTO, bind_hints

__all__ = ["BDF", "CONTAINER_PATH", "IOMMUFD_PATH", "VfioOpener"]

BDF = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
CONTAINER_PATH = "/dev/vfio/vfio"
IOMMUFD_PATH = "/dev/iommu"


class VfioGroupNode(irqbypass.plugin.DeviceGroup):
    """A VFIO group node and the container it sits in (closed in that order),
    shared by this process's devices of the group: it opens only once."""


class VfioOpener:
    """Opens the device a producer names, with its wording (``calls``)."""

    def __init__(
        self, calls: irqbypass.plugin.DeviceCalls, device_name: str | None, iommufd: str | int
    ) -> None:
        self.calls = calls
        self.seam = calls.seam
        self.device_name = device_name
        self.iommufd = iommufd
        self.owned: list[int] = []  # the fds opened so far, in order
        self.fd: int | None = None
        self.mode: str | None = None  # "cdev", "group" or "fd"
        self.devid: int | None = None
        #: the group node the device was taken from (shared by the group's devices)
        self.node: VfioGroupNode | None = None
        #: what to do when the device's node is missing (its PCI address, found
        #: bound to vfio-pci in sysfs, says the node is only missing here)
        self.missing_node = BIND_HOWTO

    def where(
        self, device: str | None, device_fd: int | None
    ) -> tuple[Hashable, Callable[[], VfioDevice]]:
        """The key of the device in this process, and how to open it."""
        if device_fd is not None:
            return ("fd", device_fd), lambda: self.fresh(lambda: self.use_given_fd(device_fd))
        assert device is not None
        path = device
        if BDF.match(path):
            path, group = self.resolve_bdf(path.lower())
            is_group = group is not None
            self.missing_node = (
                f"PCI device {device.lower()} is bound to vfio-pci (sysfs says so), but its "
                "node is missing from this /dev: in a container, pass it in (`docker run "
                f"--device {path} --device {CONTAINER_PATH if is_group else IOMMUFD_PATH}`), "
                "else create it (udev)"
            )
        else:
            is_group = self.device_name is not None
        if is_group:
            key: Hashable = ("group", path, self.device_name)
            return key, lambda: self.fresh(lambda: self.open_group(path))
        return ("cdev", path, self.iommufd), lambda: self.fresh(lambda: self.open_cdev(path))

    def fresh(self, opener: Callable[[], None]) -> VfioDevice:
        """The device ``opener`` opens; on failure what it opened is closed."""
        self.owned, self.node = [], None
        try:
            opener()
        except BaseException:
            self.release()
            raise
        assert self.fd is not None and self.mode is not None
        owned, self.owned = self.owned, []
        device = VfioDevice(self.calls, self.fd, owned, self.mode, self.devid)
        device.node, self.node = self.node, None
        return device

    def release(self) -> None:
        """Close what was opened so far (the device first), and give up the group node's share."""
        fds, dev, self.owned, self.fd = self.owned, self.fd, [], None
        for fd in sorted(fds, key=lambda f: f != dev):
            with contextlib.suppress(OSError):  # the open's failure is raised
                self.seam.close(fd)
        node, self.node = self.node, None
        if node is not None:
            with contextlib.suppress(irqbypass.IrqBypassError):  # as above
                node.unshare(node.close)

    def use_given_fd(self, fd: int) -> None:
        self.mode = "fd"
        self.fd = fd

    def open_node(self, path: str, hint_enoent: str) -> int:
        no_permission = (
            f"no permission to open {path}: run as root, or give this user the "
            f"node (`chown $USER {path}`, or a udev rule), and raise RLIMIT_MEMLOCK "
            "if the VMM maps guest memory"
        )
        fd = self.calls.open(
            path,
            {
                errno.ENOENT: f"{path} does not exist: {hint_enoent}",
                errno.EACCES: no_permission,
                errno.EPERM: no_permission,
                errno.EBUSY: (
                    f"{path} is already open elsewhere (a VFIO group or device has one "
                    "user at a time): stop the other VMM, or let it hand its device fd to "
                    "this producer (device_fd=...)"
                ),
            },
        )
        self.owned.append(fd)
        return fd

    def resolve_bdf(self, bdf: str) -> tuple[str, str | None]:
        """The cdev of a PCI device when the kernel has one, else its group."""
        base = os.path.join(self.seam.sysfs_root, "bus/pci/devices", bdf)
        if not os.path.isdir(base):
            raise self.calls.refuse(
                f"there is no PCI device {bdf} (no {base}): check the address with `lspci -D`",
                errno.ENOENT,
            )
        driver = os.path.join(base, "driver")
        bound = os.path.basename(os.readlink(driver)) if os.path.islink(driver) else None
        if bound is None or "vfio" not in bound:
            raise self.calls.refuse(
                f"PCI device {bdf} is bound to {bound or 'no driver'}, not vfio-pci: "
                + BIND_HOWTO.replace("<bdf>", bdf),
                errno.ENODEV,
            )
        vfio_dev = os.path.join(base, "vfio-dev")
        if os.path.isdir(vfio_dev):
            # Linux 6.1-6.5 have vfio-dev/vfioN too, but no cdev: only a kernel
            # with CONFIG_VFIO_DEVICE_CDEV gives it a device number (its "dev")
            names = sorted(
                n
                for n in os.listdir(vfio_dev)
                if n.startswith("vfio") and os.path.exists(os.path.join(vfio_dev, n, "dev"))
            )
            if names:
                return f"/dev/vfio/devices/{names[0]}", None
        link = os.path.join(base, "iommu_group")
        if not os.path.islink(link):
            raise self.calls.refuse(
                f"PCI device {bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on / "
                "amd_iommu=on) or load vfio with enable_unsafe_noiommu_mode=1",
                errno.ENODEV,
            )
        group = os.path.basename(os.readlink(link))
        noiommu = os.path.join("/dev/vfio", f"noiommu-{group}")
        return (noiommu if os.path.exists(noiommu) else f"/dev/vfio/{group}"), group

    def open_cdev(self, path: str) -> None:
        """iommufd cdev: open it, then VFIO_DEVICE_BIND_IOMMUFD, without which
        the kernel refuses every other device ioctl (EINVAL)."""
        self.mode = "cdev"
        self.fd = self.open_node(path, self.missing_node)
        if isinstance(self.iommufd, int):
            iommufd = self.iommufd
        else:
            iommufd = self.open_node(
                self.iommufd, "load iommufd (`modprobe iommufd`) or open the device by group"
            )
        bind = _abi.vfio_device_bind_iommufd(
            argsz=ctypes.sizeof(_abi.vfio_device_bind_iommufd), flags=0, iommufd=iommufd
        )
        buf = bytearray(bytes(bind))
        self.calls.ioctl(
            self.fd,
            "VFIO_DEVICE_BIND_IOMMUFD",
            _abi.VFIO_DEVICE_BIND_IOMMUFD,
            buf,
            bind_hints(path),
        )
        self.devid = _abi.vfio_device_bind_iommufd.from_buffer_copy(buf).out_devid

    def open_group(self, path: str) -> None:
        """Legacy group: the device fd from VFIO_GROUP_GET_DEVICE_FD on the
        group node, which this process's producers of the group's devices
        share (a group node opens once: a multifunction device's functions sit
        in one group)."""
        self.mode = "group"
        if not self.device_name:
            raise self.calls.refuse(
                f"{path} is a VFIO group: say which of its devices to open with "
                "device_name (its PCI address, as listed in "
                "/sys/kernel/iommu_groups/<group>/devices)"
            )
        self.node = VfioGroupNode.share(self.seam, path, lambda: self.open_group_node(path))
        self.take_device(self.node.fd)

    def open_group_node(self, path: str) -> VfioGroupNode:
        """The group node, opened: it must be viable (every device in it bound
        to vfio-pci or to nothing) and in a container with an IOMMU model set
        before VFIO_GROUP_GET_DEVICE_FD hands out a device fd. On failure what
        it opened is closed again."""
        taken, self.owned = self.owned, []
        try:
            self.set_up_group(path)
            return VfioGroupNode(self.owned[0], self.owned, self.calls)
        except BaseException:
            self.release()
            raise
        finally:
            self.owned = taken

    def set_up_group(self, path: str) -> None:
        group = self.open_node(path, self.missing_node)
        status = _abi.vfio_group_status(argsz=ctypes.sizeof(_abi.vfio_group_status))
        buf = bytearray(bytes(status))
        self.calls.ioctl(group, "VFIO_GROUP_GET_STATUS", _abi.VFIO_GROUP_GET_STATUS, buf)
        flags = _abi.vfio_group_status.from_buffer_copy(buf).flags
        if not flags & _abi.VFIO_GROUP_FLAGS_VIABLE:
            number = os.path.basename(path).removeprefix("noiommu-")
            raise self.calls.refuse(
                f"VFIO group {path} is not viable: every device in "
                f"/sys/kernel/iommu_groups/{number}/devices must be bound to vfio-pci "
                "(or to no driver) before any of them can be used; "
                + BIND_HOWTO.replace("bind the device", "bind each of them"),
                errno.EPERM,
            )
        if not flags & _abi.VFIO_GROUP_FLAGS_CONTAINER_SET:
            self.attach_container(group)

    def take_device(self, group: int) -> None:
        """VFIO_GROUP_GET_DEVICE_FD: the device fd of ``device_name``, owned."""
        assert self.device_name is not None
        name = bytearray(self.device_name.encode() + b"\0")
        self.fd = self.calls.ioctl(
            group,
            "VFIO_GROUP_GET_DEVICE_FD",
            _abi.VFIO_GROUP_GET_DEVICE_FD,
            name,
            dict.fromkeys(
                (errno.ENODEV, errno.EINVAL, errno.EBUSY),
                f"is {self.device_name!r} one of the devices listed in "
                "/sys/kernel/iommu_groups/<group>/devices, bound to vfio-pci and not open "
                "elsewhere?",
            ),
        )
        self.owned.append(self.fd)

    def attach_container(self, group: int) -> None:
        container = self.open_node(CONTAINER_PATH, "load vfio (`modprobe vfio-pci`)")
        ioctl = self.calls.ioctl
        version = ioctl(container, "VFIO_GET_API_VERSION", _abi.VFIO_GET_API_VERSION, 0)
        if version != _abi.VFIO_API_VERSION:
            raise self.calls.refuse(
                f"{CONTAINER_PATH} speaks VFIO API {version}, this plugin "
                f"{_abi.VFIO_API_VERSION}; hand over a device fd instead (device_fd=...)",
                errno.EPROTO,
            )
        ioctl(
            group,
            "VFIO_GROUP_SET_CONTAINER",
            _abi.VFIO_GROUP_SET_CONTAINER,
            bytearray(bytes(ctypes.c_int32(container))),
        )
        for model in (_abi.VFIO_TYPE1v2_IOMMU, _abi.VFIO_TYPE1_IOMMU, _abi.VFIO_NOIOMMU_IOMMU):
            if ioctl(container, "VFIO_CHECK_EXTENSION", _abi.VFIO_CHECK_EXTENSION, model):
                ioctl(container, "VFIO_SET_IOMMU", _abi.VFIO_SET_IOMMU, model)
                return
        raise self.calls.refuse(
            "the VFIO container supports no IOMMU model this plugin knows (type1v2, type1, "
            "noiommu); hand over a device fd from a VMM that set one up (device_fd=...)",
            errno.ENODEV,
        )
