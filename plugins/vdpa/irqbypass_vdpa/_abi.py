"""The vhost-vdpa ABI this plugin speaks: ioctl numbers, struct layouts, and
the virtio status bits.

Every value here is checked against what gcc computes from
``/usr/include/linux/vhost.h`` and ``linux/virtio_config.h`` by
``tests/plugins/vdpa/test_abi.py``.
"""

from __future__ import annotations

import ctypes

import irqbypass
import irqbypass.system

VHOST_VIRTIO = 0xAF


class vhost_vring_state(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint), ("num", ctypes.c_uint)]


class vhost_vring_file(ctypes.Structure):
    """``fd`` -1 unbinds."""

    _fields_ = [("index", ctypes.c_uint), ("fd", ctypes.c_int)]


def _ioc(direction: int, nr: int, size: int) -> int:
    return irqbypass.system.ioctl_number(direction, VHOST_VIRTIO, nr, size)


_IOC_NONE, _IOC_WRITE, _IOC_READ = (
    irqbypass.system.IOC_NONE,
    irqbypass.system.IOC_WRITE,
    irqbypass.system.IOC_READ,
)
_R, _W = _IOC_READ, _IOC_WRITE
VHOST_SET_OWNER = _ioc(_IOC_NONE, 0x01, 0)
VHOST_SET_VRING_CALL = _ioc(_W, 0x21, ctypes.sizeof(vhost_vring_file))
VHOST_VDPA_GET_DEVICE_ID = _ioc(_R, 0x70, ctypes.sizeof(ctypes.c_uint32))
VHOST_VDPA_GET_STATUS = _ioc(_R, 0x71, ctypes.sizeof(ctypes.c_uint8))
VHOST_VDPA_GET_VQS_COUNT = _ioc(_R, 0x80, ctypes.sizeof(ctypes.c_uint32))
VHOST_VDPA_GET_VRING_GROUP = _ioc(_R | _W, 0x7B, ctypes.sizeof(vhost_vring_state))

# linux/virtio_config.h: the device status byte
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# linux/virtio_ids.h, for messages
VIRTIO_IDS = {1: "net", 2: "block", 3: "console", 4: "rng", 5: "balloon", 8: "scsi", 9: "9p",
              16: "gpu", 18: "input", 19: "vsock", 20: "crypto", 26: "fs"}  # fmt: skip
