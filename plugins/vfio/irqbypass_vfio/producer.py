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

import ctypes
import errno
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import irqbypass

from . import _abi

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
        vec = self.number(vector, irq)
        super().__init__(
            token=token, irq=self.number(irq, vec), name=name, seam=seam,
            device=device, device_fd=device_fd,
            device_help="a PCI address, /dev/vfio/devices/vfioN or /dev/vfio/<group>",
        )  # fmt: skip
        what = f"vfio producer {self.name!r}"
        self.check_number("vector", vec)
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
        # what open() obtained, closed in reverse by close()
        self._owned: list[int] = []  # fds we opened, in opening order
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
        self, flags: int, data: bytes = b"", *, hints: Mapping[int, str] | None = None
    ) -> None:
        assert self._fd is not None
        buf = _abi.irq_set(flags, self.index, self.vector, 1, data)
        got = self.ioctl(self._fd, "VFIO_DEVICE_SET_IRQS", _abi.VFIO_DEVICE_SET_IRQS, buf, hints)
        if got > 0:
            # vfio_msi_enable: enabling vectors 0..vector, the host could allocate
            # only `got`; vfio-pci returns that count (not an error) and attaches nothing
            label = index_label(self.index)
            raise self.refuse(
                f"VFIO_DEVICE_SET_IRQS enabled nothing: vfio-pci enables {label} vectors "
                f"0..{self.vector} at once, and the host could allocate only {got} {label} "
                f"vectors: pick a vector below {got}, or free interrupt vectors on the host",
                errno.ENOSPC,
            )

    def device_point(self, fd: int) -> None:
        """Point the vector's trigger at ``fd`` (-1: detach)."""
        hints = {}
        if fd >= 0:
            hints[errno.EINVAL] = (
                "the device refused the eventfd for this vector: vfio-pci enables only one "
                "of INTx, MSI and MSI-X at a time, so if the VMM (or another producer on "
                "this fd) enabled another of them, it must disable that first; for MSI/MSI-X "
                "already enabled with fewer vectors on a NORESIZE index, the VMM must "
                "re-enable it with more (or open the highest vector first); on a cdev, bind "
                "it to an iommufd first (VFIO_DEVICE_BIND_IOMMUFD)"
            )
        self._set_irqs(
            _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER,
            _abi.eventfd_data(fd),
            hints=hints,
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
        self._open_device()
        self._check_vector()

    def _open_device(self) -> None:
        if self._given_fd is not None:
            self.mode = "fd"
            self._fd = self._given_fd
            return
        assert self.device is not None
        path = self.device
        if _BDF.match(path):
            path, group = self._resolve_bdf(path.lower())
            is_group = group is not None
        else:
            is_group = self.device_name is not None
        if is_group:
            self._open_group(path)
        else:
            self._open_cdev(path)

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
        assert self._fd is not None
        info = _abi.vfio_device_info(argsz=ctypes.sizeof(_abi.vfio_device_info))
        buf = bytearray(bytes(info))
        self.ioctl(self._fd, "VFIO_DEVICE_GET_INFO", _abi.VFIO_DEVICE_GET_INFO, buf)
        got = _abi.vfio_device_info.from_buffer_copy(buf)
        self.device_info = DeviceInfo(got.flags, got.num_regions, got.num_irqs)
        if self.index >= got.num_irqs:
            raise self.refuse(
                f"the device has {got.num_irqs} interrupt indexes (0..{got.num_irqs - 1}); "
                f"{index_label(self.index)} ({self.index}) is out of range: pick another index"
            )
        irq = _abi.vfio_irq_info(argsz=ctypes.sizeof(_abi.vfio_irq_info), index=self.index)
        buf = bytearray(bytes(irq))
        self.ioctl(self._fd, "VFIO_DEVICE_GET_IRQ_INFO", _abi.VFIO_DEVICE_GET_IRQ_INFO, buf)
        got_irq = _abi.vfio_irq_info.from_buffer_copy(buf)
        self.irq_info = IrqInfo(got_irq.index, got_irq.flags, got_irq.count)
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
        """Close what open() opened: the device first, then what it hangs off
        (group before container)."""
        first: irqbypass.DeviceError | None = None
        order = sorted(self._owned, key=lambda fd: fd != self._fd)
        self._owned.clear()
        self._fd = None
        for fd in order:
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

    def device_stats(self) -> Mapping[str, int]:
        """``triggered``: loopback triggers (besides the template's ``held``,
        ``replayed``, ``quiesces`` and ``attached``)."""
        return {"triggered": self._triggered}


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
