"""irqbypass-kvm: the ``kvm-irqfd`` consumer kind, and a tiny real guest.

:class:`KvmIrqfdConsumer` assigns the token eventfd as a KVM irqfd on a VM's
GSI (pin, resampled pin for INTx, or MSI route), so interrupts are injected
inside the kernel. :class:`Guest` is a one-vCPU real-mode VM that counts the
interrupts it receives (on its 8259 PIC, or per vector on its x2APIC), so that
delivery is proved, not assumed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import irqbypass
import irqbypass.plugin

from . import _abi
from ._kvm import DEFAULT_DEVICE, Vm, open_device
from ._routing import MsiRoute
from ._settings import KvmSettings
from .consumer import KvmIrqfdConsumer
from .guest import APIC_MODES, ELCR_LINES, GUEST_LINES, MSI_VECTORS, Guest

__all__ = [
    "APIC_MODES",
    "ELCR_LINES",
    "GUEST_LINES",
    "MSI_VECTORS",
    "Guest",
    "KvmIrqfdConsumer",
    "KvmSettings",
    "MsiRoute",
    "Vm",
    "irqbypass_register_kinds",
    "unavailable_reason",
]


@irqbypass.plugin.uninterrupted
def unavailable_reason(device: str = DEFAULT_DEVICE) -> str | None:
    """Why this plugin cannot run a guest here, or None when it can.

    Opens the device, checks the capabilities the consumer needs, and creates
    and destroys a VM; a demo can skip its kvm pair with this reason.
    Uninterrupted (a few ioctls): a Ctrl-C never leaves the device or the VM open.
    """
    try:
        kvm_fd = open_device(device)
    except irqbypass.DeviceError as exc:
        return exc.message
    try:
        try:
            vm = Vm.create(kvm_fd, device)
        except irqbypass.DeviceError as exc:
            return f"{device} cannot create a VM ({exc.message})"
        try:
            for cap, what in (
                (_abi.KVM_CAP_IRQCHIP, "an in-kernel irqchip"),
                (_abi.KVM_CAP_IRQFD, "irqfd"),
            ):
                if vm.check_extension(cap) <= 0:
                    return f"KVM on this host lacks {what}"
        except irqbypass.DeviceError as exc:
            return exc.message
        finally:
            vm.close()
    finally:
        os.close(kvm_fd)
    return None


def _entry_unavailable(options: Mapping[str, Any]) -> str | None:
    """The availability check of one topology entry: its own ``device``."""
    device = options.get("device", DEFAULT_DEVICE)
    if not isinstance(device, str):
        return None  # the factory refuses it, naming the key
    return unavailable_reason(device)


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.consumer("kvm-irqfd", KvmIrqfdConsumer.from_spec, availability=_entry_unavailable)
