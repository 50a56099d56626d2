"""The ``vfio`` producer: one interrupt vector of a VFIO device.

``open()`` gets a device fd (iommufd cdev, group + container, or an fd the VMM
hands over), checks the vector with ``VFIO_DEVICE_GET_IRQ_INFO`` and attaches
the token eventfd to it with ``VFIO_DEVICE_SET_IRQS`` (``DATA_EVENTFD |
ACTION_TRIGGER``), as vfio-pci's users do; ``close()`` detaches it (fd -1).
Registering with a manager only adds the pairing on top, as in the kernel,
where vfio-pci registers an ``irq_bypass_producer`` for every trigger eventfd.

``stop()``/``start()`` quiesce the vector without losing an interrupt: INTx is
masked and unmasked (the device keeps the line asserted meanwhile); MSI and
MSI-X, which vfio-pci cannot mask, have their trigger swapped to a holding
eventfd while stopped, and what arrived there is written to the token on start
(QEMU does the same for vectors the guest masks). That life (open/close from
any state, the quiesce, the counts, signal safety) is
:class:`irqbypass.plugin.DeviceProducer`'s; this module holds only what is VFIO's own.
"""

from __future__ import annotations

import errno
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import irqbypass
import irqbypass.plugin
import irqbypass.system

from . import _abi
from ._hints import BIND_HOWTO, fd_kind, generic_hint
from ._open import BDF, CONTAINER_PATH, IOMMUFD_PATH
from ._vector import INDEX_NAMES, DeviceInfo, IrqInfo, VectorConfig, VfioVector, index_label

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["INDEX_NAMES", "MSI_QUIESCES", "DeviceInfo", "IrqInfo", "VfioProducer"]
__all__ += ["BIND_HOWTO", "CONTAINER_PATH", "IOMMUFD_PATH", "index_label"]  # (their old home)

#: How stop() can quiesce an MSI/MSI-X vector, which vfio-pci cannot mask:
#: "swap" points its trigger at a holding eventfd (vfio-pci frees and requests
#: the host IRQ to do so: an MSI landing in between is lost, see docs/testing.md);
#: "keep" leaves the trigger on the token, whose counter keeps what arrives.
MSI_QUIESCES = ("swap", "keep")


def _parse_index(index: int | str) -> int:
    if isinstance(index, str):
        if index.lower() not in INDEX_NAMES:
            raise irqbypass.InvalidEndpointError(
                f"unknown VFIO interrupt index {index!r}; use one of "
                f"{', '.join(INDEX_NAMES)} or an integer index"
            )
        return INDEX_NAMES[index.lower()]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**32:
        raise irqbypass.InvalidEndpointError(
            f"VFIO interrupt index {index!r} must be an integer 0..2**32-1 or a name "
            f"({', '.join(INDEX_NAMES)})"
        )
    return index


#: what ``device`` names, for messages
_DEVICE_HELP = "a PCI address, /dev/vfio/devices/vfioN or /dev/vfio/<group>"


