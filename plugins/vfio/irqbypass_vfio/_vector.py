"""One vector of a VFIO device: the :class:`irqbypass.plugin.DeviceInterrupt` vfio drives.

``open`` shares the device with the producers of its other vectors (or opens
it), checks the vector with ``VFIO_DEVICE_GET_IRQ_INFO`` and claims it;
``point`` attaches an eventfd to it with ``VFIO_DEVICE_SET_IRQS`` (``DATA_EVENTFD
| ACTION_TRIGGER``, fd -1 detaches); INTx masks and unmasks, and takes the
paired consumer's EOI eventfd as its unmask eventfd.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import overload

import irqbypass
import irqbypass.plugin

from . import _abi
from ._device import DISABLE, EVENTFD_TRIGGER, VfioDevice
from ._hints import ATTACH, generic_hint
from ._open import VfioOpener

__all__ = ["INDEX_NAMES", "DeviceInfo", "IrqInfo", "VfioVector", "index_label"]

#: vfio-pci's interrupt indexes (``VFIO_PCI_*_IRQ_INDEX``), by option name.
INDEX_NAMES: dict[str, int] = {
    "intx": _abi.VFIO_PCI_INTX_IRQ_INDEX,
    "msi": _abi.VFIO_PCI_MSI_IRQ_INDEX,
    "msix": _abi.VFIO_PCI_MSIX_IRQ_INDEX,
    "err": _abi.VFIO_PCI_ERR_IRQ_INDEX,
    "req": _abi.VFIO_PCI_REQ_IRQ_INDEX,
}
_INDEX_LABELS = {v: k for k, v in INDEX_NAMES.items()}
_UNMASK_EVENTFD = _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_UNMASK


def index_label(index: int) -> str:
    return _INDEX_LABELS.get(index, f"index {index}")


class _Flag:
    """A bit of the ``flags`` the kernel answered, read as a bool attribute."""

    def __init__(self, bit: int) -> None:
        self.bit = bit

    @overload
    def __get__(self, info: None, owner: type) -> _Flag: ...

    @overload
    def __get__(self, info: IrqInfo | DeviceInfo, owner: type) -> bool: ...

    def __get__(self, info: IrqInfo | DeviceInfo | None, owner: type) -> bool | _Flag:
        return self if info is None else bool(info.flags & self.bit)


@dataclass(frozen=True)
class IrqInfo:
    """What ``VFIO_DEVICE_GET_IRQ_INFO`` said about one index."""

    index: int
    flags: int
    count: int

    eventfd = _Flag(_abi.VFIO_IRQ_INFO_EVENTFD)
    maskable = _Flag(_abi.VFIO_IRQ_INFO_MASKABLE)
    automasked = _Flag(_abi.VFIO_IRQ_INFO_AUTOMASKED)
    noresize = _Flag(_abi.VFIO_IRQ_INFO_NORESIZE)


@dataclass(frozen=True)
class DeviceInfo:
    """What ``VFIO_DEVICE_GET_INFO`` said."""

    flags: int
    num_regions: int
    num_irqs: int

    pci = _Flag(_abi.VFIO_DEVICE_FLAGS_PCI)


@dataclass(frozen=True)
class VectorConfig:
    """Which device (a path, or the VMM's fd) and which of its vectors."""

    device: str | None
    device_fd: int | None
    device_name: str | None
    iommufd: str | int
    index: int
    vector: int
    name: str  # the producer's, for the claim on the vector


class VfioVector(irqbypass.plugin.DeviceInterrupt):
    """A vector of a VFIO device, attached and detached with ``SET_IRQS``;
    ``paired_eoi``: the paired consumer's EOI eventfd, if any (INTx's unmask)."""

    #: vfio-pci frees and requests the host IRQ to move an MSI trigger: an MSI
    #: landing in between is lost (measured, docs/testing.md)
    swap_may_drop = True
    group: VfioDevice | None = None

    def __init__(
        self,
        calls: irqbypass.plugin.DeviceCalls,
        config: VectorConfig,
        paired_eoi: Callable[[], irqbypass.Eventfd | None],
    ) -> None:
        self.calls = calls
        self.config = config
        self.index, self.vector = config.index, config.vector
        self.paired_eoi = paired_eoi
        #: the paired consumer's EOI eventfd, handed to vfio-pci as INTx's unmask
        self.unmask_eventfd: irqbypass.Eventfd | None = None
        self.mode: str | None = None  # "cdev", "group" or "fd"
        self.devid: int | None = None
        self.device_info: DeviceInfo | None = None
        self.irq_info: IrqInfo | None = None
        self._learn_can_mask()

    @property
    def label(self) -> str:
        return index_label(self.index)

    def _learn_can_mask(self) -> None:
        """INTx can mask, unless GET_IRQ_INFO said it is not maskable."""
        self.can_mask = self.index == _abi.VFIO_PCI_INTX_IRQ_INDEX and (
            self.irq_info is None or self.irq_info.maskable
        )

    # -- open / close ------------------------------------------------------------

    def open(self) -> None:
        c = self.config
        key, open_device = VfioOpener(self.calls, c.device_name, c.iommufd).where(
            c.device, c.device_fd
        )
        group = self.join(VfioDevice, self.calls.seam, key, open_device)
        self.mode, self.devid = group.mode, group.devid
        self._check_vector()
        self._claim()

    def _check_vector(self) -> None:
        """GET_INFO and GET_IRQ_INFO (asked once per shared device), then the
        vector checked against them."""
        assert self.group is not None
        cache, fd, ioctl = self.group.info, self.group.fd, self.calls.ioctl
        device_info = cache.get(-1)
        if not isinstance(device_info, DeviceInfo):
            info = _abi.vfio_device_info(argsz=ctypes.sizeof(_abi.vfio_device_info))
            buf = bytearray(bytes(info))
            ioctl(fd, "VFIO_DEVICE_GET_INFO", _abi.VFIO_DEVICE_GET_INFO, buf)
            got = _abi.vfio_device_info.from_buffer_copy(buf)
            device_info = cache[-1] = DeviceInfo(got.flags, got.num_regions, got.num_irqs)
        self.device_info = device_info
        if self.index >= device_info.num_irqs:
            raise self.calls.refuse(
                f"the device has {device_info.num_irqs} interrupt indexes "
                f"(0..{device_info.num_irqs - 1}); "
                f"{self.label} ({self.index}) is out of range: pick another index"
            )
        irq_info = cache.get(self.index)
        if not isinstance(irq_info, IrqInfo):
            irq = _abi.vfio_irq_info(argsz=ctypes.sizeof(_abi.vfio_irq_info), index=self.index)
            buf = bytearray(bytes(irq))
            ioctl(fd, "VFIO_DEVICE_GET_IRQ_INFO", _abi.VFIO_DEVICE_GET_IRQ_INFO, buf)
            raw = _abi.vfio_irq_info.from_buffer_copy(buf)
            irq_info = cache[self.index] = IrqInfo(raw.index, raw.flags, raw.count)
        self.irq_info = irq_info
        self._learn_can_mask()
        self._check_irq_info(irq_info)

    def _check_irq_info(self, info: IrqInfo) -> None:
        if info.count == 0:
            raise self.calls.refuse(
                f"the device has no {self.label} interrupts (VFIO_DEVICE_GET_IRQ_INFO count "
                "0): pick an index it implements (msix, msi or intx)"
            )
        if self.vector >= info.count:
            raise self.calls.refuse(
                f"vector {self.vector} is out of range: {self.label} has {info.count} "
                f"vector(s), 0..{info.count - 1}"
            )
        if not info.eventfd:
            raise self.calls.refuse(
                f"{self.label} does not support eventfd signalling (VFIO_IRQ_INFO_EVENTFD is "
                "not set), so it cannot be bypassed: pick another index"
            )

    def _claim(self) -> None:
        """One producer per vector: a second would take the first's trigger."""
        holder = self.claim((self.index, self.vector), self.config.name)
        if holder is not None:
            raise self.calls.refuse(
                f"{self.label} vector {self.vector} of this device is already attached by "
                f"producer {holder!r} in this process: give each vector one producer",
                errno.EBUSY,
            )

    def close(self) -> None:
        """Give up the vector and our share of the device; the last producer of
        the device closes what was opened: the device first, then what it hangs
        off (group before container)."""
        first: irqbypass.DeviceError | None = None
        if self.unmask_eventfd is not None:
            try:
                self.unwire_unmask()
            except irqbypass.DeviceError as exc:
                first = exc
        group, self.group = self.group, None
        if group is None:
            return
        if self.claimed:
            group.unclaim((self.index, self.vector))
            self.claimed = False
        try:
            group.unshare(lambda: group.close(self._close_failure))
        except irqbypass.DeviceError as exc:
            first = first or exc
        if first is not None:
            raise first

    def _close_failure(self, fd: int, exc: OSError) -> irqbypass.DeviceError:
        op = f"close(fd {fd})"
        return self.calls.failure(op, exc, generic_hint(exc.errno or 0, op))

    # -- the vector's trigger ------------------------------------------------------

    def set_irqs(
        self,
        flags: int,
        data: bytes = b"",
        *,
        start: int | None = None,
        count: int = 1,
        hints: Mapping[int, str] | None = None,
    ) -> int:
        """One ``VFIO_DEVICE_SET_IRQS`` on this vector's index: vectors
        ``start..start+count-1`` (default: this vector alone). Returns what
        the kernel returned: > 0 when enabling MSI/MSI-X the host could
        allocate only that many vectors (then nothing was attached)."""
        assert self.group is not None
        first = self.vector if start is None else start
        buf = _abi.irq_set(flags, self.index, first, count, data)
        return self.calls.ioctl(
            self.group.fd, "VFIO_DEVICE_SET_IRQS", _abi.VFIO_DEVICE_SET_IRQS, buf, hints
        )

    def point(self, fd: int) -> None:
        """Point the vector's trigger at ``fd`` (-1: detach), this vector alone
        (the first attach on a NORESIZE index enables its whole block)."""
        group = self.group
        assert group is not None
        with group.locked():
            block = group.block_to_enable(self) if fd >= 0 else 0
            if block:
                group.enable_block(self, {self.vector: fd}, block)
                return
            enabled = group.blocks.get(self.index)
            if fd >= 0 and enabled is not None and self.vector >= enabled:
                raise self.too_few_enabled(enabled)
            got = self.set_irqs(
                EVENTFD_TRIGGER, _abi.eventfd_data(fd), hints=ATTACH if fd >= 0 else None
            )
            if got > 0:
                raise self.too_few(got, self.vector + 1)
        if fd >= 0:
            try:
                self.wire_paired()
            except BaseException:
                with contextlib.suppress(irqbypass.IrqBypassError):  # the refusal is raised
                    self.point(-1)  # all or nothing: the device does not keep the token
                raise

    def attach_alone(self, fd: int, block: int) -> None:
        """Attach ``fd`` to this vector alone (``block``: in a block not yet
        enabled, which is enabled with it alone): to find a run's refused vector."""
        if block:
            data = _abi.eventfd_data(*(fd if v == self.vector else -1 for v in range(block)))
            self.set_irqs(EVENTFD_TRIGGER, data, start=0, count=block)
        else:
            self.set_irqs(EVENTFD_TRIGGER, _abi.eventfd_data(fd))

    def detach_alone(self, block: int) -> None:
        """Undo :meth:`attach_alone`."""
        if block:
            self.set_irqs(DISABLE, start=0, count=0)
        else:
            self.set_irqs(EVENTFD_TRIGGER, _abi.eventfd_data(-1))

    def too_few(self, got: int, asked: int) -> irqbypass.DeviceError:
        # vfio_msi_enable: enabling vectors 0..asked-1 the host could allocate only
        # `got`; vfio-pci returns that count (not an error) and attaches nothing
        label = self.label
        return self.calls.refuse(
            f"VFIO_DEVICE_SET_IRQS enabled nothing: vfio-pci enables {label} vectors "
            f"0..{asked - 1} at once, and the host could allocate only {got} {label} "
            f"vectors: pick a vector below {got}, or free interrupt vectors on the host",
            errno.ENOSPC,
        )

    def too_few_enabled(self, enabled: int) -> irqbypass.DeviceError:
        label = self.label
        return self.calls.refuse(
            f"the host gave this device only {enabled} {label} vectors (0..{enabled - 1}) "
            "when the first of them was attached, and the index cannot grow (NORESIZE): "
            f"pick a vector below {enabled}, or free interrupt vectors on the host",
            errno.ENOSPC,
        )

    def mask(self) -> None:
        self.set_irqs(_abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_MASK)

    def unmask(self) -> None:
        self.set_irqs(_abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_UNMASK)

    # -- INTx: unmasked by the consumer's EOI eventfd -----------------------------

    def wire_paired(self) -> None:
        """Attached while paired: the paired consumer's EOI eventfd wired, if any."""
        if self.unmask_eventfd is None:
            self.wire_unmask(self.paired_eoi())

    def wire_unmask(self, eoi: irqbypass.Eventfd | None) -> None:
        """Hand ``eoi`` (the paired consumer's EOI eventfd) to vfio-pci as INTx's
        unmask eventfd (``DATA_EVENTFD | ACTION_UNMASK``), as QEMU does with
        KVM's resamplefd: the line is unmasked at the guest's EOI without a
        userspace step."""
        if self.index != _abi.VFIO_PCI_INTX_IRQ_INDEX or eoi is None or self.group is None:
            return
        self.set_irqs(
            _UNMASK_EVENTFD,
            _abi.eventfd_data(eoi.fileno()),
            hints={errno.EBUSY: "INTx already has an unmask eventfd: the VMM set one"},
        )
        self.unmask_eventfd = eoi

    def unwire_unmask(self) -> None:
        """Take the unmask eventfd back (fd -1)."""
        if self.unmask_eventfd is None or self.group is None:
            self.unmask_eventfd = None
            return
        self.unmask_eventfd = None
        self.set_irqs(_UNMASK_EVENTFD, _abi.eventfd_data(-1))
