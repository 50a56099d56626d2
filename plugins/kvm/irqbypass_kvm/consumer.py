"""The ``kvm-irqfd`` consumer: KVM's irqfd as an IRQ bypass consumer.

``open()`` assigns the token eventfd to a GSI of a VM (KVM_IRQFD), so that every
write to the eventfd injects the interrupt inside the kernel; ``close()``
deassigns it. Registering with a Manager adds the pairing on top, as KVM
registers its irqfd consumer with the kernel's bypass manager.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypedDict

import irqbypass
import irqbypass.plugin

from . import _batch
from ._irqfd import Irqfd
from ._kvm import DEFAULT_DEVICE, MAX_HALT_POLL_NS, Vm
from ._routing import MAX_GSI_ROUTES, MsiRoute, describe
from ._settings import Hook, KvmSettings, VmArg
from .guest import APIC_MODES, Guest

__all__ = ["KvmIrqfdConsumer", "VmArg"]


class KvmIrqfdConsumer(irqbypass.Consumer):
    """Injects the token eventfd's interrupts into a KVM guest through an irqfd.

    The options (``vm``, ``gsi``, ``resample``, ``msi``, ``masked``, ``apic``,
    ``guest_ack``, ``halt_poll_ns``, ``device``, ``on_stop``, ``on_start``) are
    described, and checked, by :class:`KvmSettings`; the irqfd itself is an
    :class:`Irqfd` (its VM, GSI, route and assignment).
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
        with irqbypass.plugin.Settings.naming(what):
            settings = KvmSettings(
                vm=vm,
                gsi=gsi,
                resample=resample,
                resample_eventfd=resample_eventfd,
                msi=msi,
                masked=masked,
                apic=apic,
                guest_ack=guest_ack,
                halt_poll_ns=halt_poll_ns,
                device=device,
                on_stop=on_stop,
                on_start=on_start,
            )
        self.settings = settings
        self._irqfd = Irqfd(what, token, settings)
        self.vm_arg: VmArg = vm
        self.apic, self.resample = apic, resample
        self.guest_ack, self.halt_poll_ns, self.device = guest_ack, halt_poll_ns, device
        self.on_stop, self.on_start = on_stop, on_start
        self._stops = self._starts = 0
        self._paired_name: str | None = None

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> KvmIrqfdConsumer:
        """Build from a topology entry (see docs/plugins/kvm.md for the options):
        each option read once, in this order, into the constructor's keywords."""
        opts = spec.options_reader()
        vm = opts.get_raw("vm")  # the settings refuse a wrong one, naming the option
        options: _SpecOptions = {
            "vm": "guest" if vm is None else vm,
            "msi": _read_msi(opts),
            "apic": opts.get_str("apic", None, choices=APIC_MODES),
            "gsi": (
                spec.irq
                if opts.get_raw("gsi") is None
                else opts.get_int("gsi", 0, min=0, max=MAX_GSI_ROUTES - 1)
            ),
            "resample": opts.get_bool("resample", False),
            "guest_ack": opts.get_str("guest_ack", "exit", choices=("exit", "eventfd")) or "exit",
            "halt_poll_ns": (
                None
                if opts.get_raw("halt_poll_ns") is None
                else opts.get_int("halt_poll_ns", 0, min=0, max=MAX_HALT_POLL_NS)
            ),
            "device": opts.get_str("device", DEFAULT_DEVICE) or DEFAULT_DEVICE,
            "masked": opts.get_bool("masked", False),
        }
        opts.finish()
        with opts.refusals():
            return cls(token=spec.token, name=spec.name, **options)

    # -- the irqfd ------------------------------------------------------------------

    eventfd = irqbypass.plugin.Alias[irqbypass.Eventfd]("_irqfd.eventfd")
    #: The VM while open.
    vm = irqbypass.plugin.Alias[Vm | None]("_irqfd.vm")
    #: The guest whose count is ``delivered`` (own or given), if any.
    guest = irqbypass.plugin.Alias[Guest | None]("_irqfd.guest")
    #: The GSI (an MSI's, when left out: None until first routed).
    gsi = irqbypass.plugin.Alias[int | None]("_irqfd.gsi")
    #: The MSI message (None for a pin); :meth:`set_msi` changes it.
    msi = irqbypass.plugin.Alias[MsiRoute | None]("_irqfd.msi")
    assigned = irqbypass.plugin.Alias[bool]("_irqfd.assigned")
    masked = irqbypass.plugin.Alias[bool]("_irqfd.masked")
    #: While open in resample mode: the eventfd KVM signals at the guest's EOI.
    resample_eventfd = irqbypass.plugin.Alias[irqbypass.Eventfd | None]("_irqfd.resample_eventfd")

    def open(self) -> None:
        """Assign the irqfd (and route the MSI first, if any). All or nothing."""
        self._irqfd.open()

    @irqbypass.plugin.uninterrupted
    def close(self) -> None:
        """Deassign the irqfd and release what open() opened (idempotent); once
        begun, from its first line, it runs to its end (a Ctrl-C acts as it returns)."""
        self._irqfd.close()

    # -- many at once (Topology.apply/teardown, or the embedding VMM) -------------

    @classmethod
    def open_group(cls, endpoints: Sequence[irqbypass.Endpoint]) -> None:
        """Open many consumers, all or nothing. The unmasked MSI consumers of one
        VM are routed with one KVM_SET_GSI_ROUTING for all their routes, then
        assigned with one KVM_IRQFD each; the others are opened one by one. A
        failure names the consumer and its route and leaves none of them open."""
        _batch.open_group(cls, endpoints)

    @classmethod
    @irqbypass.plugin.uninterrupted
    def close_group(cls, endpoints: Sequence[irqbypass.Endpoint]) -> None:
        """Close many consumers: the routed MSI consumers of one VM are deassigned
        one by one and unrouted with one KVM_SET_GSI_ROUTING; every consumer is
        closed even if a step fails, and then the first failure is raised (a
        Ctrl-C as it returns)."""
        _batch.close_group(cls, endpoints)

    # -- MSI vector control (cloud-hypervisor's ordering) ------------------------

    def mask(self) -> None:
        """Mask the MSI vector: deassign the irqfd, then drop its route."""
        self._irqfd.mask()

    def unmask(self) -> None:
        """Unmask: set the route, then assign the irqfd."""
        self._irqfd.unmask()

    def set_msi(self, route: MsiRoute) -> None:
        """Change the MSI message (address, data, devid) of this vector."""
        self._irqfd.set_msi(route)

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
        irqfd = self._irqfd
        return (
            irqfd.resample_eventfd if irqfd.resample_eventfd is not None else irqfd.given_resample
        )

    @property
    def paired_with(self) -> str | None:
        return self._paired_name

    def stats(self) -> Mapping[str, int]:
        out: dict[str, int] = {
            "assigned": int(self.assigned),
            "gsi": -1 if self.gsi is None else self.gsi,
            "paired": int(self._paired_name is not None),
            "stops": self._stops,
            "starts": self._starts,
        }
        if self.msi is not None:
            out["masked"] = int(self.masked)
        delivered = self._irqfd.delivered()
        if delivered is not None:
            out["delivered"] = delivered
        return out

    def status(self) -> str:
        """One line for humans: where the irqfd is and what it is paired with."""
        target = "MSI " + describe(self.msi) if self.msi is not None else "pin"
        state = "assigned" if self.assigned else "masked" if self.masked else "not assigned"
        where = self.settings.target.where
        flavour = ", resample" if self.resample else ""
        gsi = "(not yet taken)" if self.gsi is None else self.gsi
        parts = [f"irqfd GSI {gsi} ({target}{flavour}) {state} on {where}"]
        parts.append(f"paired with {self._paired_name!r}" if self._paired_name else "unpaired")
        stats = self.stats()
        if "delivered" in stats:
            parts.append(f"guest counted {stats['delivered']}")
        return "; ".join(parts)


class _SpecOptions(TypedDict):
    """The constructor's keywords a topology entry gives (:meth:`KvmIrqfdConsumer.from_spec`)."""

    vm: VmArg
    msi: MsiRoute | None
    apic: str | None
    gsi: int | None
    resample: bool
    guest_ack: str
    halt_poll_ns: int | None
    device: str
    masked: bool


def _read_msi(opts: irqbypass.plugin.Options) -> MsiRoute | None:
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
