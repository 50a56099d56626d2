"""A ``kvm-irqfd`` consumer's settings: its options as one value, checked once.

:class:`KvmSettings` holds the options as given (the Python constructor's
keywords, or a topology entry's table) and reads them, once, into two types:
the *target*, the VM the irqfd goes to (:class:`OwnGuest`, :class:`GivenGuest`,
:class:`VmFd`, :class:`GivenVm`), and the *route*, what the GSI is (:class:`Pin`
or :class:`Msi`). The consumer asks them, instead of testing what ``vm`` was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import irqbypass
import irqbypass.plugin

from . import _abi
from ._apic import MSI_VECTORS
from ._kvm import DEFAULT_DEVICE, Vm, check_halt_poll_ns
from ._routing import MAX_GSI_ROUTES, MsiRoute
from .guest import APIC_MODES, ELCR_LINES, GUEST_LINES, Guest

if TYPE_CHECKING:
    from .consumer import KvmIrqfdConsumer

__all__ = [
    "GivenGuest",
    "GivenVm",
    "Hook",
    "KvmSettings",
    "Msi",
    "OwnGuest",
    "Pin",
    "Route",
    "Target",
    "VmArg",
    "VmFd",
]

#: what ``vm`` may be: "guest" (the plugin's own), a VM fd, a Guest, or a Vm
VmArg = str | int | Guest | Vm

Hook = Callable[["KvmIrqfdConsumer"], None]

_refuse = irqbypass.plugin.Settings.refuse

# -- routes: what the GSI is ---------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """An in-kernel irqchip pin (GSI 0-23); ``resample``: level-triggered (INTx)."""

    gsi: int
    resample: bool = False

    def check(self) -> None:
        if self.gsi >= _abi.IOAPIC_NUM_PINS:
            raise _refuse(
                f"GSI {self.gsi} is not routed to an interrupt controller pin (the "
                f"in-kernel irqchip routes GSIs 0-{_abi.IOAPIC_NUM_PINS - 1}); use a pin, "
                "or give an msi route for this GSI"
            )

    def require(self, vm: Vm, label: str, gsi: int | None, msi: MsiRoute | None) -> None:
        """Refuse a VM whose KVM cannot do this route (KVM_CHECK_EXTENSION)."""
        if self.resample:
            vm.require(_abi.KVM_CAP_IRQFD_RESAMPLE, "resampling irqfds (KVM_CAP_IRQFD_RESAMPLE)")


@dataclass(frozen=True)
class Msi:
    """An MSI on a GSI 24-4095 that the consumer routes to ``message``, or on
    the VM's lowest free one (``gsi`` None); ``masked``: start masked."""

    message: MsiRoute
    gsi: int | None = None
    masked: bool = False

    def check(self, resample: bool) -> None:
        if self.gsi is not None and self.gsi < _abi.IOAPIC_NUM_PINS:
            raise _refuse(
                f"GSI {self.gsi} belongs to the irqchip's pins; route MSIs on a GSI "
                f"from {_abi.IOAPIC_NUM_PINS} to {MAX_GSI_ROUTES - 1}"
            )
        if resample:
            raise _refuse(
                "resample is for level-triggered pins (INTx); an MSI is an "
                "edge message, so turn resample off or drop the msi route"
            )

    @staticmethod
    def require(vm: Vm, label: str, gsi: int | None, msi: MsiRoute | None) -> None:
        """Refuse a VM whose KVM cannot route this MSI (on this GSI, with its devid)."""
        routes = vm.require(_abi.KVM_CAP_IRQ_ROUTING, "GSI routing (KVM_CAP_IRQ_ROUTING)")
        if gsi is not None and gsi >= routes:
            raise irqbypass.InvalidEndpointError(
                f"{label}: GSI {gsi} is out of range; this KVM routes GSIs 0-{routes - 1}"
            )
        if msi is not None and msi.devid is not None:
            vm.require(_abi.KVM_CAP_MSI_DEVID, "MSI device ids (KVM_CAP_MSI_DEVID)")


