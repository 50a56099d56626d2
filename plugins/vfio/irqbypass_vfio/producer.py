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
:class:`irqbypass.DeviceProducer`'s; this module holds only what is VFIO's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import irqbypass

from . import _abi, _device
from ._device import SharedDevice

__all__ = ["INDEX_NAMES", "MSI_QUIESCES", "DeviceInfo", "IrqInfo", "VfioProducer"]

#: vfio-pci's interrupt indexes (``VFIO_PCI_*_IRQ_INDEX``), by option name.
INDEX_NAMES: dict[str, int] = {
    "intx": _abi.VFIO_PCI_INTX_IRQ_INDEX,
    "msi": _abi.VFIO_PCI_MSI_IRQ_INDEX,
    "msix": _abi.VFIO_PCI_MSIX_IRQ_INDEX,
    "err": _abi.VFIO_PCI_ERR_IRQ_INDEX,
    "req": _abi.VFIO_PCI_REQ_IRQ_INDEX,
}
_INDEX_LABELS = {v: k for k, v in INDEX_NAMES.items()}

#: How stop() can quiesce an MSI/MSI-X vector, which vfio-pci cannot mask:
#: "swap" points its trigger at a holding eventfd (vfio-pci frees and requests
#: the host IRQ to do so: an MSI landing in between is lost, see docs/testing.md);
#: "keep" leaves the trigger on the token, whose counter keeps what arrives.
MSI_QUIESCES = ("swap", "keep")

_BDF = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
CONTAINER_PATH = "/dev/vfio/vfio"
IOMMUFD_PATH = "/dev/iommu"

BIND_HOWTO = (
    "bind the device to vfio-pci first: `modprobe vfio-pci; "
    "echo vfio-pci > /sys/bus/pci/devices/<bdf>/driver_override; "
    "echo <bdf> > /sys/bus/pci/devices/<bdf>/driver/unbind; "
    "echo <bdf> > /sys/bus/pci/drivers_probe` (then /dev/vfio/<group> and, "
    "on kernels with the VFIO cdev, /dev/vfio/devices/vfioN appear)"
)


def index_label(index: int) -> str:
    return _INDEX_LABELS.get(index, f"index {index}")


