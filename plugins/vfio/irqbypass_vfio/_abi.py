"""The VFIO ABI this plugin speaks: ioctl numbers, flags and struct layouts.

Every value here is checked against what gcc computes from
``/usr/include/linux/vfio.h`` by ``tests/plugins/vfio/test_abi.py``. VFIO
ioctls are all ``_IO(';', 100 + n)`` (the header encodes neither direction nor
size; the payload's ``argsz`` says how big it is).
"""

from __future__ import annotations

import ctypes

import irqbypass
import irqbypass.system

VFIO_TYPE = ord(";")
VFIO_BASE = 100


def _io(nr: int) -> int:
    """``_IO(VFIO_TYPE, nr)``: direction 0, size 0."""
    return irqbypass.system.ioctl_number(irqbypass.system.IOC_NONE, VFIO_TYPE, nr, 0)


VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_NOIOMMU_IOMMU = 8

# container, group, device ioctls
VFIO_GET_API_VERSION = _io(VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _io(VFIO_BASE + 1)
VFIO_SET_IOMMU = _io(VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _io(VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _io(VFIO_BASE + 4)
VFIO_GROUP_GET_DEVICE_FD = _io(VFIO_BASE + 6)
VFIO_DEVICE_GET_INFO = _io(VFIO_BASE + 7)
VFIO_DEVICE_GET_IRQ_INFO = _io(VFIO_BASE + 9)
VFIO_DEVICE_SET_IRQS = _io(VFIO_BASE + 10)
#: Linux 6.6+ (the iommufd device cdev); absent from older UAPI headers.
VFIO_DEVICE_BIND_IOMMUFD = _io(VFIO_BASE + 18)

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5

VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

u32, s32, u64 = ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64

#: how every VFIO ioctl's argument begins: its size as the caller made it (the
#: kernel checks it against its ``minsz``, and a later kernel's longer struct
#: against it) and its flags
_ARGSZ_FLAGS = (("argsz", u32), ("flags", u32))


class vfio_group_status(ctypes.Structure):
    _fields_ = _ARGSZ_FLAGS


class vfio_device_info(ctypes.Structure):
    _fields_ = [*_ARGSZ_FLAGS, ("num_regions", u32), ("num_irqs", u32), ("cap_offset", u32)]


class vfio_irq_info(ctypes.Structure):
    _fields_ = [*_ARGSZ_FLAGS, ("index", u32), ("count", u32)]


class vfio_irq_set(ctypes.Structure):
    """The header; ``count`` data items (s32 eventfds, u8 bools) follow it."""

    _fields_ = [*_ARGSZ_FLAGS, ("index", u32), ("start", u32), ("count", u32)]


class vfio_device_bind_iommufd(ctypes.Structure):
    """The 6.6 layout; later kernels append ``token_uuid_ptr`` behind a flag,
    and accept this shorter ``argsz`` (their ``minsz`` ends at ``out_devid``)."""

    _fields_ = [*_ARGSZ_FLAGS, ("iommufd", s32), ("out_devid", u32)]


def irq_set(flags: int, index: int, start: int, count: int, data: bytes = b"") -> bytearray:
    """A ``vfio_irq_set`` buffer: the header followed by ``data``."""
    header = vfio_irq_set(
        argsz=ctypes.sizeof(vfio_irq_set) + len(data),
        flags=flags,
        index=index,
        start=start,
        count=count,
    )
    return bytearray(bytes(header) + data)


def eventfd_data(*fds: int) -> bytes:
    """The ``DATA_EVENTFD`` payload: one s32 per subindex (-1 detaches)."""
    return b"".join(bytes(s32(fd)) for fd in fds)
