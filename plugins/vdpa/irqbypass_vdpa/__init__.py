"""irqbypass-vdpa: the ``vdpa`` producer kind, a vhost-vdpa virtqueue's call interrupt.

See :class:`VdpaProducer` and ``docs/plugins/vdpa.md``. ``irqbypass_vdpa.testing``
holds a model of a vhost-vdpa device behind the same seam, for tests without one.
"""

from __future__ import annotations

import glob

import irqbypass
import irqbypass.plugin
import irqbypass.system

from .producer import VdpaProducer

#: the OS calls the producer makes (the core's one seam), kept here by their old names
RealSeam = irqbypass.system.RealSeam
Seam = irqbypass.system.Seam

__all__ = ["RealSeam", "Seam", "VdpaProducer", "irqbypass_register_kinds", "unavailable_reason"]


def unavailable_reason() -> str | None:
    """Why no vhost-vdpa device can be opened here, or None."""
    if not glob.glob("/dev/vhost-vdpa-*"):
        return "no /dev/vhost-vdpa-N: load vhost_vdpa and create a device with `vdpa dev add`"
    return None


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.producer("vdpa", VdpaProducer.from_spec, availability=unavailable_reason)
