"""What vfio-pci's refusals mean and what to do: the hints of the producer's messages."""

from __future__ import annotations

import errno

__all__ = ["ATTACH", "BIND_HOWTO", "bind_hints", "fd_kind", "generic_hint"]

BIND_HOWTO = (
    "bind the device to vfio-pci first: `modprobe vfio-pci; "
    "echo vfio-pci > /sys/bus/pci/devices/<bdf>/driver_override; "
    "echo <bdf> > /sys/bus/pci/devices/<bdf>/driver/unbind; "
    "echo <bdf> > /sys/bus/pci/drivers_probe` (then /dev/vfio/<group> and, "
    "on kernels with the VFIO cdev, /dev/vfio/devices/vfioN appear)"
)


ATTACH = {
    errno.EINVAL: (
        "the device refused the eventfd for this vector: vfio-pci enables only one "
        "of INTx, MSI and MSI-X at a time, so if the VMM (or another producer on "
        "this fd) enabled another of them, it must disable that first; for MSI/MSI-X "
        "already enabled with fewer vectors on a NORESIZE index, the VMM must "
        "re-enable it with more (or open the vectors as one group); on a cdev, bind "
        "it to an iommufd first (VFIO_DEVICE_BIND_IOMMUFD)"
    )
}


def fd_kind(ioctl_name: str) -> str:
    if ioctl_name.startswith("VFIO_GROUP"):
        return "group"
    if ioctl_name in ("VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION", "VFIO_SET_IOMMU"):
        return "container"
    return "device"


def bind_hints(path: str) -> dict[int, str]:
    return {
        errno.EINVAL: f"{path} is already bound to an iommufd, or the iommufd fd is not one",
        errno.EBADF: "the iommufd fd is not open",
        errno.EPERM: (
            "the platform lacks interrupt remapping: enable it (intel_iommu=on), or load "
            "iommufd with allow_unsafe_interrupts=1 only if you accept the risk"
        ),
        errno.ENOTTY: (
            f"{path} is not a VFIO device cdev, or the kernel predates the VFIO cdev (6.6): "
            'open the device by group (device = "/dev/vfio/<group>", device_name = ...)'
        ),
    }


def generic_hint(code: int, op: str) -> str:
    if code == errno.EINVAL:
        return (
            f"the kernel refused the arguments of {op}: check the index and vector against "
            "VFIO_DEVICE_GET_IRQ_INFO (stats/irq_info), and that a cdev is bound to an iommufd"
        )
    if code == errno.EBUSY:
        return (
            "the device or its interrupt is in use (another VMM, or a second user of the "
            "group): close the other user, or take its device fd (device_fd=...)"
        )
    if code == errno.ENODEV:
        return "the device is gone (unbound from vfio-pci or hot-unplugged): bind it again"
    if code in (errno.EPERM, errno.EACCES):
        return "permission denied: run as root or grant this user the VFIO nodes"
    if code == errno.ENOTTY:
        return "the fd does not implement this VFIO ioctl: pass a VFIO device fd"
    return "see the kernel log (dmesg) for the device's complaint"
