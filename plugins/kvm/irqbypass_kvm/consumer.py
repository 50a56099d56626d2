"""The ``kvm-irqfd`` consumer: KVM's irqfd as an IRQ bypass consumer.

``open()`` assigns the token eventfd to a GSI of a VM (KVM_IRQFD), so that every
write to the eventfd injects the interrupt inside the kernel; ``close()``
deassigns it. Registering with a Manager adds the pairing on top, as KVM
registers its irqfd consumer with the kernel's bypass manager.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import irqbypass

from . import _abi
from ._apic import MSI_VECTORS
from ._kvm import DEFAULT_DEVICE, MAX_HALT_POLL_NS, Vm, check_halt_poll_ns
from ._routing import MAX_GSI_ROUTES, MsiRoute, describe
from .guest import APIC_MODES, ELCR_LINES, GUEST_LINES, Guest

__all__ = ["KvmIrqfdConsumer", "VmArg"]

#: what ``vm`` may be: "guest" (the plugin's own), a VM fd, a Guest, or a Vm
VmArg = str | int | Guest | Vm

Hook = Callable[["KvmIrqfdConsumer"], None]


class KvmIrqfdConsumer(irqbypass.Consumer):
    """Injects the token eventfd's interrupts into a KVM guest through an irqfd.

    - ``vm``: ``"guest"`` (the plugin creates its own demo :class:`Guest` on
      open and destroys it on close), a VM fd owned by the embedding VMM (never
      closed here), a running :class:`Guest`, or a :class:`Vm`.
    - ``gsi``: the guest interrupt. Without ``msi`` it is an irqchip pin
      (0-23; for the demo guest a PIC line 0-15 except 2); with ``msi`` it is a
      free GSI 24-4095 that this consumer routes to the message, or None (left
      out) for the lowest free one of the VM, taken when the vector is first
      routed (open, or the first unmask) and given back on close.
    - ``resample``: level-triggered (INTx) semantics: the line stays asserted
      until the guest's EOI, then KVM lowers it and signals
      :attr:`resample_eventfd` (given, or opened here), as QEMU does for INTx.
    - ``msi``: an :class:`MsiRoute`; ``masked`` starts the vector masked.
    - ``apic``: the own guest's interrupt controller (``vm="guest"`` only):
      None for its 8259 PIC (pin mode), ``"x2apic"`` for its local APIC (MSI
      mode; see :class:`Guest`).
    - ``on_stop``/``on_start``: what the manager's stop/start do (an embedding
      VMM can pause its vCPUs there, as arm64 KVM does); by default nothing.
    - ``halt_poll_ns``: the own guest's halt-polling limit (``vm="guest"``
      only; 0 = never poll, None = the kernel's default; see
      :meth:`Vm.set_halt_poll_ns`).
    - ``device``: the KVM device path (a seam for tests and odd hosts).
    """

    #: ``delivered`` is what the guest took: signals that arrive while an edge or
    #: an APIC's pending bit is still set merge into one (``irqbypass run``
    #: reports them as coalesced, not lost)
    coalesces = True

    def __init__(
        self,
        *,
        token: Hashable,
        vm: VmArg = "guest",
        gsi: int | None = None,
        resample: bool = False,
        resample_eventfd: irqbypass.Eventfd | None = None,
        msi: MsiRoute | None = None,
        masked: bool = False,
        apic: str | None = None,
        guest_ack: str = "exit",
        halt_poll_ns: int | None = None,
        device: str = DEFAULT_DEVICE,
        name: str | None = None,
        on_stop: Hook | None = None,
        on_start: Hook | None = None,
    ) -> None:
        super().__init__(token=token, name=name)
        what = f"kvm-irqfd consumer {self.name!r}"
        if not isinstance(token, irqbypass.Eventfd):
            raise irqbypass.InvalidEndpointError(
                f"{what}: the token must be an irqbypass.Eventfd (KVM listens to an "
                f"eventfd), not {type(token).__name__}"
            )
        _check_types(
            what,
            gsi=gsi,
            resample=resample,
            resample_eventfd=resample_eventfd,
            msi=msi,
            masked=masked,
            apic=apic,
            guest_ack=guest_ack,
            device=device,
            on_stop=on_stop,
            on_start=on_start,
        )
        if isinstance(vm, str) and vm != "guest":
            raise irqbypass.InvalidEndpointError(
                f'{what}: vm must be "guest", a VM fd, a Guest or a Vm, not {vm!r}'
            )
        if isinstance(vm, bool) or not isinstance(vm, (str, int, Guest, Vm)):
            raise irqbypass.InvalidEndpointError(
                f'{what}: vm must be "guest", a VM fd, a Guest or a Vm, not {vm!r}'
            )
        if isinstance(vm, int) and vm < 0:
            raise irqbypass.InvalidEndpointError(f"{what}: VM fd {vm} is negative")
        if apic is not None and apic not in APIC_MODES:
            raise irqbypass.InvalidEndpointError(
                f'{what}: apic must be "x2apic" (MSIs into the guest\'s local APIC) or None '
                f"(its 8259 PIC), not {apic!r}"
            )
        if apic is not None and vm != "guest":
            raise irqbypass.InvalidEndpointError(
                f'{what}: apic applies to the plugin\'s own guest (vm="guest") only; a given '
                'Guest takes it as Guest(apic="x2apic")'
            )
        guest_apic = vm.apic if isinstance(vm, Guest) else apic if vm == "guest" else None
        guest_line = vm.line if isinstance(vm, Guest) and guest_apic is None else None
        if gsi is None and msi is None:
            gsi = guest_line if guest_line is not None else 5 if vm == "guest" else None
            if gsi is None:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: give the gsi to inject on (the guest's irqchip pin)"
                )
        if gsi is not None and not 0 <= gsi < MAX_GSI_ROUTES:
            raise irqbypass.InvalidEndpointError(
                f"{what}: GSI {gsi} is out of range; KVM has GSIs 0-{MAX_GSI_ROUTES - 1}"
            )
        if msi is None and gsi is not None and gsi >= _abi.IOAPIC_NUM_PINS:
            raise irqbypass.InvalidEndpointError(
                f"{what}: GSI {gsi} is not routed to an interrupt controller pin (the "
                f"in-kernel irqchip routes GSIs 0-{_abi.IOAPIC_NUM_PINS - 1}); use a pin, "
                "or give an msi route for this GSI"
            )
        if msi is not None:
            if gsi is not None and gsi < _abi.IOAPIC_NUM_PINS:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: GSI {gsi} belongs to the irqchip's pins; route MSIs on a GSI "
                    f"from {_abi.IOAPIC_NUM_PINS} to {MAX_GSI_ROUTES - 1}"
                )
            if resample:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: resample is for level-triggered pins (INTx); an MSI is an "
                    "edge message, so turn resample off or drop the msi route"
                )
            if (vm == "guest" or isinstance(vm, Guest)) and guest_apic is None:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: this guest listens on its 8259 PIC; to route MSIs into its "
                    'local APIC use apic = "x2apic" (or a Guest(apic="x2apic")), or a '
                    "VMM's VM fd"
                )
            if vm == "guest" or isinstance(vm, Guest):
                _check_guest_msi(what, msi)
        elif (vm == "guest" or isinstance(vm, Guest)) and guest_apic is not None:
            raise irqbypass.InvalidEndpointError(
                f"{what}: the guest is in {guest_apic} mode and takes MSIs only (its PIC is "
                "not programmed); give an msi route, or use a guest without apic"
            )
        elif vm == "guest" or isinstance(vm, Guest):
            assert gsi is not None
            if gsi not in GUEST_LINES:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: the demo guest listens on PIC lines 0-15 except 2, not GSI {gsi}"
                )
            if guest_line is not None and gsi != guest_line:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: the guest listens on line {guest_line}, not GSI {gsi}; use its line"
                )
            if resample and gsi not in ELCR_LINES:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: resample needs a level-triggered line and PIC line {gsi} "
                    f"cannot be one; use one of {', '.join(map(str, ELCR_LINES))}"
                )
            if resample and isinstance(vm, Guest) and not vm.level:
                raise irqbypass.InvalidEndpointError(
                    f"{what}: resample needs the guest's line to be level-triggered; "
                    "create the Guest with level=True"
                )
        if resample_eventfd is not None and not resample:
            raise irqbypass.InvalidEndpointError(
                f"{what}: a resample_eventfd without resample=True would never be used"
            )
        if guest_ack not in ("exit", "eventfd"):
            raise irqbypass.InvalidEndpointError(
                f'{what}: guest_ack must be "exit" or "eventfd", not {guest_ack!r}'
            )
        if halt_poll_ns is not None:
            if vm != "guest":
                raise irqbypass.InvalidEndpointError(
                    f'{what}: halt_poll_ns applies to the plugin\'s own guest (vm="guest") '
                    "only; a VMM sets its VM's halt polling itself (Vm.set_halt_poll_ns), "
                    "and a given Guest takes it as Guest(halt_poll_ns=...)"
                )
            try:
                check_halt_poll_ns(halt_poll_ns)
            except irqbypass.InvalidEndpointError as exc:
                raise irqbypass.InvalidEndpointError(f"{what}: {exc.message}") from None
        self.halt_poll_ns = halt_poll_ns
        self.vm_arg: VmArg = vm
        self.gsi: int | None = gsi
        self._auto_gsi = gsi is None
        self._label = what
        self._eventfd: irqbypass.Eventfd = token
        self.apic = apic
        self.resample = resample
        self.msi = msi
        self.guest_ack = guest_ack
        self.device = device
        self.on_stop = on_stop
        self.on_start = on_start
        self._given_resample = resample_eventfd
        self.resample_eventfd: irqbypass.Eventfd | None = None
        self._masked = masked
        self._lock = threading.RLock()
        self._vm: Vm | None = None
        self._own_guest: Guest | None = None
        self._assigned = False
        self._routed = False
        self._claimed = False
        self._stops = 0
        self._starts = 0
        self._paired_name: str | None = None
        self._last_delivered = 0

    @classmethod
    def from_spec(cls, spec: irqbypass.EndpointSpec) -> KvmIrqfdConsumer:
        """Build from a topology entry (see docs/plugins/kvm.md for the options)."""
        opts = spec.options_reader()
        vm_raw = opts.get_raw("vm")
        vm: VmArg
        if vm_raw is None or vm_raw == "guest":
            vm = "guest"
        elif isinstance(vm_raw, int) and not isinstance(vm_raw, bool) and vm_raw >= 0:
            vm = vm_raw
        else:
            raise opts.error(
                "vm", f'expected "guest" or a VM fd number handed over by the VMM, got {vm_raw!r}'
            )
        msi = _read_msi(opts)
        apic = opts.get_str("apic", None, choices=APIC_MODES)
        if apic is not None and vm != "guest":
            raise opts.error(
                "apic",
                "applies to the plugin's own guest (vm = \"guest\") only; a VMM's guest "
                "programs its own interrupt controller",
            )
        gsi: int | None
        if opts.get_raw("gsi") is not None:
            gsi = opts.get_int("gsi", 0, min=0, max=MAX_GSI_ROUTES - 1)
        elif spec.irq is not None:
            gsi = spec.irq
        elif msi is not None:
            gsi = None  # the VM's allocator picks a free one
        elif vm == "guest":
            gsi = 5
        else:
            raise opts.error(
                "gsi", "required when vm is a VM fd (or set the entry's irq, or give an msi route)"
            )
        resample = opts.get_bool("resample", False)
        guest_ack = opts.get_str("guest_ack", "exit", choices=("exit", "eventfd")) or "exit"
        halt_poll_ns: int | None = None
        if opts.get_raw("halt_poll_ns") is not None:
            if vm != "guest":
                raise opts.error(
                    "halt_poll_ns",
                    'applies to the plugin\'s own guest (vm = "guest") only; with a VM fd '
                    "the VMM sets its VM's halt polling itself",
                )
            halt_poll_ns = opts.get_int("halt_poll_ns", 0, min=0, max=MAX_HALT_POLL_NS)
        device = opts.get_str("device", DEFAULT_DEVICE) or DEFAULT_DEVICE
        masked = opts.get_bool("masked", False)
        opts.finish()
        try:
            return cls(
                token=spec.token,
                vm=vm,
                gsi=gsi,
                resample=resample,
                msi=msi,
                masked=masked,
                apic=apic,
                guest_ack=guest_ack,
                halt_poll_ns=halt_poll_ns,
                device=device,
                name=spec.name,
            )
        except irqbypass.InvalidEndpointError as exc:
            raise irqbypass.ConfigError(
                exc.message, file=spec.file, key=f"{spec.key_path or spec.name}.options"
            ) from exc

    # -- attach to the VM ----------------------------------------------------

    @property
    def eventfd(self) -> irqbypass.Eventfd:
        return self._eventfd

    @property
    def vm(self) -> Vm | None:
        """The VM while open."""
        return self._vm

    @property
    def guest(self) -> Guest | None:
        """The guest whose count is ``delivered`` (own or given), if any."""
        if self._own_guest is not None:
            return self._own_guest
        return self.vm_arg if isinstance(self.vm_arg, Guest) else None

    @property
    def assigned(self) -> bool:
        return self._assigned

    @property
    def masked(self) -> bool:
        return self._masked

    def open(self) -> None:
        """Assign the irqfd (and route the MSI first, if any). All or nothing."""
        with self._lock:
            if self._vm is not None:
                return
            if self.eventfd.closed:
                raise irqbypass.InvalidEndpointError(
                    f"kvm-irqfd consumer {self.name!r}: its token eventfd is closed; "
                    "give it an open eventfd",
                    errno=errno.EBADF,
                )
            try:
                self._vm = self._attach_vm()
                self._check_caps(self._vm)
                if self.resample:
                    self.resample_eventfd = self._given_resample or irqbypass.Eventfd()
                if not self._masked:
                    self._route_then_assign()
            except BaseException:
                self._teardown(errors=[])
                raise

    def _attach_vm(self, refs: int = 1) -> Vm:
        vm = self.vm_arg
        if vm == "guest":
            guest = Guest(
                line=self.gsi if self.gsi is not None and self.msi is None else 5,
                level=self.resample,
                ack=self.guest_ack,
                device=self.device,
                halt_poll_ns=self.halt_poll_ns,
                apic=self.apic,
            )
            guest.start()  # closes what it opened if it fails
            assert guest.vm is not None
            self._own_guest = guest
            return guest.vm
        if isinstance(vm, Guest):
            if vm.vm is None or not vm.running:
                raise irqbypass.InvalidEndpointError(
                    f"kvm-irqfd consumer {self.name!r}: the guest is not running; start() it first"
                )
            return vm.vm
        if isinstance(vm, Vm):
            return vm
        assert isinstance(vm, int)
        return Vm.borrow(vm, refs)

    def _check_caps(self, vm: Vm) -> None:
        vm.require(_abi.KVM_CAP_IRQFD, "irqfd (KVM_CAP_IRQFD)")
        if self.resample:
            vm.require(_abi.KVM_CAP_IRQFD_RESAMPLE, "resampling irqfds (KVM_CAP_IRQFD_RESAMPLE)")
        if self.msi is not None:
            routes = vm.require(_abi.KVM_CAP_IRQ_ROUTING, "GSI routing (KVM_CAP_IRQ_ROUTING)")
            if self.gsi is not None and self.gsi >= routes:
                raise irqbypass.InvalidEndpointError(
                    f"kvm-irqfd consumer {self.name!r}: GSI {self.gsi} is out of range; "
                    f"this KVM routes GSIs 0-{routes - 1}"
                )
            if self.msi.devid is not None:
                vm.require(_abi.KVM_CAP_MSI_DEVID, "MSI device ids (KVM_CAP_MSI_DEVID)")

    def _batch_key(self, opening: bool) -> object | None:
        """The VM whose routing table a batch would write for this consumer, or
        None when it opens (or closes) alone: pins, the own guest, masked."""
        if self.msi is None or self.vm_arg == "guest":
            return None
        if not opening:
            return id(self._vm) if self._vm is not None and self._routed else None
        if self._vm is not None or self._masked or self.eventfd.closed:
            return None
        vm = self.vm_arg
        if isinstance(vm, Guest):
            return id(vm.vm) if vm.vm is not None and vm.running else None
        return id(vm) if isinstance(vm, Vm) else ("fd", vm)

    def _claim_gsi(self, vm: Vm) -> int:
        """The MSI GSI, reserved on the VM for this consumer (taken if left out)."""
        if not self._claimed:
            self.gsi = vm.claim_gsi(None if self._auto_gsi else self.gsi, self, self._label)
            self._claimed = True
        assert self.gsi is not None
        return self.gsi

    def _route_then_assign(self) -> None:
        """Unmask order: the route exists before the irqfd that uses it."""
        vm = self._vm
        assert vm is not None
        if self.msi is not None:
            vm.set_msi_route(self._claim_gsi(vm), self.msi, self._label)
            self._routed = True
        assert self.gsi is not None
        resample_fd = self.resample_eventfd.fileno() if self.resample_eventfd else None
        vm.irqfd_assign(self.eventfd.fileno(), self.gsi, resample_fd)
        self._assigned = True

    def _deassign_then_unroute(self, errors: list[BaseException]) -> None:
        """Mask order: the irqfd goes before the route it uses."""
        vm = self._vm
        if vm is None or self.gsi is None:
            return
        if self._assigned:
            self._assigned = False
            try:
                vm.irqfd_deassign(self.eventfd.fileno(), self.gsi)
            except irqbypass.IrqBypassError as exc:
                errors.append(exc)
        if self._routed:
            self._routed = False
            try:
                vm.set_msi_route(self.gsi, None)
            except irqbypass.IrqBypassError as exc:
                errors.append(exc)

    def close(self) -> None:
        """Deassign the irqfd and release what open() opened (idempotent)."""
        with self._lock:
            errors: list[BaseException] = []
            self._teardown(errors)
        if errors:
            raise irqbypass.DeviceError(
                f"kvm-irqfd consumer {self.name!r}: closing failed ({errors[0]}); "
                "everything else was released",
                errno=getattr(errors[0], "errno", None),
            ) from errors[0]

    def _teardown(self, errors: list[BaseException]) -> None:
        if self._vm is None:
            return
        if self.eventfd.closed:
            # KVM drops the irqfd itself when the eventfd's last reference goes;
            # the MSI route is ours and is removed below all the same
            self._assigned = False
        self._deassign_then_unroute(errors)
        self._release()

    def _release(self) -> None:
        """After the irqfd and route are gone: the GSI, eventfds, VM and guest."""
        vm = self._vm
        assert vm is not None
        if self._claimed:
            self._claimed = False
            assert self.gsi is not None
            vm.release_gsi(self.gsi, self)
            if self._auto_gsi:
                self.gsi = None
        if self.resample_eventfd is not None and self.resample_eventfd is not self._given_resample:
            self.resample_eventfd.close()
        self.resample_eventfd = None
        self._vm = None
        if self._own_guest is not None:
            self._last_delivered = self._own_guest.count
            guest, self._own_guest = self._own_guest, None
            guest.close()
        elif isinstance(self.vm_arg, int):
            vm.close()  # drops our reference; a borrowed fd is never closed

    # -- many at once (Topology.apply/teardown, or the embedding VMM) -------------

    @classmethod
    def open_group(cls, endpoints: Sequence[irqbypass.Endpoint]) -> None:
        """Open many consumers, all or nothing. The unmasked MSI consumers of one
        VM are routed with one KVM_SET_GSI_ROUTING for all their routes, then
        assigned with one KVM_IRQFD each; the others are opened one by one. A
        failure names the consumer and its route and leaves none of them open."""
        singles, batches = _partition(endpoints, opening=True)
        opened: list[KvmIrqfdConsumer] = []
        try:
            for consumer in singles:
                consumer.open()
                opened.append(consumer)
            for batch in batches:
                _open_batch(batch)
                opened.extend(batch)
        except BaseException:
            for consumer in reversed(opened):
                with contextlib.suppress(irqbypass.IrqBypassError):
                    consumer.close()
            raise

    @classmethod
    def close_group(cls, endpoints: Sequence[irqbypass.Endpoint]) -> None:
        """Close many consumers: the routed MSI consumers of one VM are deassigned
        one by one and unrouted with one KVM_SET_GSI_ROUTING; every consumer is
        closed even if a step fails, and then the first failure is raised."""
        singles, batches = _partition(endpoints, opening=False)
        errors: list[BaseException] = []
        for batch in batches:
            locked = 0
            try:
                for consumer in batch:
                    consumer._lock.acquire()
                    locked += 1
                _close_batch(batch, errors)
            finally:
                for consumer in batch[:locked]:
                    consumer._lock.release()
        for consumer in singles:
            try:
                consumer.close()
            except irqbypass.IrqBypassError as exc:
                errors.append(exc)
        if errors:
            raise irqbypass.DeviceError(
                f"closing {len(endpoints)} kvm-irqfd consumers: {len(errors)} step(s) "
                f"failed, the first: {errors[0]}; everything else was released",
                errno=getattr(errors[0], "errno", None),
            ) from errors[0]

    # -- MSI vector control (cloud-hypervisor's ordering) ------------------------

    def mask(self) -> None:
        """Mask the MSI vector: deassign the irqfd, then drop its route."""
        with self._lock:
            if self._masked:
                return
            self._masked = True
            errors: list[BaseException] = []
            self._deassign_then_unroute(errors)
            if errors:
                raise errors[0]

    def unmask(self) -> None:
        """Unmask: set the route, then assign the irqfd."""
        with self._lock:
            if not self._masked:
                return
            if self._vm is not None:
                self._route_then_assign()
            self._masked = False

    def set_msi(self, route: MsiRoute) -> None:
        """Change the MSI message (address, data, devid) of this vector."""
        with self._lock:
            if self.msi is None:
                raise irqbypass.InvalidEndpointError(
                    f"kvm-irqfd consumer {self.name!r} routes a pin, not an MSI"
                )
            if self._vm is not None and route.devid is not None:
                self._vm.require(_abi.KVM_CAP_MSI_DEVID, "MSI device ids (KVM_CAP_MSI_DEVID)")
            if self._vm is not None and self._routed and self.gsi is not None:
                # KVM re-reads the route for the live irqfd before the ioctl returns
                self._vm.set_msi_route(self.gsi, route, self._label)
            self.msi = route

    # -- the bypass callbacks --------------------------------------------------

    def add_producer(self, producer: irqbypass.Producer) -> None:
        """Record the pairing. No direct path is offered: the irqfd already
        injects inside the kernel, so the producer keeps writing its eventfd."""
        self._paired_name = producer.name

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self._paired_name = None

    def stop(self) -> None:
        self._stops += 1
        if self.on_stop is not None:
            self.on_stop(self)

    def start(self) -> None:
        self._starts += 1
        if self.on_start is not None:
            self.on_start(self)

    # -- observing ---------------------------------------------------------------

    @property
    def eoi_eventfd(self) -> irqbypass.Eventfd | None:
        """In resample mode, the resample eventfd KVM signals at the guest's EOI
        (the given one, or the one open() made), for the producer to unmask on."""
        if not self.resample:
            return None
        return self.resample_eventfd if self.resample_eventfd is not None else self._given_resample

    @property
    def paired_with(self) -> str | None:
        return self._paired_name

    def stats(self) -> Mapping[str, int]:
        out: dict[str, int] = {
            "assigned": int(self._assigned),
            "gsi": -1 if self.gsi is None else self.gsi,
            "paired": int(self._paired_name is not None),
            "stops": self._stops,
            "starts": self._starts,
        }
        if self.msi is not None:
            out["masked"] = int(self._masked)
        guest = self.guest
        if guest is not None and guest.apic is not None and guest is not self._own_guest:
            # a shared guest: what arrived on this consumer's vector
            out["delivered"] = guest.vector_count(self.msi.data & 0xFF) if self.msi else 0
        elif guest is not None:
            out["delivered"] = guest.count
        elif self.vm_arg == "guest":
            out["delivered"] = self._last_delivered
        return out

    def status(self) -> str:
        """One line for humans: where the irqfd is and what it is paired with."""
        target = "MSI " + describe(self.msi) if self.msi is not None else "pin"
        state = "assigned" if self._assigned else "masked" if self._masked else "not assigned"
        vm = self.vm_arg
        if isinstance(vm, str):
            where = "own guest"
        elif isinstance(vm, Guest):
            where = "guest"
        else:
            where = f"VM fd {vm if isinstance(vm, int) else vm.fd}"
        flavour = ", resample" if self.resample else ""
        gsi = "(not yet taken)" if self.gsi is None else self.gsi
        parts = [f"irqfd GSI {gsi} ({target}{flavour}) {state} on {where}"]
        parts.append(f"paired with {self._paired_name!r}" if self._paired_name else "unpaired")
        stats = self.stats()
        if "delivered" in stats:
            parts.append(f"guest counted {stats['delivered']}")
        return "; ".join(parts)


def _partition(
    endpoints: Sequence[irqbypass.Endpoint], *, opening: bool
) -> tuple[list[KvmIrqfdConsumer], list[list[KvmIrqfdConsumer]]]:
    """The consumers that open (or close) alone, and the batches, one per VM."""
    singles: list[KvmIrqfdConsumer] = []
    batches: dict[object, list[KvmIrqfdConsumer]] = {}
    for endpoint in endpoints:
        if not isinstance(endpoint, KvmIrqfdConsumer):
            raise irqbypass.InvalidEndpointError(
                f"{endpoint!r} is not a kvm-irqfd consumer; KvmIrqfdConsumer.open_group and "
                "close_group take kvm-irqfd consumers only"
            )
        key = endpoint._batch_key(opening)
        if key is None:
            singles.append(endpoint)
        else:
            batches.setdefault(key, []).append(endpoint)
    return singles, list(batches.values())


def _open_batch(batch: list[KvmIrqfdConsumer]) -> None:
    """Open unmasked MSI consumers of one VM: claim their GSIs, write all their
    routes with one ioctl, assign each irqfd; on any failure undo it all."""
    locked = 0
    try:
        for consumer in batch:
            consumer._lock.acquire()
            locked += 1
        vm = batch[0]._attach_vm(refs=len(batch))
        done = False
        try:
            for consumer in batch:
                consumer._vm = vm  # from here on _close_batch undoes whatever was done
            batch[0]._check_caps(vm)  # what the batch shares; a devid is per consumer
            for consumer in batch:
                if consumer.msi is not None and consumer.msi.devid is not None:
                    consumer._check_caps(vm)
            gsis = vm.claim_gsis((None if c._auto_gsi else c.gsi, c, c._label) for c in batch)
            for consumer, gsi in zip(batch, gsis, strict=True):
                consumer.gsi, consumer._claimed = gsi, True
            vm.set_msi_routes(
                [(c.gsi, c.msi) for c in batch if c.gsi is not None],
                {c.gsi: c._label for c in batch if c.gsi is not None},
            )
            for consumer in batch:
                consumer._routed = True
            assign = vm.irqfd_assign
            for consumer in batch:
                assert consumer.gsi is not None and consumer.msi is not None
                try:
                    assign(consumer._eventfd.fileno(), consumer.gsi)
                except irqbypass.IrqBypassError as exc:
                    raise irqbypass.DeviceError(
                        f"{consumer._label} (GSI {consumer.gsi}, MSI {describe(consumer.msi)}): "
                        f"{exc.message}; none of the {len(batch)} consumers of this batch "
                        "was opened",
                        errno=exc.errno,
                    ) from exc
                consumer._assigned = True
            done = True
        finally:
            if not done:
                attached = [consumer for consumer in batch if consumer._vm is vm]
                if attached:
                    _close_batch(attached, [])
                if isinstance(batch[0].vm_arg, int):
                    for _ in range(len(batch) - len(attached)):
                        vm.close()  # the references no consumer took
    finally:
        for consumer in batch[:locked]:
            consumer._lock.release()


def _close_batch(batch: list[KvmIrqfdConsumer], errors: list[BaseException]) -> None:
    """Deassign each irqfd, remove all the routes with one ioctl, release the rest."""
    vm = batch[0]._vm
    assert vm is not None
    for consumer in batch:
        if consumer.eventfd.closed:
            consumer._assigned = False  # KVM dropped the irqfd with the eventfd
        if consumer._assigned:
            consumer._assigned = False
            assert consumer.gsi is not None
            try:
                vm.irqfd_deassign(consumer.eventfd.fileno(), consumer.gsi)
            except irqbypass.IrqBypassError as exc:
                errors.append(exc)
    routed = [consumer for consumer in batch if consumer._routed]
    for consumer in routed:
        consumer._routed = False
    if routed:
        try:
            vm.set_msi_routes(
                [(consumer.gsi, None) for consumer in routed if consumer.gsi is not None]
            )
        except irqbypass.IrqBypassError as exc:
            errors.append(exc)
    # what _release does, for the whole batch at once (batched consumers have
    # no resample eventfd and no own guest)
    vm.release_gsis([(c.gsi, c) for c in batch if c._claimed and c.gsi is not None])
    borrowed = 0
    for consumer in batch:
        consumer._claimed = False
        if consumer._auto_gsi:
            consumer.gsi = None
        consumer._vm = None
        borrowed += isinstance(consumer.vm_arg, int)
    if borrowed:
        vm.close(refs=borrowed)  # drops our references; a borrowed fd is never closed


def _check_types(what: str, **values: object) -> None:
    """Refuse, by name, a value of the wrong type at the Python API (a bool
    where an int is meant, a string where a bool is), before it can reach an
    ioctl or be reported back as given."""
    for key, value in values.items():
        if value is None and key not in ("resample", "masked", "guest_ack", "device"):
            continue
        if key == "gsi":
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an int"
        elif key in ("resample", "masked"):
            ok, want = isinstance(value, bool), "True or False"
        elif key == "resample_eventfd":
            ok, want = isinstance(value, irqbypass.Eventfd), "an irqbypass.Eventfd or None"
        elif key == "msi":
            ok, want = isinstance(value, MsiRoute), "an MsiRoute or None"
        elif key in ("apic", "guest_ack", "device"):
            ok, want = isinstance(value, str), "a str"
        else:
            ok, want = callable(value), "a callable or None"
        if not ok:
            raise irqbypass.InvalidEndpointError(
                f"{what}: {key} must be {want}, not {irqbypass.show_value(value)}"
            )


def _check_guest_msi(what: str, msi: MsiRoute) -> None:
    """The plugin's own x2APIC guest counts fixed MSIs to APIC ID 0 on vectors
    0x20-0xFE (0x00-0x1F are exceptions, 0xFF its spurious vector): an MSI it
    cannot count would be reported as all coalesced, none delivered."""
    vector = msi.data & 0xFF
    if vector not in MSI_VECTORS:
        raise irqbypass.InvalidEndpointError(
            f"{what}: MSI data {msi.data:#x} carries vector {vector:#x}, which the guest "
            f"cannot count (it counts {MSI_VECTORS[0]:#x}-{MSI_VECTORS[-1]:#x}: below are "
            "exceptions, 0xff is its spurious vector); use a vector in that range"
        )
    if (msi.data >> 8) & 0x7 not in (0, 1):
        raise irqbypass.InvalidEndpointError(
            f"{what}: MSI data {msi.data:#x} asks for delivery mode "
            f"{(msi.data >> 8) & 0x7} (NMI, SMI, INIT...); the guest counts fixed (0) and "
            "lowest-priority (1) interrupts only"
        )
    if msi.address >> 20 != 0xFEE or (msi.address >> 12) & 0xFF != 0:
        raise irqbypass.InvalidEndpointError(
            f"{what}: MSI address {msi.address:#x} does not reach the guest's local APIC "
            "(0xfee00000, APIC ID 0)"
        )


def _read_msi(opts: irqbypass.Options) -> MsiRoute | None:
    raw: Any = opts.get_raw("msi")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise opts.error("msi", "expected a table { address = ..., data = ..., devid = ... }")
    unknown = sorted(set(raw) - {"address", "data", "devid"})
    if unknown:
        raise opts.error(
            f"msi.{unknown[0]}", "unknown key; the msi table takes address, data, devid"
        )
    values: dict[str, int] = {}
    for key in ("address", "data", "devid"):
        value = raw.get(key)
        if value is None:
            if key == "devid":
                continue
            raise opts.error(f"msi.{key}", "required")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise opts.error(f"msi.{key}", f"expected a non-negative integer, got {value!r}")
        values[key] = value
    try:
        return MsiRoute(values["address"], values["data"], values.get("devid"))
    except irqbypass.InvalidEndpointError as exc:
        raise opts.error("msi", exc.message) from exc