@dataclass(frozen=True)
class IrqInfo:
    """What ``VFIO_DEVICE_GET_IRQ_INFO`` said about one index."""

    index: int
    flags: int
    count: int

    @property
    def eventfd(self) -> bool:
        return bool(self.flags & _abi.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        return bool(self.flags & _abi.VFIO_IRQ_INFO_MASKABLE)

    @property
    def automasked(self) -> bool:
        return bool(self.flags & _abi.VFIO_IRQ_INFO_AUTOMASKED)

    @property
    def noresize(self) -> bool:
        return bool(self.flags & _abi.VFIO_IRQ_INFO_NORESIZE)


@dataclass(frozen=True)
class DeviceInfo:
    """What ``VFIO_DEVICE_GET_INFO`` said."""

    flags: int
    num_regions: int
    num_irqs: int

    @property
    def pci(self) -> bool:
        return bool(self.flags & _abi.VFIO_DEVICE_FLAGS_PCI)


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


class VfioProducer(irqbypass.DeviceProducer):
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
    #: vfio-pci frees and requests the host IRQ to move an MSI trigger: an MSI
    #: landing in between is lost (measured, docs/testing.md)
    swap_may_drop = True
    #: how MSI and MSI-X are quiesced unless ``msi_quiesce`` says otherwise
    DEFAULT_MSI_QUIESCE = "keep"

    def __init__(
        self,
        *,
        token: Hashable,
        device: str | None = None,
        device_fd: int | None = None,
        device_name: str | None = None,
        index: int | str = "msix",
        vector: int | None = None,
        irq: int | None = None,
        name: str | None = None,
        iommufd: str | int = IOMMUFD_PATH,
        msi_quiesce: str | None = None,
        seam: irqbypass.Seam | None = None,
    ) -> None:
        super().__init__(
            token=token, irq=irq, number=vector, name=name, seam=seam,
            device=device, device_fd=device_fd,
            device_help="a PCI address, /dev/vfio/devices/vfioN or /dev/vfio/<group>",
        )  # fmt: skip
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
        if device is not None and _BDF.match(device):
            self.device_name = device_name or device.lower()
        self.iommufd = iommufd
        # what open() obtained: the device, shared with the producers of its
        # other vectors (the last to close closes it), and our claim on the vector
        self._device: SharedDevice | None = None
        self._claimed = False
        #: the paired consumer's EOI eventfd, handed to vfio-pci as INTx's unmask
        self._unmask_eventfd: irqbypass.Eventfd | None = None
        self._owned: list[int] = []  # while opening the device: fds opened, in order
        self.mode: str | None = None  # "cdev", "group" or "fd"
        self.devid: int | None = None
        self.device_info: DeviceInfo | None = None
        self.irq_info: IrqInfo | None = None
        self._triggered = 0

    @classmethod
    def from_spec(cls, spec: irqbypass.EndpointSpec) -> VfioProducer:
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
        vector = opts.get_int("vector", cls.number(None, spec.irq), min=0, max=2**32 - 1)
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
                f"fd {fd} is not a VFIO {_fd_kind(op)} fd: pass a device from "
                "/dev/vfio/devices/vfioN, a /dev/vfio/<group> with device_name, or an fd "
                "returned by VFIO_GROUP_GET_DEVICE_FD / bound with VFIO_DEVICE_BIND_IOMMUFD"
            )
        return _generic_hint(code, op)

    # -- syscalls ----------------------------------------------------------

    def _open_node(self, path: str, hint_enoent: str) -> int:
        no_permission = (
            f"no permission to open {path}: run as root, or give this user the "
            f"node (`chown $USER {path}`, or a udev rule), and raise RLIMIT_MEMLOCK "
            "if the VMM maps guest memory"
        )
        fd = self.open_node(
            path,
            {
                errno.ENOENT: f"{path} does not exist: {hint_enoent}",
                errno.EACCES: no_permission,
                errno.EPERM: no_permission,
                errno.EBUSY: (
                    f"{path} is already open elsewhere (a VFIO group or device has one "
                    "user at a time): stop the other VMM, or let it hand its device fd to "
                    "this producer (device_fd=...)"
                ),
            },
        )
        self._owned.append(fd)
        return fd

    def _set_irqs(
        self,
        flags: int,
        data: bytes = b"",
        *,
        start: int | None = None,
        count: int = 1,
        hints: Mapping[int, str] | None = None,
    ) -> int:
        """One ``VFIO_DEVICE_SET_IRQS`` on this producer's index: vectors
        ``start..start+count-1`` (default: this vector alone). Returns what
        the kernel returned: > 0 when enabling MSI/MSI-X the host could
        allocate only that many vectors (then nothing was attached)."""
        assert self._fd is not None
        first = self.vector if start is None else start
        buf = _abi.irq_set(flags, self.index, first, count, data)
        return self.ioctl(self._fd, "VFIO_DEVICE_SET_IRQS", _abi.VFIO_DEVICE_SET_IRQS, buf, hints)

    def _too_few(self, got: int, asked: int) -> irqbypass.DeviceError:
        # vfio_msi_enable: enabling vectors 0..asked-1 the host could allocate only
        # `got`; vfio-pci returns that count (not an error) and attaches nothing
        label = index_label(self.index)
        return self.refuse(
            f"VFIO_DEVICE_SET_IRQS enabled nothing: vfio-pci enables {label} vectors "
            f"0..{asked - 1} at once, and the host could allocate only {got} {label} "
            f"vectors: pick a vector below {got}, or free interrupt vectors on the host",
            errno.ENOSPC,
        )

    def _block_to_enable(self, device: SharedDevice) -> int:
        """How many vectors the first attach must enable (0: attach alone).

        On a NORESIZE MSI/MSI-X index (every MSI index; MSI-X before Linux 6.5
        or without dynamic allocation) vfio-pci cannot add a vector to an
        enabled block: growing it means disabling and re-enabling the whole
        index, which loses what the other vectors raise meanwhile. So on a
        device opened here the first attach enables the whole block, as
        cloud-hypervisor does; a VMM's fd is the VMM's to enable."""
        info = self.irq_info
        msi = self.index in (_abi.VFIO_PCI_MSI_IRQ_INDEX, _abi.VFIO_PCI_MSIX_IRQ_INDEX)
        if not (msi and device.ours and info is not None and info.noresize):
            return 0
        return 0 if self.index in device.blocks else info.count

    def _enable_block(self, device: SharedDevice, fds: Mapping[int, int], count: int) -> None:
        """Enable vectors 0..count-1 with one SET_IRQS, ``fds`` attached (the
        rest -1); when the host allocates fewer, enable what it could if every
        vector of ``fds`` fits (QEMU retries MSI so)."""
        while True:
            data = _abi.eventfd_data(*(fds.get(v, -1) for v in range(count)))
            got = self._set_irqs(_EVENTFD_TRIGGER, data, start=0, count=count, hints=_ATTACH)
            if got <= 0:
                device.blocks[self.index] = count
                return
            if max(fds) >= got:
                raise self._too_few(got, count)
            count = got

    def device_point(self, fd: int) -> None:
        """Point the vector's trigger at ``fd`` (-1: detach), this vector alone
        (the first attach on a NORESIZE index enables its whole block)."""
        device = self._device
        assert device is not None
        with device.lock:
            block = self._block_to_enable(device) if fd >= 0 else 0
            if block:
                self._enable_block(device, {self.vector: fd}, block)
                return
            enabled = device.blocks.get(self.index)
            if fd >= 0 and enabled is not None and self.vector >= enabled:
                raise self.too_few_enabled(enabled)
            got = self._set_irqs(
                _EVENTFD_TRIGGER, _abi.eventfd_data(fd), hints=_ATTACH if fd >= 0 else None
            )
            if got > 0:
                raise self._too_few(got, self.vector + 1)
        if fd >= 0 and self._unmask_eventfd is None:
            self._wire_unmask(self.consumer)  # opened while paired

    # -- INTx: unmasked by the consumer's EOI eventfd -----------------------------

    def _wire_unmask(self, consumer: irqbypass.Consumer | None) -> None:
        """Hand ``consumer``'s EOI eventfd to vfio-pci as INTx's unmask eventfd
        (``DATA_EVENTFD | ACTION_UNMASK``), as QEMU does with KVM's resamplefd:
        the line is unmasked at the guest's EOI without a userspace step."""
        eoi = consumer.eoi_eventfd if consumer is not None else None
        if self.index != _abi.VFIO_PCI_INTX_IRQ_INDEX or eoi is None or self._fd is None:
            return
        self._set_irqs(
            _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_UNMASK,
            _abi.eventfd_data(eoi.fileno()),
            hints={errno.EBUSY: "INTx already has an unmask eventfd: the VMM set one"},
        )
        self._unmask_eventfd = eoi

    def _unwire_unmask(self) -> None:
        """Take the unmask eventfd back (fd -1)."""
        if self._unmask_eventfd is None or self._fd is None:
            self._unmask_eventfd = None
            return
        self._unmask_eventfd = None
        self._set_irqs(
            _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_UNMASK,
            _abi.eventfd_data(-1),
        )

    def add_consumer(self, consumer: irqbypass.Consumer) -> None:
        """Pairing: an INTx producer wires the consumer's EOI eventfd, if any."""
        with self._lock:
            if self._unmask_eventfd is None:
                self._wire_unmask(consumer)

    def del_consumer(self, consumer: irqbypass.Consumer) -> None:
        """Unpairing: the unmask eventfd taken back; a line not stopped is
        unmasked, so nothing waits for an EOI that no one forwards now."""
        with self._lock:
            if self._unmask_eventfd is None:
                return
            self._unwire_unmask()
            if not self.stopped and self._pointed_at is not None:
                self.device_unmask()

    def too_few_enabled(self, enabled: int) -> irqbypass.DeviceError:
        label = index_label(self.index)
        return self.refuse(
            f"the host gave this device only {enabled} {label} vectors (0..{enabled - 1}) "
            "when the first of them was attached, and the index cannot grow (NORESIZE): "
            f"pick a vector below {enabled}, or free interrupt vectors on the host",
            errno.ENOSPC,
        )

    def device_mask(self) -> None:
        self._set_irqs(_abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_MASK)

    def device_unmask(self) -> None:
        self._set_irqs(_abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_UNMASK)

    # -- open / close --------------------------------------------------------

    @property
    def attached_to(self) -> int | None:
        """The eventfd the vector's trigger points at (token, or the holding
        eventfd while stopped), None when detached."""
        return self.pointed_at

    @property
    def can_mask(self) -> bool:  # type: ignore[override]
        """INTx, unless GET_IRQ_INFO said it is not maskable."""
        return self.index == _abi.VFIO_PCI_INTX_IRQ_INDEX and (
            self.irq_info is None or self.irq_info.maskable
        )

    @property
    def quiesce(self) -> str:
        """How stop() quiesces this vector: "mask" (INTx), else ``msi_quiesce``."""
        return "mask" if self.can_mask else self.msi_quiesce

    def device_open(self) -> None:
        key, opener = self._where()
        self._take(key, opener)
        self._check_vector()
        self._claim()

    def _where(self) -> tuple[Hashable, Callable[[], None]]:
        """The key of the device in this process, and how to open it."""
        seam = _device.seam_key(self.seam)
        if self._given_fd is not None:
            return (seam, "fd", self._given_fd), self._use_given_fd
        assert self.device is not None
        path = self.device
        if _BDF.match(path):
            path, group = self._resolve_bdf(path.lower())
            is_group = group is not None
        else:
            is_group = self.device_name is not None
        if is_group:
            return (seam, "group", path, self.device_name), lambda: self._open_group(path)
        iommufd = self.iommufd
        return (seam, "cdev", path, iommufd), lambda: self._open_cdev(path)

    def _use_given_fd(self) -> None:
        self.mode = "fd"
        self._fd = self._given_fd

    @irqbypass.signal_safe
    def _take(self, key: Hashable, opener: Callable[[], None]) -> None:
        """Share the device the other producers of this process opened, or
        open it (``opener``); a Ctrl-C waits until the reference is ours."""
        self._device = _device.acquire(key, lambda: self._open_fresh(key, opener))
        self._fd = self._device.fd
        self.mode, self.devid = self._device.mode, self._device.devid

    def _open_fresh(self, key: Hashable, opener: Callable[[], None]) -> SharedDevice:
        self._owned = []
        try:
            opener()
        except BaseException:
            fds, dev, self._owned, self._fd = self._owned, self._fd, [], None
            for fd in sorted(fds, key=lambda f: f != dev):
                with contextlib.suppress(OSError):  # the open's failure is raised
                    self.seam.close(fd)
            raise
        assert self._fd is not None and self.mode is not None
        owned, self._owned = self._owned, []
        return SharedDevice(key, self._fd, owned, self.mode, self.devid)

    @irqbypass.signal_safe
    def _claim(self) -> None:
        """One producer per vector: a second would take the first's trigger."""
        device = self._device
        assert device is not None
        with device.lock:
            holder = device.holders.get((self.index, self.vector))
            if holder is not None:
                raise self.refuse(
                    f"{index_label(self.index)} vector {self.vector} of this device is "
                    f"already attached by producer {holder!r} in this process: give each "
                    "vector one producer",
                    errno.EBUSY,
                )
            device.holders[(self.index, self.vector)] = self.name
            self._claimed = True

    def _resolve_bdf(self, bdf: str) -> tuple[str, str | None]:
        """The cdev of a PCI device when the kernel has one, else its group."""
        base = os.path.join(self.seam.sysfs_root, "bus/pci/devices", bdf)
        if not os.path.isdir(base):
            raise self.refuse(
                f"there is no PCI device {bdf} (no {base}): check the address with `lspci -D`",
                errno.ENOENT,
            )
        driver = os.path.join(base, "driver")
        bound = os.path.basename(os.readlink(driver)) if os.path.islink(driver) else None
        if bound is None or "vfio" not in bound:
            raise self.refuse(
                f"PCI device {bdf} is bound to {bound or 'no driver'}, not vfio-pci: "
                + BIND_HOWTO.replace("<bdf>", bdf),
                errno.ENODEV,
            )
        vfio_dev = os.path.join(base, "vfio-dev")
        if os.path.isdir(vfio_dev):
            # Linux 6.1-6.5 have vfio-dev/vfioN too, but no cdev: only a kernel
            # with CONFIG_VFIO_DEVICE_CDEV gives it a device number (its "dev")
            names = sorted(
                n
                for n in os.listdir(vfio_dev)
                if n.startswith("vfio") and os.path.exists(os.path.join(vfio_dev, n, "dev"))
            )
            if names:
                return f"/dev/vfio/devices/{names[0]}", None
        link = os.path.join(base, "iommu_group")
        if not os.path.islink(link):
            raise self.refuse(
                f"PCI device {bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on / "
                "amd_iommu=on) or load vfio with enable_unsafe_noiommu_mode=1",
                errno.ENODEV,
            )
        group = os.path.basename(os.readlink(link))
        noiommu = os.path.join("/dev/vfio", f"noiommu-{group}")
        return (noiommu if os.path.exists(noiommu) else f"/dev/vfio/{group}"), group

    def _open_cdev(self, path: str) -> None:
        """iommufd cdev: open it, then VFIO_DEVICE_BIND_IOMMUFD, without which
        the kernel refuses every other device ioctl (EINVAL)."""
        self.mode = "cdev"
        self._fd = self._open_node(path, BIND_HOWTO)
        if isinstance(self.iommufd, int):
            iommufd = self.iommufd
        else:
            iommufd = self._open_node(
                self.iommufd, "load iommufd (`modprobe iommufd`) or open the device by group"
            )
        bind = _abi.vfio_device_bind_iommufd(
            argsz=ctypes.sizeof(_abi.vfio_device_bind_iommufd), flags=0, iommufd=iommufd
        )
        buf = bytearray(bytes(bind))
        self.ioctl(
            self._fd,
            "VFIO_DEVICE_BIND_IOMMUFD",
            _abi.VFIO_DEVICE_BIND_IOMMUFD,
            buf,
            _bind_hints(path),
        )
        self.devid = _abi.vfio_device_bind_iommufd.from_buffer_copy(buf).out_devid

    def _open_group(self, path: str) -> None:
        """Legacy group: the group must be viable (every device in it bound to
        vfio-pci or to nothing) and in a container with an IOMMU model set
        before VFIO_GROUP_GET_DEVICE_FD hands out a device fd."""
        self.mode = "group"
        if not self.device_name:
            raise self.refuse(
                f"{path} is a VFIO group: say which of its devices to open with "
                "device_name (its PCI address, as listed in "
                "/sys/kernel/iommu_groups/<group>/devices)"
            )
        group = self._open_node(path, BIND_HOWTO)
        status = _abi.vfio_group_status(argsz=ctypes.sizeof(_abi.vfio_group_status))
        buf = bytearray(bytes(status))
        self.ioctl(group, "VFIO_GROUP_GET_STATUS", _abi.VFIO_GROUP_GET_STATUS, buf)
        flags = _abi.vfio_group_status.from_buffer_copy(buf).flags
        if not flags & _abi.VFIO_GROUP_FLAGS_VIABLE:
            number = os.path.basename(path).removeprefix("noiommu-")
            raise self.refuse(
                f"VFIO group {path} is not viable: every device in "
                f"/sys/kernel/iommu_groups/{number}/devices must be bound to vfio-pci "
                "(or to no driver) before any of them can be used; "
                + BIND_HOWTO.replace("bind the device", "bind each of them"),
                errno.EPERM,
            )
        if not flags & _abi.VFIO_GROUP_FLAGS_CONTAINER_SET:
            self._attach_container(group)
        name = bytearray(self.device_name.encode() + b"\0")
        self._fd = self.ioctl(
            group,
            "VFIO_GROUP_GET_DEVICE_FD",
            _abi.VFIO_GROUP_GET_DEVICE_FD,
            name,
            dict.fromkeys(
                (errno.ENODEV, errno.EINVAL, errno.EBUSY),
                f"is {self.device_name!r} one of the devices listed in "
                "/sys/kernel/iommu_groups/<group>/devices, bound to vfio-pci and not open "
                "elsewhere?",
            ),
        )
        self._owned.append(self._fd)

    def _attach_container(self, group: int) -> None:
        container = self._open_node(CONTAINER_PATH, "load vfio (`modprobe vfio-pci`)")
        version = self.ioctl(container, "VFIO_GET_API_VERSION", _abi.VFIO_GET_API_VERSION, 0)
        if version != _abi.VFIO_API_VERSION:
            raise self.refuse(
                f"{CONTAINER_PATH} speaks VFIO API {version}, this plugin "
                f"{_abi.VFIO_API_VERSION}; hand over a device fd instead (device_fd=...)",
                errno.EPROTO,
            )
        self.ioctl(
            group,
            "VFIO_GROUP_SET_CONTAINER",
            _abi.VFIO_GROUP_SET_CONTAINER,
            bytearray(bytes(ctypes.c_int32(container))),
        )
        for model in (_abi.VFIO_TYPE1v2_IOMMU, _abi.VFIO_TYPE1_IOMMU, _abi.VFIO_NOIOMMU_IOMMU):
            if self.ioctl(container, "VFIO_CHECK_EXTENSION", _abi.VFIO_CHECK_EXTENSION, model):
                self.ioctl(container, "VFIO_SET_IOMMU", _abi.VFIO_SET_IOMMU, model)
                return
        raise self.refuse(
            "the VFIO container supports no IOMMU model this plugin knows (type1v2, type1, "
            "noiommu); hand over a device fd from a VMM that set one up (device_fd=...)",
            errno.ENODEV,
        )

    def _check_vector(self) -> None:
        """GET_INFO and GET_IRQ_INFO (asked once per shared device), then the
        vector checked against them."""
        assert self._fd is not None and self._device is not None
        cache = self._device.info
        device_info = cache.get(-1)
        if not isinstance(device_info, DeviceInfo):
            info = _abi.vfio_device_info(argsz=ctypes.sizeof(_abi.vfio_device_info))
            buf = bytearray(bytes(info))
            self.ioctl(self._fd, "VFIO_DEVICE_GET_INFO", _abi.VFIO_DEVICE_GET_INFO, buf)
            got = _abi.vfio_device_info.from_buffer_copy(buf)
            device_info = cache[-1] = DeviceInfo(got.flags, got.num_regions, got.num_irqs)
        self.device_info = device_info
        if self.index >= device_info.num_irqs:
            raise self.refuse(
                f"the device has {device_info.num_irqs} interrupt indexes "
                f"(0..{device_info.num_irqs - 1}); "
                f"{index_label(self.index)} ({self.index}) is out of range: pick another index"
            )
        irq_info = cache.get(self.index)
        if not isinstance(irq_info, IrqInfo):
            irq = _abi.vfio_irq_info(argsz=ctypes.sizeof(_abi.vfio_irq_info), index=self.index)
            buf = bytearray(bytes(irq))
            self.ioctl(self._fd, "VFIO_DEVICE_GET_IRQ_INFO", _abi.VFIO_DEVICE_GET_IRQ_INFO, buf)
            raw = _abi.vfio_irq_info.from_buffer_copy(buf)
            irq_info = cache[self.index] = IrqInfo(raw.index, raw.flags, raw.count)
        self.irq_info = got_irq = irq_info
        label = index_label(self.index)
        if got_irq.count == 0:
            raise self.refuse(
                f"the device has no {label} interrupts (VFIO_DEVICE_GET_IRQ_INFO count 0): "
                "pick an index it implements (msix, msi or intx)"
            )
        if self.vector >= got_irq.count:
            raise self.refuse(
                f"vector {self.vector} is out of range: {label} has {got_irq.count} "
                f"vector(s), 0..{got_irq.count - 1}"
            )
        if not self.irq_info.eventfd:
            raise self.refuse(
                f"{label} does not support eventfd signalling (VFIO_IRQ_INFO_EVENTFD is not "
                "set), so it cannot be bypassed: pick another index"
            )

    def device_close(self) -> None:
        """Give up the vector and our share of the device; the last producer of
        the device closes what was opened: the device first, then what it hangs
        off (group before container)."""
        first: irqbypass.DeviceError | None = None
        if self._unmask_eventfd is not None:
            try:
                self._unwire_unmask()
            except irqbypass.DeviceError as exc:
                first = exc
        device, self._device = self._device, None
        self._fd = None
        if device is None:
            return
        if self._claimed:
            with device.lock:
                device.holders.pop((self.index, self.vector), None)
            self._claimed = False
        for fd in _device.release(device):
            try:
                self.seam.close(fd)
            except OSError as exc:
                op = f"close(fd {fd})"
                first = first or self.failure(op, exc, _generic_hint(exc.errno or 0, op))
        if first is not None:
            raise first

    def trigger(self, n: int = 1) -> None:
        """Loopback: ``SET_IRQS(DATA_NONE | ACTION_TRIGGER)`` makes the kernel
        signal the vector's current eventfd, as though the device fired
        (vfio.h documents it for testing). Counted as ``triggered``."""
        with self._lock:
            if self._fd is None:
                raise irqbypass.IrqBypassError(f"{self.describe()} is not open; call open() first")
            for _ in range(n):
                self._set_irqs(_abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_TRIGGER)
                self._triggered += 1

    # -- many vectors at once (Topology.apply/teardown, or the embedding VMM) --------

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

    @classmethod
    def device_point_batch(cls, batch: Sequence[irqbypass.DeviceProducer]) -> None:
        done: list[list[VfioProducer]] = []
        try:
            for run in _runs(_producers(batch, "open_group")):
                _attach_run(run)
                done.append(run)
        except BaseException:
            for run in reversed(done):
                with contextlib.suppress(irqbypass.IrqBypassError):  # the failure is raised
                    _detach_run(run)
            raise

    @classmethod
    def device_detach_batch(cls, batch: Sequence[irqbypass.DeviceProducer]) -> None:
        for run in _runs(_producers(batch, "close_group")):
            _detach_run(run)

    def device_stats(self) -> Mapping[str, int]:
        """``triggered``: loopback triggers (besides the template's ``held``,
        ``replayed``, ``quiesces`` and ``attached``)."""
        return {"triggered": self._triggered}


