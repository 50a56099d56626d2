"""QEMU's edu PCI device (1234:11e8) through a VFIO device fd, for the vfio
real-device tests: BAR0+0x60 raises an interrupt (MSI when enabled, else INTx,
held asserted until BAR0+0x64 acks it), BAR0+0x24 is the interrupt status."""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from irqbypass_vfio import _abi as abi

EDU_RAISE, EDU_ACK, EDU_STATUS = 0x60, 0x64, 0x24
VFIO_DEVICE_GET_REGION_INFO = abi._io(abi.VFIO_BASE + 8)
CONFIG_REGION = 7  # VFIO_PCI_CONFIG_REGION_INDEX
PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 4, 0x2, 0x4


class vfio_region_info(ctypes.Structure):
    _fields_ = [
        ("argsz", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("cap_offset", ctypes.c_uint32),
        ("size", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
    ]


def region_offset(fd: int, index: int) -> int:
    buf = bytearray(bytes(vfio_region_info(argsz=ctypes.sizeof(vfio_region_info), index=index)))
    fcntl.ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, buf, True)
    return int(vfio_region_info.from_buffer_copy(buf).offset)


class Edu:
    """QEMU's edu device through a VFIO device fd (BAR0 and config space)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.bar0 = region_offset(fd, 0)
        self.config = region_offset(fd, CONFIG_REGION)
        command = int.from_bytes(os.pread(fd, 2, self.config + PCI_COMMAND), "little")
        command |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER  # MSI is a DMA write
        os.pwrite(fd, command.to_bytes(2, "little"), self.config + PCI_COMMAND)

    def raise_irq(self) -> None:
        os.pwrite(self.fd, (1).to_bytes(4, "little"), self.bar0 + EDU_RAISE)

    def ack(self) -> None:
        os.pwrite(self.fd, (1).to_bytes(4, "little"), self.bar0 + EDU_ACK)

    def status(self) -> int:
        return int.from_bytes(os.pread(self.fd, 4, self.bar0 + EDU_STATUS), "little")

    def unmask_intx(self) -> None:
        """What a VMM does at the guest's EOI (vfio-pci automasks INTx)."""
        flags = abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_UNMASK
        fcntl.ioctl(self.fd, abi.VFIO_DEVICE_SET_IRQS, abi.irq_set(flags, 0, 0, 1), True)


def group_of(bdf: str) -> str:
    return "/dev/vfio/" + os.path.basename(os.readlink(f"/sys/bus/pci/devices/{bdf}/iommu_group"))


@contextmanager
def device_fd(bdf: str) -> Iterator[int]:
    """A device fd the way a VMM gets one: group, container, IOMMU, GET_DEVICE_FD."""
    group = os.open(group_of(bdf), os.O_RDWR)
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    fd = -1
    try:
        fcntl.ioctl(group, abi.VFIO_GROUP_SET_CONTAINER, bytes(ctypes.c_int32(container)))
        fcntl.ioctl(container, abi.VFIO_SET_IOMMU, abi.VFIO_TYPE1v2_IOMMU)
        fd = fcntl.ioctl(group, abi.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))
        yield fd
    finally:
        for f in (fd, group, container):
            if f >= 0:
                os.close(f)
