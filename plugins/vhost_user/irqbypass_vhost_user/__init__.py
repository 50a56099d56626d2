"""irqbypass-vhost-user: the ``vhost-user`` producer kind, one virtqueue's call
interrupt of a vhost-user back-end in another process.

See :class:`VhostUserProducer` (its options are one
:class:`VhostUserSettings`) and ``docs/plugins/vhost-user.md``. The wire
format is in ``_wire``; :class:`Connection` speaks it with bounded waits;
:class:`GuestMemory`, :class:`SplitRing` and :class:`BlkDriver` are the
front-end's memory, ring and a minimal virtio-blk driver that makes
completions; :class:`StorageDaemon` runs a private qemu-storage-daemon.
"""

from __future__ import annotations

import irqbypass
import irqbypass.plugin

from ._settings import VhostUserSettings
from .blk import BlkDriver
from .connection import Connection
from .daemon import StorageDaemon, unavailable_reason
from .errors import BackendGoneError, BackendTimeoutError, ProtocolError, VhostUserError
from .producer import VhostUserProducer
from .ring import GuestMemory, SplitRing

__all__ = [
    "BackendGoneError",
    "BackendTimeoutError",
    "BlkDriver",
    "Connection",
    "GuestMemory",
    "ProtocolError",
    "SplitRing",
    "StorageDaemon",
    "VhostUserError",
    "VhostUserProducer",
    "VhostUserSettings",
    "irqbypass_register_kinds",
    "unavailable_reason",
]


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    # availability is the reference back-end's: a kind has one check, not one
    # per entry, so an optional pair is left out where qemu-storage-daemon is
    # missing even if its own back-end runs (make such a pair not optional)
    register.producer("vhost-user", VhostUserProducer.from_spec, availability=unavailable_reason)