Route = Pin | Msi

# -- targets: which VM -------------------------------------------------------------


class _Guest:
    """What a target that is one of the plugin's guests checks of a route: it
    counts interrupts on one PIC line, or MSIs into its x2APIC."""

    @property
    def apic(self) -> str | None:
        raise NotImplementedError

    @property
    def line(self) -> int | None:
        """The PIC line the guest listens on, if it is fixed already."""
        return None

    def check_route(self, route: Route) -> None:
        if isinstance(route, Msi):
            if self.apic is None:
                raise _refuse(
                    "this guest listens on its 8259 PIC; to route MSIs into its "
                    'local APIC use apic = "x2apic" (or a Guest(apic="x2apic")), or a '
                    "VMM's VM fd"
                )
            _check_guest_msi(route.message)
            return
        if self.apic is not None:
            raise _refuse(
                f"the guest is in {self.apic} mode and takes MSIs only (its PIC is "
                "not programmed); give an msi route, or use a guest without apic"
            )
        if route.gsi not in GUEST_LINES:
            raise _refuse(f"the demo guest listens on PIC lines 0-15 except 2, not GSI {route.gsi}")
        if self.line is not None and route.gsi != self.line:
            raise _refuse(
                f"the guest listens on line {self.line}, not GSI {route.gsi}; use its line"
            )
        if route.resample and route.gsi not in ELCR_LINES:
            raise _refuse(
                f"resample needs a level-triggered line and PIC line {route.gsi} "
                f"cannot be one; use one of {', '.join(map(str, ELCR_LINES))}"
            )
        self._check_level(route)

    def _check_level(self, route: Pin) -> None:
        """A given guest's line is level-triggered or not already."""


@dataclass(frozen=True)
class OwnGuest(_Guest):
    """``vm="guest"``: the plugin's demo guest, made by open(), closed by close()."""

    apic_mode: str | None = None
    halt_poll_ns: int | None = None
    ack: str = "exit"
    device: str = DEFAULT_DEVICE
    arg: ClassVar[VmArg] = "guest"
    where: ClassVar[str] = "own guest"
    #: the guest the caller gave (the own one lives in the consumer while open)
    guest: ClassVar[None] = None
    #: opened and closed alone, never in a batch (its VM exists once it is open)
    batches: ClassVar[bool] = False

    @property
    def apic(self) -> str | None:
        return self.apic_mode

    def default_gsi(self) -> int | None:
        return 5

    def attach(self, label: str, route: Route, refs: int = 1) -> tuple[Vm, Guest | None]:
        """Start the guest (on the pin's line, or an x2APIC one): it closes
        what it opened if that fails."""
        guest = Guest(
            line=route.gsi if isinstance(route, Pin) else 5,
            level=isinstance(route, Pin) and route.resample,
            ack=self.ack,
            device=self.device,
            halt_poll_ns=self.halt_poll_ns,
            apic=self.apic_mode,
        )
        guest.start()
        assert guest.vm is not None
        return guest.vm, guest

    def detach(self, vm: Vm, refs: int = 1) -> None:
        """Nothing: the consumer closes its own guest, and the VM with it."""

    def batch_key(self) -> object | None:
        return None

    def delivered(self, own: Guest | None, last: int, msi: MsiRoute | None) -> int | None:
        """What the guest counted (while open), or counted last (once closed)."""
        return own.count if own is not None else last


