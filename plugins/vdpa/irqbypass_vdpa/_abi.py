"""The vhost-vdpa ABI this plugin speaks: ioctl numbers, struct layouts, and
the virtio status bits (the vhost ioctls every vhost device answers are the
core's :class:`irqbypass.plugin.VhostVirtqueue`'s).

Every value here is checked against what gcc computes from
``/usr/include/linux/vhost.h`` and ``linux/virtio_config.h`` by
``tests/plugins/vdpa/test_abi.py``.
"""

from __future__ import annotations

import ctypes

import irqbypass
import irqbypass.plugin
import irqbypass.system

_VQ = irqbypass.plugin.VhostVirtqueue
VHOST_VIRTIO = _VQ.VHOST_VIRTIO
vhost_vring_file = _VQ.vhost_vring_file
VHOST_SET_OWNER = _VQ.VHOST_SET_OWNER
VHOST_SET_VRING_CALL = _VQ.VHOST_SET_VRING_CALL


class vhost_vring_state(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint), ("num", ctypes.c_uint)]


def _ioc(direction: int, nr: int, size: int) -> int:
    return irqbypass.system.ioctl_number(direction, VHOST_VIRTIO, nr, size)


_R, _W = irqbypass.system.IOC_READ, irqbypass.system.IOC_WRITE
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
