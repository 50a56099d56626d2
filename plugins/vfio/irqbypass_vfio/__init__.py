"""irqbypass-vfio: the ``vfio`` producer kind, one vector of a VFIO device.

See :class:`VfioProducer` and ``docs/plugins/vfio.md``. ``irqbypass_vfio.testing``
holds a model of a vfio-pci device behind the same seam, for tests without one.
"""

from __future__ import annotations

import os

import irqbypass

from ._seam import RealSeam, Seam
from .producer import INDEX_NAMES, DeviceInfo, IrqInfo, VfioProducer

__all__ = [
    "INDEX_NAMES",
    "DeviceInfo",
    "IrqInfo",
    "RealSeam",
    "Seam",
    "VfioProducer",
    "irqbypass_register_kinds",
    "unavailable_reason",
]


def unavailable_reason() -> str | None:
    """Why no VFIO device can be opened here, or None."""
    if not os.path.isdir("/dev/vfio"):
        return "/dev/vfio does not exist: load vfio-pci and bind a device to it"
    return None


@irqbypass.hookimpl
def irqbypass_register_kinds(register: irqbypass.KindRegistrar) -> None:
    register.producer("vfio", VfioProducer.from_spec, availability=unavailable_reason)