_EVENTFD_TRIGGER = _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER
#: with start 0 and count 0: disable the index (vfio_pci_set_msi_trigger)
_DISABLE = _abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_TRIGGER
_ATTACH = {
    errno.EINVAL: (
        "the device refused the eventfd for this vector: vfio-pci enables only one "
        "of INTx, MSI and MSI-X at a time, so if the VMM (or another producer on "
        "this fd) enabled another of them, it must disable that first; for MSI/MSI-X "
        "already enabled with fewer vectors on a NORESIZE index, the VMM must "
        "re-enable it with more (or open the vectors as one group); on a cdev, bind "
        "it to an iommufd first (VFIO_DEVICE_BIND_IOMMUFD)"
    )
}


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


def _runs(batch: Sequence[VfioProducer]) -> list[list[VfioProducer]]:
    """The batch cut into runs of consecutive vectors of one device and index
    (one SET_IRQS each: a vector between two of ours is not ours to touch),
    or all of an index whose whole block the first attach enables."""
    by_index: dict[tuple[int, int], list[VfioProducer]] = {}
    for p in batch:
        assert p._device is not None
        by_index.setdefault((id(p._device), p.index), []).append(p)
    runs: list[list[VfioProducer]] = []
    for group in by_index.values():
        group.sort(key=lambda p: p.vector)
        assert group[0]._device is not None
        if group[0]._block_to_enable(group[0]._device):
            runs.append(group)  # the first attach of a NORESIZE index: its whole block
            continue
        run = [group[0]]
        for p in group[1:]:
            if run[-1].vector + 1 == p.vector:
                run.append(p)
            else:
                runs.append(run)
                run = [p]
        runs.append(run)
    return runs


