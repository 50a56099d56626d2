"""The vhost ABI this plugin speaks: three ioctl numbers and one struct.

Every value here is checked against what gcc computes from
``/usr/include/linux/vhost.h`` by ``tests/plugins/vhost/test_abi.py``.
"""

from __future__ import annotations

import ctypes

import irqbypass
import irqbypass.system

VHOST_VIRTIO = 0xAF


class vhost_vring_file(ctypes.Structure):
    """``fd`` -1 unbinds."""

    _fields_ = [("index", ctypes.c_uint), ("fd", ctypes.c_int)]


VHOST_GET_FEATURES = irqbypass.system.ioctl_number(
    irqbypass.system.IOC_READ, VHOST_VIRTIO, 0x00, ctypes.sizeof(ctypes.c_uint64)
)
VHOST_SET_OWNER = irqbypass.system.ioctl_number(irqbypass.system.IOC_NONE, VHOST_VIRTIO, 0x01, 0)
VHOST_SET_VRING_CALL = irqbypass.system.ioctl_number(
    irqbypass.system.IOC_WRITE, VHOST_VIRTIO, 0x21, ctypes.sizeof(vhost_vring_file)
)