@dataclass(frozen=True)
class GivenGuest(_Guest):
    """A running :class:`Guest` the caller owns (tests, benchmarks)."""

    guest: Guest
    where: ClassVar[str] = "guest"
    batches: ClassVar[bool] = True

    arg = irqbypass.plugin.Alias[VmArg]("guest")
    apic = irqbypass.plugin.Alias[str | None]("guest.apic")

    @property
    def line(self) -> int | None:
        return self.guest.line if self.guest.apic is None else None

    def default_gsi(self) -> int | None:
        return self.line

    def _check_level(self, route: Pin) -> None:
        if route.resample and not self.guest.level:
            raise _refuse(
                "resample needs the guest's line to be level-triggered; "
                "create the Guest with level=True"
            )

    def attach(self, label: str, route: Route, refs: int = 1) -> tuple[Vm, Guest | None]:
        guest = self.guest
        if guest.vm is None or not guest.running:
            raise irqbypass.InvalidEndpointError(
                f"{label}: the guest is not running; start() it first"
            )
        return guest.vm, None

    def detach(self, vm: Vm, refs: int = 1) -> None:
        """Nothing: the guest is the caller's."""

    def batch_key(self) -> object | None:
        vm = self.guest.vm
        return id(vm) if vm is not None and self.guest.running else None

    def delivered(self, own: Guest | None, last: int, msi: MsiRoute | None) -> int | None:
        """A shared x2APIC guest: what arrived on this consumer's vector."""
        if self.guest.apic is None:
            return self.guest.count
        return self.guest.vector_count(msi.data & 0xFF) if msi is not None else 0


class _Vmm:
    """What a target that is a VMM's VM checks of a route: nothing (its guest
    programs its own interrupt controller), and it counts nothing we can see."""

    guest: ClassVar[None] = None
    batches: ClassVar[bool] = True
    #: the VM's fd (the subclass's)
    fd: int

    @property
    def where(self) -> str:
        return f"VM fd {self.fd}"

    def default_gsi(self) -> int | None:
        return None

    def check_route(self, route: Route) -> None:
        """Any route."""

    def delivered(self, own: Guest | None, last: int, msi: MsiRoute | None) -> int | None:
        return None


@dataclass(frozen=True)
class VmFd(_Vmm):
    """A VM fd the embedding VMM owns: borrowed while open, never closed here."""

    fd: int

    arg = irqbypass.plugin.Alias[VmArg]("fd")

    def attach(self, label: str, route: Route, refs: int = 1) -> tuple[Vm, Guest | None]:
        return Vm.borrow(self.fd, refs), None

    def detach(self, vm: Vm, refs: int = 1) -> None:
        vm.close(refs=refs)  # drops our references; a borrowed fd is never closed

    def batch_key(self) -> object | None:
        return ("fd", self.fd)


@dataclass(frozen=True)
class GivenVm(_Vmm):
    """The plugin's :class:`Vm` wrapper, for a VMM sharing its routing table."""

    vm: Vm

    arg = irqbypass.plugin.Alias[VmArg]("vm")
    fd = irqbypass.plugin.Alias[int]("vm.fd")

    def attach(self, label: str, route: Route, refs: int = 1) -> tuple[Vm, Guest | None]:
        """The Vm, held while open if it is a borrowed one (its caller may give
        its own reference back first)."""
        return self.vm.hold(refs), None

    def detach(self, vm: Vm, refs: int = 1) -> None:
        vm.release(refs)

    def batch_key(self) -> object | None:
        return id(self.vm)


Target = OwnGuest | GivenGuest | VmFd | GivenVm

# -- the settings --------------------------------------------------------------------