def _attach_run(run: list[VfioProducer]) -> None:
    """Attach a run's tokens with one SET_IRQS, or the index's whole block
    when it is the first attach on a NORESIZE index; on failure find the
    vector the kernel refused (it does not say which), and leave none attached."""
    first = run[0]
    device = first._device
    assert device is not None
    fds = {p.vector: p.token.fileno() for p in run if isinstance(p.token, irqbypass.Eventfd)}
    block = 0
    try:
        with device.lock:
            block = first._block_to_enable(device)
            if block:
                first._enable_block(device, fds, block)
                return
            enabled = device.blocks.get(first.index)
            if enabled is not None and run[-1].vector >= enabled:
                raise next(p for p in run if p.vector >= enabled).too_few_enabled(enabled)
            data = _abi.eventfd_data(*fds.values())
            got = first._set_irqs(_EVENTFD_TRIGGER, data, count=len(run), hints=_ATTACH)
            if got > 0:
                raise next(p for p in run if p.vector >= got)._too_few(got, run[-1].vector + 1)
    except irqbypass.DeviceError as exc:
        raise _name_the_vector(run, exc, block) from exc


def _name_the_vector(
    run: list[VfioProducer], exc: irqbypass.DeviceError, block: int
) -> irqbypass.DeviceError:
    """The run's failure, naming its vector: the kernel unwound the run and
    does not say which vector it refused, so each is tried alone (attached,
    then detached at once; in a NORESIZE block not yet enabled: the block
    enabled with it alone, then disabled again) up to the first refused."""
    culprit, error = run[0], exc
    if exc.errno != errno.ENOSPC and len(run) > 1:
        device = run[0]._device
        assert device is not None
        with device.lock:
            for p in run:
                assert isinstance(p.token, irqbypass.Eventfd)
                fd = p.token.fileno()
                try:
                    if block:
                        data = _abi.eventfd_data(
                            *(fd if v == p.vector else -1 for v in range(block))
                        )
                        p._set_irqs(_EVENTFD_TRIGGER, data, start=0, count=block)
                    else:
                        p._set_irqs(_EVENTFD_TRIGGER, _abi.eventfd_data(fd))
                except irqbypass.DeviceError as probe:
                    culprit, error = p, probe
                    break
                if block:
                    p._set_irqs(_DISABLE, start=0, count=0)
                else:
                    p._set_irqs(_EVENTFD_TRIGGER, _abi.eventfd_data(-1))
    vectors = f"{run[0].vector}..{run[-1].vector}" if len(run) > 1 else str(run[0].vector)
    where = culprit.describe()
    message = error.message.removeprefix(where + ": ") if where else error.message
    return irqbypass.DeviceError(
        f"{where}: attaching {index_label(culprit.index)} vectors {vectors} with one "
        f"VFIO_DEVICE_SET_IRQS: vector {culprit.vector}: {message}; none of this group's "
        "vectors was left attached",
        errno=error.errno,
    )


