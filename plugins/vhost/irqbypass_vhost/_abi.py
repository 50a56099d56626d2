"""The vhost ABI this plugin speaks: its own ioctl (VHOST_GET_FEATURES), and the
vhost ioctls and struct every vhost device answers, which are the core's.

Every value here is checked against what gcc computes from
``/usr/include/linux/vhost.h`` by ``tests/plugins/vhost/test_abi.py``.
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

VHOST_GET_FEATURES = irqbypass.system.ioctl_number(
    irqbypass.system.IOC_READ, VHOST_VIRTIO, 0x00, ctypes.sizeof(ctypes.c_uint64)
)
