"""irqbypass-posted: the bypass in software, a VT-d posted-interrupt descriptor.

Once a producer is paired with a ``posted-interrupt`` consumer, its interrupts
are posted straight into a descriptor (``struct pi_desc``: PIR, ON, SN, NV,
NDST) that the vCPU side drains, instead of going through an eventfd and a
host thread. See ``PostedDescriptor`` for the layout and the posting rules.
"""

from __future__ import annotations

import irqbypass
import irqbypass.plugin

from ._backing import RECORD_SIZE
from ._consumer import DEFAULT_NV, PostedInterruptConsumer
from ._descriptor import (
    DESCRIPTOR_SIZE,
    MAPPING_SIZE,
    LockMode,
    Port,
    PostedDescriptor,
    SyncResult,
)
from ._settings import PostedSettings

__all__ = [
    "DEFAULT_NV",
    "DESCRIPTOR_SIZE",
    "MAPPING_SIZE",
    "RECORD_SIZE",
    "LockMode",
    "Port",
    "PostedDescriptor",
    "PostedInterruptConsumer",
    "PostedSettings",
    "SyncResult",
    "irqbypass_register_kinds",
]


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.consumer("posted-interrupt", PostedInterruptConsumer.from_spec)