@dataclass(frozen=True)
class KvmSettings(irqbypass.plugin.Settings):
    """The options of a kvm-irqfd consumer, and their reading: :attr:`target`
    and :attr:`route`.

    - ``vm``: ``"guest"`` (the plugin creates its own demo :class:`Guest` on
      open and destroys it on close), a VM fd owned by the embedding VMM (never
      closed here), a running :class:`Guest`, or a :class:`Vm`.
    - ``gsi``: the guest interrupt. Without ``msi`` it is an irqchip pin
      (0-23; for the demo guest a PIC line 0-15 except 2); with ``msi`` it is a
      free GSI 24-4095 that this consumer routes to the message, or None (left
      out) for the lowest free one of the VM, taken when the vector is first
      routed (open, or the first unmask) and given back on close.
    - ``resample``: level-triggered (INTx) semantics: the line stays asserted
      until the guest's EOI, then KVM lowers it and signals the consumer's
      ``resample_eventfd`` (given, or opened on open), as QEMU does for INTx.
    - ``msi``: an :class:`MsiRoute`; ``masked`` starts the vector masked.
    - ``apic``: the own guest's interrupt controller (``vm="guest"`` only):
      None for its 8259 PIC (pin mode), ``"x2apic"`` for its local APIC (MSI
      mode; see :class:`Guest`).
    - ``guest_ack``: how the own guest acknowledges (``"exit"`` or ``"eventfd"``).
    - ``halt_poll_ns``: the own guest's halt-polling limit (``vm="guest"``
      only; 0 = never poll, None = the kernel's default; see
      :meth:`Vm.set_halt_poll_ns`).
    - ``device``: the KVM device path (a seam for tests and odd hosts).
    - ``on_stop``/``on_start``: what the manager's stop/start do (an embedding
      VMM can pause its vCPUs there, as arm64 KVM does); by default nothing.
    """

    vm: VmArg = "guest"
    gsi: int | None = None
    resample: bool = False
    resample_eventfd: irqbypass.Eventfd | None = None
    msi: MsiRoute | None = None
    masked: bool = False
    apic: str | None = None
    guest_ack: str = "exit"
    halt_poll_ns: int | None = None
    device: str = DEFAULT_DEVICE
    on_stop: Hook | None = None
    on_start: Hook | None = None
    target: Target = field(init=False, repr=False, compare=False)
    route: Route = field(init=False, repr=False, compare=False)

    def check(self) -> None:
        _check_types(self)
        target = self._target()
        gsi = self.gsi
        if gsi is None and self.msi is None:
            gsi = target.default_gsi()
            if gsi is None:
                raise _refuse(
                    "give the gsi to inject on (the guest's irqchip pin)",
                    option="gsi",
                    in_config="required when vm is a VM fd (or set the entry's irq, or give "
                    "an msi route)",
                )
        if gsi is not None and not 0 <= gsi < MAX_GSI_ROUTES:
            raise _refuse(f"GSI {gsi} is out of range; KVM has GSIs 0-{MAX_GSI_ROUTES - 1}")
        route: Route
        if self.msi is None:
            assert gsi is not None
            route = Pin(gsi, self.resample)
            route.check()
        else:
            route = Msi(self.msi, gsi, self.masked)
            route.check(self.resample)
        target.check_route(route)
        self._check_rest(target)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "route", route)

    def _target(self) -> Target:
        vm, apic = self.vm, self.apic
        wrong = isinstance(vm, bool) or not isinstance(vm, (str, int, Guest, Vm))
        if wrong or (isinstance(vm, str) and vm != "guest") or (isinstance(vm, int) and vm < 0):
            raise _refuse(
                f'vm must be "guest", a VM fd, a Guest or a Vm, not {vm!r}'
                if wrong or isinstance(vm, str)
                else f"VM fd {vm} is negative",
                option="vm",
                in_config=f'expected "guest" or a VM fd number handed over by the VMM, got {vm!r}',
            )
        if apic is not None and apic not in APIC_MODES:
            raise _refuse(
                f'apic must be "x2apic" (MSIs into the guest\'s local APIC) or None '
                f"(its 8259 PIC), not {apic!r}"
            )
        if apic is not None and vm != "guest":
            raise _refuse(
                'apic applies to the plugin\'s own guest (vm="guest") only; a given '
                'Guest takes it as Guest(apic="x2apic")',
                option="apic",
                in_config="applies to the plugin's own guest (vm = \"guest\") only; a VMM's "
                "guest programs its own interrupt controller",
            )
        if isinstance(vm, Guest):
            return GivenGuest(vm)
        if isinstance(vm, Vm):
            return GivenVm(vm)
        if isinstance(vm, int):
            return VmFd(vm)
        return OwnGuest(apic, self.halt_poll_ns, self.guest_ack, self.device)

    def _check_rest(self, target: Target) -> None:
        if self.resample_eventfd is not None and not self.resample:
            raise _refuse("a resample_eventfd without resample=True would never be used")
        if self.guest_ack not in ("exit", "eventfd"):
            raise _refuse(f'guest_ack must be "exit" or "eventfd", not {self.guest_ack!r}')
        if self.halt_poll_ns is None:
            return
        if not isinstance(target, OwnGuest):
            raise _refuse(
                'halt_poll_ns applies to the plugin\'s own guest (vm="guest") '
                "only; a VMM sets its VM's halt polling itself (Vm.set_halt_poll_ns), "
                "and a given Guest takes it as Guest(halt_poll_ns=...)",
                option="halt_poll_ns",
                in_config='applies to the plugin\'s own guest (vm = "guest") only; with a VM fd '
                "the VMM sets its VM's halt polling itself",
            )
        check_halt_poll_ns(self.halt_poll_ns)