class VfioProducer(irqbypass.plugin.DeviceProducer):
    """Vector ``vector`` of interrupt index ``index`` of a VFIO device.

    Give exactly one of ``device`` (a PCI address ``0000:01:00.0``, a cdev
    ``/dev/vfio/devices/vfioN``, or a group ``/dev/vfio/<N>`` together with
    ``device_name``) and ``device_fd`` (a device fd the embedding VMM opened,
    bound and keeps; the producer then owns nothing and only attaches and
    detaches its vector). ``iommufd`` is the iommufd (path, or an fd the caller
    keeps) a cdev is bound to. ``seam`` performs the syscalls (tests pass a
    model). ``msi_quiesce`` picks how stop() quiesces an MSI/MSI-X vector
    (:data:`MSI_QUIESCES`). Constructing validates but never touches the device.
    """

    kind = "vfio"
    NUMBER_LABEL = "vector"
    POINTED_STAT = "attached"
    #: how MSI and MSI-X are quiesced unless ``msi_quiesce`` says otherwise
    DEFAULT_MSI_QUIESCE = "keep"

    def __init__(
        self,
        *,
        token: Hashable,
        device_name: str | None = None,
        index: int | str = "msix",
        vector: int | None = None,
        iommufd: str | int = IOMMUFD_PATH,
        msi_quiesce: str | None = None,
        **device: Unpack[irqbypass.plugin.DeviceArgs],
    ) -> None:
        super().__init__(token=token, number=vector, device_help=_DEVICE_HELP, **device)
        path = self.device
        what = f"vfio producer {self.name!r}"
        vec = self.interrupt_number
        try:
            self.index = _parse_index(index)
        except irqbypass.InvalidEndpointError as exc:
            raise irqbypass.InvalidEndpointError(f"{what}: {exc}") from None
        if self.index == _abi.VFIO_PCI_INTX_IRQ_INDEX and vec != 0:
            raise irqbypass.InvalidEndpointError(
                f"{what}: INTx has a single vector, 0 (got vector {vec})"
            )
        msi_quiesce = msi_quiesce if msi_quiesce is not None else self.DEFAULT_MSI_QUIESCE
        if msi_quiesce not in MSI_QUIESCES:
            raise irqbypass.InvalidEndpointError(
                f"{what}: msi_quiesce {msi_quiesce!r} is not one of {', '.join(MSI_QUIESCES)}"
            )
        self.msi_quiesce = msi_quiesce
        self.vector = vec
        self.device_name = device_name
        if path is not None and BDF.match(path):
            self.device_name = device_name or path.lower()
        self.iommufd = iommufd
        config = VectorConfig(
            path, self.device_fd, self.device_name, iommufd, self.index, vec, self.name
        )
        #: the vector, as open() finds it: the device (shared with the producers of
        #: its other vectors: the last to close closes it) and our claim on the vector
        self.interrupt: VfioVector = VfioVector(self.calls, config, self._paired_eoi)
        self._triggered = 0

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> VfioProducer:
        opts = spec.options_reader()
        device, fd = cls.device_or_fd(
            opts,
            'a PCI address like "0000:01:00.0", /dev/vfio/devices/vfioN, or '
            "/dev/vfio/<group> with device_name",
        )
        raw_index = opts.get_raw("index")
        if raw_index is None:
            raw_index = "msix"
        if not isinstance(raw_index, (int, str)) or isinstance(raw_index, bool):
            raise opts.error("index", f"expected a name or an integer, got {raw_index!r}")
        try:
            index = _parse_index(raw_index)
        except irqbypass.InvalidEndpointError as exc:
            raise opts.error("index", str(exc)) from None
        vector = cls.number_option(opts, spec.irq)
        if index == _abi.VFIO_PCI_INTX_IRQ_INDEX and vector != 0:
            raise opts.error("vector", f"INTx has a single vector, 0 (got {vector})")
        device_name = opts.get_str("device_name")
        iommufd = opts.get_str("iommufd", IOMMUFD_PATH) or IOMMUFD_PATH
        msi_quiesce = opts.get_str("msi_quiesce", cls.DEFAULT_MSI_QUIESCE, choices=MSI_QUIESCES)
        opts.finish()
        return cls(
            **cls.spec_common(spec), device=device, device_fd=fd, device_name=device_name,
            index=index, vector=vector, iommufd=iommufd, msi_quiesce=msi_quiesce,
        )  # fmt: skip

    # -- errors ------------------------------------------------------------

    def interrupt_name(self) -> str:
        return f"{index_label(self.index)} vector {self.vector}"

    def hint(self, code: int, op: str, fd: int) -> str:
        if code == errno.ENOTTY and fd >= 0:
            return (
                f"fd {fd} is not a VFIO {fd_kind(op)} fd: pass a device from "
                "/dev/vfio/devices/vfioN, a /dev/vfio/<group> with device_name, or an fd "
                "returned by VFIO_GROUP_GET_DEVICE_FD / bound with VFIO_DEVICE_BIND_IOMMUFD"
            )
        return generic_hint(code, op)

    # -- what open() found -------------------------------------------------------

    #: The eventfd the vector's trigger points at (token, or the holding eventfd while stopped),
    #: None when detached.
    attached_to = irqbypass.plugin.Alias[int | None]("pointed_at")
    #: How the device was opened: "cdev", "group" or "fd" (None before the first open).
    mode = irqbypass.plugin.Alias[str | None]("interrupt.mode")
    #: The iommufd device id of a cdev.
    devid = irqbypass.plugin.Alias[int | None]("interrupt.devid")
    device_info = irqbypass.plugin.Alias[DeviceInfo | None]("interrupt.device_info")
    irq_info = irqbypass.plugin.Alias[IrqInfo | None]("interrupt.irq_info")

    @property
    def quiesce(self) -> str:
        """How stop() quiesces this vector: "mask" (INTx), else ``msi_quiesce``."""
        return "mask" if self.interrupt.can_mask else self.msi_quiesce

    # -- INTx: unmasked by the consumer's EOI eventfd -----------------------------

    def _paired_eoi(self) -> irqbypass.Eventfd | None:
        return _eoi_of(self.consumer) if self.consumer is not None else None

    # Both run to their end once begun (a Ctrl-C waits for the manager's
    # bookkeeping): cut between the SET_IRQS and its record, the record would
    # not say what vfio-pci holds, and close() would leave it on a VMM's fd.

    @irqbypass.plugin.holding(lambda self: self.lock)
    def add_consumer(self, consumer: irqbypass.Consumer) -> None:
        """Pairing: an INTx producer wires the consumer's EOI eventfd, if any."""
        if self.interrupt.unmask_eventfd is None:
            self.interrupt.wire_unmask(_eoi_of(consumer))

    @irqbypass.plugin.holding(lambda self: self.lock)
    def del_consumer(self, consumer: irqbypass.Consumer) -> None:
        """Unpairing: the unmask eventfd taken back; a line not stopped is
        unmasked, so nothing waits for an EOI that no one forwards now."""
        if self.interrupt.unmask_eventfd is None:
            return
        self.interrupt.unwire_unmask()
        if not self.stopped and self.pointed_at is not None:
            self.interrupt.unmask()

    # -- loopback and the batch ----------------------------------------------------

    def trigger(self, n: int = 1) -> None:
        """Loopback: ``SET_IRQS(DATA_NONE | ACTION_TRIGGER)`` makes the kernel
        signal the vector's current eventfd, as though the device fired
        (vfio.h documents it for testing). Counted as ``triggered``."""
        with self.lock:
            if self.fd is None:
                raise irqbypass.IrqBypassError(f"{self.describe()} is not open; call open() first")
            for _ in range(n):
                self.interrupt.set_irqs(_LOOPBACK)
                self._triggered += 1

    @classmethod
    def open_group(cls, endpoints: Sequence[irqbypass.Endpoint]) -> None:
        """Open many vfio producers all or nothing: each run of consecutive
        vectors of one device and index is attached with one
        ``VFIO_DEVICE_SET_IRQS`` (a NORESIZE block enabled whole with one), as
        QEMU and cloud-hypervisor enable a device's vectors. A failure names
        the vector and leaves none of them attached."""
        cls.open_batch(_producers(endpoints, "open_group"))

    @classmethod
    def close_group(cls, endpoints: Sequence[irqbypass.Endpoint]) -> None:
        """Close many: each run detached with one ``SET_IRQS`` (fd -1 for
        each), then every producer closed; every step attempted."""
        cls.close_batch(_producers(endpoints, "close_group"))

    def device_stats(self) -> Mapping[str, int]:
        """``triggered``: loopback triggers (besides the template's ``held``,
        ``replayed``, ``quiesces`` and ``attached``)."""
        return {"triggered": self._triggered}


_LOOPBACK = _abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_TRIGGER


@irqbypass.plugin.calls_partner
def _eoi_of(consumer: irqbypass.Consumer) -> irqbypass.Eventfd | None:
    """The consumer's EOI eventfd: its own code, which a Ctrl-C may cut."""
    return consumer.eoi_eventfd


def _producers(endpoints: Sequence[object], verb: str) -> list[VfioProducer]:
    out = []
    for endpoint in endpoints:
        if not isinstance(endpoint, VfioProducer):
            raise irqbypass.InvalidEndpointError(
                f"{endpoint!r} is not a vfio producer; VfioProducer.{verb} takes vfio "
                "producers only"
            )
        out.append(endpoint)
    return out
