"""irqbypass-vhost: the ``vhost`` producer kind, a kernel vhost device's virtqueue call interrupt.

See :class:`VhostProducer` and ``docs/plugins/vhost.md``. ``irqbypass_vhost.testing``
holds a model of a vhost device behind the core's seam, for tests without one.
"""

from __future__ import annotations

import os

import irqbypass
import irqbypass.plugin

from .producer import VHOST_NODES, VhostProducer

__all__ = ["VHOST_NODES", "VhostProducer", "irqbypass_register_kinds", "unavailable_reason"]


def unavailable_reason() -> str | None:
    """Why no vhost device can be opened here, or None."""
    if not any(os.path.exists(node) for node in VHOST_NODES):
        return "no /dev/vhost-net or /dev/vhost-vsock: `modprobe vhost_net` (or vhost_vsock)"
    return None


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.producer("vhost", VhostProducer.from_spec, availability=unavailable_reason)