def _detach_run(run: list[VfioProducer]) -> None:
    device = run[0]._device
    assert device is not None
    with device.lock:
        run[0]._set_irqs(_EVENTFD_TRIGGER, _abi.eventfd_data(*[-1] * len(run)), count=len(run))


def _fd_kind(ioctl_name: str) -> str:
    if ioctl_name.startswith("VFIO_GROUP"):
        return "group"
    if ioctl_name in ("VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION", "VFIO_SET_IOMMU"):
        return "container"
    return "device"


def _bind_hints(path: str) -> dict[int, str]:
    return {
        errno.EINVAL: f"{path} is already bound to an iommufd, or the iommufd fd is not one",
        errno.EBADF: "the iommufd fd is not open",
        errno.EPERM: (
            "the platform lacks interrupt remapping: enable it (intel_iommu=on), or load "
            "iommufd with allow_unsafe_interrupts=1 only if you accept the risk"
        ),
        errno.ENOTTY: (
            f"{path} is not a VFIO device cdev, or the kernel predates the VFIO cdev (6.6): "
            'open the device by group (device = "/dev/vfio/<group>", device_name = ...)'
        ),
    }


def _generic_hint(code: int, op: str) -> str:
    if code == errno.EINVAL:
        return (
            f"the kernel refused the arguments of {op}: check the index and vector against "
            "VFIO_DEVICE_GET_IRQ_INFO (stats/irq_info), and that a cdev is bound to an iommufd"
        )
    if code == errno.EBUSY:
        return (
            "the device or its interrupt is in use (another VMM, or a second user of the "
            "group): close the other user, or take its device fd (device_fd=...)"
        )
    if code == errno.ENODEV:
        return "the device is gone (unbound from vfio-pci or hot-unplugged): bind it again"
    if code in (errno.EPERM, errno.EACCES):
        return "permission denied: run as root or grant this user the VFIO nodes"
    if code == errno.ENOTTY:
        return "the fd does not implement this VFIO ioctl: pass a VFIO device fd"
    return "see the kernel log (dmesg) for the device's complaint"
