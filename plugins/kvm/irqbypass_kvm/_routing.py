"""A VM's GSI routing table, kept in the very buffer KVM_SET_GSI_ROUTING takes.

The ioctl replaces the VM's whole table, so every write hands KVM all of it.
Rebuilding that table in Python for each change made opening N MSI consumers
cost O(N^2). Here the table lives in one ctypes buffer: adding a route writes
one entry at the end, removing one moves the last entry into its slot, and a
batch of changes is one ioctl. What stays O(N) per write is the kernel's own
work (it copies and rebuilds its table on every call), which no caller can
avoid; batches are how to pay it once for many routes.

A write is all or nothing: when KVM refuses it, the buffer goes back to what
KVM has, and the route it refuses is found (by bisection, a few more ioctls,
only on that path) so that the error can name it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import irqbypass
import irqbypass.plugin

from . import _abi

#: KVM's bound on routing entries per VM and on GSIs (KVM_MAX_IRQ_ROUTES)
MAX_GSI_ROUTES = 4096
#: the x86 default table: GSI n -> IOAPIC pin n (0-23), and PIC pin n for n < 16
DEFAULT_ENTRIES = _abi.IOAPIC_NUM_PINS + _abi.PIC_NUM_PINS
#: MSI routes that fit beside the default entries: KVM counts entries, not GSIs
MAX_MSI_ROUTES = MAX_GSI_ROUTES - DEFAULT_ENTRIES
#: the first GSI an MSI route may use (below are the irqchip's pins)
FIRST_MSI_GSI = _abi.IOAPIC_NUM_PINS

_HEADER = ctypes.sizeof(_abi.kvm_irq_routing)
_ENTRY = ctypes.sizeof(_abi.kvm_irq_routing_entry)

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int


@dataclass(frozen=True)
class MsiRoute:
    """One MSI routing entry: where the message goes (address), what it says
    (data), and the requester id for platforms that need it (devid)."""

    address: int
    data: int
    devid: int | None = None

    def __post_init__(self) -> None:
        for key in ("address", "data", "devid"):
            value = getattr(self, key)
            if (value is not None or key != "devid") and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise irqbypass.InvalidEndpointError(
                    f"MSI {key} must be an int, not {irqbypass.plugin.show_value(value)}"
                )
        if not 0 <= self.address < 2**64 or not 0 <= self.data < 2**32:
            raise irqbypass.InvalidEndpointError(
                f"MSI address must fit 64 bits and data 32 bits (got address="
                f"{self.address:#x}, data={self.data:#x})"
            )
        if self.devid is not None and not 0 <= self.devid < 2**32:
            raise irqbypass.InvalidEndpointError(f"MSI devid {self.devid:#x} does not fit 32 bits")


def describe(route: MsiRoute) -> str:
    devid = "" if route.devid is None else f" devid={route.devid:#x}"
    return f"address={route.address:#x} data={route.data:#x}{devid}"


def write_default(entries: ctypes.Array[_abi.kvm_irq_routing_entry]) -> int:
    """Write the in-kernel irqchip's default x86 table (what KVM_CREATE_IRQCHIP
    sets) at the start of ``entries``; return how many entries it took."""
    i = 0
    for gsi in range(_abi.IOAPIC_NUM_PINS):
        chips = [(_abi.KVM_IRQCHIP_IOAPIC, gsi)]
        if gsi < _abi.PIC_NUM_PINS:
            pic = _abi.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else _abi.KVM_IRQCHIP_PIC_SLAVE
            chips.insert(0, (pic, gsi % 8))
        for chip, pin in chips:
            entry = entries[i]
            entry.gsi, entry.type = gsi, _abi.KVM_IRQ_ROUTING_IRQCHIP
            entry.u.irqchip.irqchip, entry.u.irqchip.pin = chip, pin
            i += 1
    return i


#: an MSI ``struct kvm_irq_routing_entry``: gsi, type, flags, pad, then
#: ``u.msi`` (address_lo, address_hi, data, devid) and the rest of the union
_MSI_ENTRY = struct.Struct("<IIIIIIII16x")


def _default_bytes() -> bytes:
    entries = (_abi.kvm_irq_routing_entry * DEFAULT_ENTRIES)()
    write_default(entries)
    return bytes(entries)


#: the default entries as the ioctl takes them, built once
DEFAULT_BYTES = _default_bytes()


class RoutingTable:
    """The default entries plus one MSI entry per routed GSI, in KVM's format.

    :attr:`routes` is what KVM has (after the last successful write). The
    buffer holds room for :data:`MAX_GSI_ROUTES` entries (196 KiB).
    """

    def __init__(self) -> None:
        self._buf = ctypes.create_string_buffer(_HEADER + _ENTRY * MAX_GSI_ROUTES)
        self._address = ctypes.addressof(self._buf)
        self._header = _abi.kvm_irq_routing.from_buffer(self._buf)
        self._entries = (_abi.kvm_irq_routing_entry * MAX_GSI_ROUTES).from_buffer(
            self._buf, _HEADER
        )
        ctypes.memmove(self._address + _HEADER, DEFAULT_BYTES, len(DEFAULT_BYTES))
        self._defaults = DEFAULT_ENTRIES
        self._nr = self._defaults  # entries in the buffer (the header's nr, once written)
        self._header.nr = self._nr
        self._slot: dict[int, int] = {}  # GSI -> index of its MSI entry in the buffer
        self.routes: dict[int, MsiRoute] = {}

    @property
    def entries(self) -> int:
        """Entries in the table KVM has: the defaults plus one per MSI route."""
        return self._defaults + len(self.routes)

    def write(
        self,
        fd: int,
        changes: Iterable[tuple[int, MsiRoute | None]],
        names: Mapping[int, str] | None = None,
    ) -> None:
        """Add or change (a route) or remove (None) MSI routes with one
        KVM_SET_GSI_ROUTING on VM ``fd``; all or nothing. ``names`` says whose
        route each GSI is, for the error."""
        staged = dict(changes)
        slot = self._slot
        total = self._defaults + len(slot)
        for gsi, route in staged.items():
            if route is None:
                total -= gsi in slot
            else:
                total += gsi not in slot
        if total > MAX_GSI_ROUTES:
            raise irqbypass.DeviceError(
                f"the VM's GSI routing table would hold {total} entries, and KVM allows "
                f"{MAX_GSI_ROUTES} (KVM_MAX_IRQ_ROUTES): the irqchip's {self._defaults} "
                f"default entries and at most {MAX_MSI_ROUTES} MSI routes; close or mask "
                "other vectors first",
                errno=errno.ENOSPC,
            )
        put, drop = self._put, self._drop
        for gsi, route in staged.items():
            if route is None:
                drop(gsi)
            else:
                put(gsi, route)
        self._header.nr = self._nr
        ret = _ioctl(fd, _abi.KVM_SET_GSI_ROUTING, self._address)
        if ret < 0:
            err = ctypes.get_errno()
            self._load(self.routes)
            added = [(gsi, route) for gsi, route in staged.items() if route is not None]
            culprit = self._find_refused(fd, added) if len(added) > 1 else None
            if culprit is None and len(added) == 1:
                culprit = added[0]
            what = (
                f"{len(staged)} route change(s), {self._defaults + len(self.routes)} entries before"
            )
            if culprit is not None:
                gsi, route = culprit
                owner = f" of {names[gsi]}" if names and gsi in names else ""
                what = f"KVM refuses the MSI route{owner} on GSI {gsi} ({describe(route)})"
            raise irqbypass.DeviceError(
                f"KVM_SET_GSI_ROUTING failed: {os.strerror(err)} (errno {err}); {what}; "
                "nothing was changed",
                errno=err,
            )
        for gsi, route in staged.items():
            if route is None:
                self.routes.pop(gsi, None)
            else:
                self.routes[gsi] = route

    def _put(self, gsi: int, route: MsiRoute) -> None:
        """Write ``route`` into ``gsi``'s slot, or a new one at the end; the
        header's count is written by the caller (``self._nr``)."""
        slot = self._slot.get(gsi)
        if slot is None:
            slot = self._slot[gsi] = self._nr
            self._nr = slot + 1
        devid = route.devid
        _MSI_ENTRY.pack_into(
            self._buf,
            _HEADER + slot * _ENTRY,
            gsi,
            _abi.KVM_IRQ_ROUTING_MSI,
            0 if devid is None else _abi.KVM_MSI_VALID_DEVID,
            0,
            route.address & 0xFFFFFFFF,
            route.address >> 32,
            route.data,
            devid or 0,
        )

    def _drop(self, gsi: int) -> None:
        slot = self._slot.pop(gsi, None)
        if slot is None:
            return
        last = self._nr - 1
        if slot != last:
            ctypes.memmove(
                self._address + _HEADER + slot * _ENTRY,
                self._address + _HEADER + last * _ENTRY,
                _ENTRY,
            )
            self._slot[self._entries[slot].gsi] = slot
        self._nr = last

    def _load(self, routes: Mapping[int, MsiRoute]) -> None:
        """Make the buffer hold exactly the defaults and ``routes``."""
        self._nr = self._defaults
        self._slot = {}
        for gsi, route in routes.items():
            self._put(gsi, route)
        self._header.nr = self._nr

    def _find_refused(
        self, fd: int, added: list[tuple[int, MsiRoute]]
    ) -> tuple[int, MsiRoute] | None:
        """The route KVM refuses beside what it has, by bisection; the buffer
        and KVM's table are left as KVM had them."""
        try:
            suspects = added
            while len(suspects) > 1:
                half = suspects[: len(suspects) // 2]
                suspects = half if not self._accepted(fd, half) else suspects[len(half) :]
            return suspects[0] if not self._accepted(fd, suspects) else None
        finally:
            self._load(self.routes)
            _ioctl(fd, _abi.KVM_SET_GSI_ROUTING, self._address)

    def _accepted(self, fd: int, routes: list[tuple[int, MsiRoute]]) -> bool:
        self._load({**self.routes, **dict(routes)})
        ret: int = _ioctl(fd, _abi.KVM_SET_GSI_ROUTING, self._address)
        return ret == 0

    def buffer(self) -> bytes:
        """The bytes the next write would hand KVM (for tests and benchmarks)."""
        self._header.nr = self._nr
        return ctypes.string_at(self._address, _HEADER + _ENTRY * self._nr)