#: each option the Python API types strictly: what it must be, and how to tell
_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "gsi": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
    "resample": (lambda v: isinstance(v, bool), "True or False"),
    "resample_eventfd": (
        lambda v: isinstance(v, irqbypass.Eventfd),
        "an irqbypass.Eventfd or None",
    ),
    "msi": (lambda v: isinstance(v, MsiRoute), "an MsiRoute or None"),
    "masked": (lambda v: isinstance(v, bool), "True or False"),
    "apic": (lambda v: isinstance(v, str), "a str"),
    "guest_ack": (lambda v: isinstance(v, str), "a str"),
    "device": (lambda v: isinstance(v, str), "a str"),
    "on_stop": (callable, "a callable or None"),
    "on_start": (callable, "a callable or None"),
}
#: the options that may be None (the others must have their type)
_NONE_OK = frozenset(("gsi", "resample_eventfd", "msi", "apic", "on_stop", "on_start"))


def _check_types(settings: KvmSettings) -> None:
    """Refuse, by name, a value of the wrong type at the Python API (a bool
    where an int is meant, a string where a bool is), before it can reach an
    ioctl or be reported back as given."""
    for key, (ok, want) in _TYPES.items():
        value = getattr(settings, key)
        if (value is not None or key not in _NONE_OK) and not ok(value):
            raise _refuse(f"{key} must be {want}, not {irqbypass.plugin.show_value(value)}")


def _check_guest_msi(msi: MsiRoute) -> None:
    """The plugin's own x2APIC guest counts fixed MSIs to APIC ID 0 on vectors
    0x20-0xFE (0x00-0x1F are exceptions, 0xFF its spurious vector): an MSI it
    cannot count would be reported as all coalesced, none delivered."""
    vector = msi.data & 0xFF
    if vector not in MSI_VECTORS:
        raise _refuse(
            f"MSI data {msi.data:#x} carries vector {vector:#x}, which the guest "
            f"cannot count (it counts {MSI_VECTORS[0]:#x}-{MSI_VECTORS[-1]:#x}: below are "
            "exceptions, 0xff is its spurious vector); use a vector in that range"
        )
    if (msi.data >> 8) & 0x7 not in (0, 1):
        raise _refuse(
            f"MSI data {msi.data:#x} asks for delivery mode "
            f"{(msi.data >> 8) & 0x7} (NMI, SMI, INIT...); the guest counts fixed (0) and "
            "lowest-priority (1) interrupts only"
        )
    if msi.address >> 20 != 0xFEE or (msi.address >> 12) & 0xFF != 0:
        raise _refuse(
            f"MSI address {msi.address:#x} does not reach the guest's local APIC "
            "(0xfee00000, APIC ID 0)"
        )
