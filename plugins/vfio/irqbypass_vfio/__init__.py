"""irqbypass-vfio: the ``vfio`` producer kind, one vector of a VFIO device.

See :class:`VfioProducer` and ``docs/plugins/vfio.md``. ``irqbypass_vfio.testing``
holds a model of a vfio-pci device behind the same seam, for tests without one.
"""

from __future__ import annotations

import os

import irqbypass
import irqbypass.plugin
import irqbypass.system

from .producer import INDEX_NAMES, DeviceInfo, IrqInfo, VfioProducer

#: the OS calls the producer makes (the core's one seam), kept here by their old names
RealSeam = irqbypass.system.RealSeam
Seam = irqbypass.system.Seam

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


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.producer("vfio", VfioProducer.from_spec, availability=unavailable_reason)
