"""Thin, checked wrappers over /dev/kvm and a VM fd.

Every failing ioctl becomes an :class:`irqbypass.DeviceError` carrying the
kernel's errno, raised from the ``OSError``, with a message saying what to do.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import irqbypass

from . import _abi

#: where the KVM device lives; every entry point takes a ``device`` path seam
DEFAULT_DEVICE = "/dev/kvm"

#: KVM's bound on GSIs (KVM_MAX_IRQ_ROUTES); the capability reports the real one
MAX_GSI_ROUTES = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_libc.ioctl.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg: int | ctypes.Structure | bytearray, what: str) -> int:
    """``fcntl.ioctl`` that raises DeviceError naming ``what`` on failure."""
    try:
        if isinstance(arg, int):
            # through libc: fcntl.ioctl takes only a signed C int argument
            ret = raw_ioctl(fd, request, arg)
            if ret < 0:
                raise OSError(-ret, os.strerror(-ret))
            return ret
        return fcntl.ioctl(fd, request, arg, True)  # type: ignore[no-any-return]
    except OSError as exc:
        raise irqbypass.DeviceError(
            f"{what} failed: {exc.strerror} (errno {exc.errno})", errno=exc.errno
        ) from exc


def raw_ioctl(fd: int, request: int, arg: int = 0) -> int:
    """ioctl through libc without Python's retry logic: returns -errno on failure.

    Used for KVM_RUN, whose EINTR is the stop signal and must not be retried.
    """
    ret: int = _libc.ioctl(fd, request, arg)
    return -ctypes.get_errno() if ret < 0 else ret


def open_device(device: str = DEFAULT_DEVICE) -> int:
    """Open the KVM device, with an error that says what to do when it fails."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise irqbypass.DeviceError(
            f"{device} does not exist: KVM is not available on this host; load the kvm "
            "module (modprobe kvm_intel or kvm_amd), enable virtualization in the "
            "firmware, or run where nested virtualization is enabled",
            errno=exc.errno,
        ) from exc
    except PermissionError as exc:
        raise irqbypass.DeviceError(
            f"{device}: permission denied; run as a user in the group that owns "
            f"{device} (usually 'kvm': sudo usermod -aG kvm $USER, then log in again)",
            errno=exc.errno,
        ) from exc
    except OSError as exc:
        raise irqbypass.DeviceError(
            f"cannot open {device}: {exc.strerror}; check that it is the KVM device",
            errno=exc.errno,
        ) from exc
    try:
        version = fcntl.ioctl(fd, _abi.KVM_GET_API_VERSION, 0)
    except OSError as exc:
        os.close(fd)
        raise irqbypass.DeviceError(
            f"{device} is not a KVM device (KVM_GET_API_VERSION: {exc.strerror}); "
            "point the plugin at /dev/kvm",
            errno=exc.errno,
        ) from exc
    if version != _abi.KVM_API_VERSION:
        os.close(fd)
        raise irqbypass.DeviceError(
            f"{device} speaks KVM API {version}, this plugin needs {_abi.KVM_API_VERSION}",
            errno=errno.ENOTSUP,
        )
    return fd


def fd_target(fd: int) -> str | None:
    """What ``fd`` points to (``anon_inode:kvm-vm`` for a VM), None if closed."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def check_vm_fd(fd: int) -> None:
    """Refuse an fd that is not an open KVM VM fd, before any ioctl on it."""
    target = fd_target(fd)
    if target is None:
        raise irqbypass.InvalidEndpointError(
            f"fd {fd} is not open; pass the VM fd your VMM got from KVM_CREATE_VM "
            "(and keep it open while the consumer is open)",
            errno=errno.EBADF,
        )
    if target != "anon_inode:kvm-vm":
        raise irqbypass.InvalidEndpointError(
            f"fd {fd} is not a KVM VM fd (it is {target}); pass the fd KVM_CREATE_VM "
            'returned, or vm="guest" for the plugin\'s own guest'
        )


#: KVM keeps the per-VM halt-polling limit in an unsigned int (ns)
MAX_HALT_POLL_NS = 2**32 - 1


def check_halt_poll_ns(ns: object) -> None:
    """Refuse a halt-polling limit KVM would refuse, before any ioctl."""
    if isinstance(ns, bool) or not isinstance(ns, int) or not 0 <= ns <= MAX_HALT_POLL_NS:
        raise irqbypass.InvalidEndpointError(
            f"halt_poll_ns must be an integer from 0 (never poll) to {MAX_HALT_POLL_NS} "
            f"nanoseconds, not {ns!r}; leave it unset (None) for the kernel's default"
        )


@dataclass(frozen=True)
class MsiRoute:
    """One MSI routing entry: where the message goes (address), what it says
    (data), and the requester id for platforms that need it (devid)."""

    address: int
    data: int
    devid: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.address < 2**64 or not 0 <= self.data < 2**32:
            raise irqbypass.InvalidEndpointError(
                f"MSI address must fit 64 bits and data 32 bits (got address="
                f"{self.address:#x}, data={self.data:#x})"
            )
        if self.devid is not None and not 0 <= self.devid < 2**32:
            raise irqbypass.InvalidEndpointError(f"MSI devid {self.devid:#x} does not fit 32 bits")


class Vm:
    """A KVM VM fd: owned (created here) or borrowed (the embedding VMM's).

    It also keeps the GSI routing table that this plugin writes with
    KVM_SET_GSI_ROUTING. That ioctl replaces the VM's whole table, so every
    writer must go through one table: the x86 default (GSI n -> IOAPIC pin n,
    and PIC pin n for n < 16) plus the MSI routes consumers add. ``Vm.of(fd)``
    returns the one shared instance for a borrowed fd.
    """

    _borrowed: ClassVar[dict[int, tuple[Vm, int]]] = {}
    _borrowed_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, fd: int, *, owned: bool) -> None:
        self.fd = fd
        self.owned = owned
        self.msi_routes: dict[int, MsiRoute] = {}
        self._lock = threading.Lock()

    # -- life --------------------------------------------------------------

    @classmethod
    def create(cls, kvm_fd: int, device: str = DEFAULT_DEVICE) -> Vm:
        fd = ioctl(kvm_fd, _abi.KVM_CREATE_VM, 0, f"KVM_CREATE_VM on {device}")
        return cls(fd, owned=True)

    @classmethod
    def borrow(cls, fd: int) -> Vm:
        """The shared wrapper of a VMM-owned VM fd; release it with :meth:`close`."""
        check_vm_fd(fd)
        with cls._borrowed_lock:
            vm, refs = cls._borrowed.get(fd, (None, 0))
            if vm is None:
                vm = cls(fd, owned=False)
            cls._borrowed[fd] = (vm, refs + 1)
            return vm

    def close(self) -> None:
        """Close an owned fd; drop one reference to a borrowed one (never closed)."""
        if not self.owned:
            with Vm._borrowed_lock:
                vm, refs = Vm._borrowed.get(self.fd, (None, 0))
                if vm is self:
                    if refs <= 1:
                        del Vm._borrowed[self.fd]
                    else:
                        Vm._borrowed[self.fd] = (vm, refs - 1)
            return
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    # -- capabilities --------------------------------------------------------

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, _abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def require(self, cap: int, what: str) -> int:
        value = self.check_extension(cap)
        if value <= 0:
            raise irqbypass.DeviceError(
                f"this kernel's KVM lacks {what} (KVM_CHECK_EXTENSION returned {value}); "
                "use a kernel built with it or turn the option off",
                errno=errno.ENOTSUP,
            )
        return value

    # -- halt polling --------------------------------------------------------

    def set_halt_poll_ns(self, ns: int) -> None:
        """Cap how long a halted vCPU of this VM busy-waits for a wake-up before
        it sleeps (KVM_ENABLE_CAP with KVM_CAP_HALT_POLL; 0 = never poll).

        Overrides the kvm module's ``halt_poll_ns`` for this VM only; QEMU
        exposes the same knob as the ``halt-poll-ns`` accelerator property.
        """
        check_halt_poll_ns(ns)
        self.require(_abi.KVM_CAP_HALT_POLL, "a per-VM halt-polling limit (KVM_CAP_HALT_POLL)")
        cap = _abi.kvm_enable_cap(cap=_abi.KVM_CAP_HALT_POLL)
        cap.args[0] = ns
        ioctl(self.fd, _abi.KVM_ENABLE_CAP, cap, f"KVM_ENABLE_CAP (KVM_CAP_HALT_POLL, {ns} ns)")

    # -- irqfd ---------------------------------------------------------------

    def irqfd_assign(self, eventfd: int, gsi: int, resamplefd: int | None = None) -> None:
        args = _abi.kvm_irqfd(fd=eventfd, gsi=gsi)
        if resamplefd is not None:
            args.flags = _abi.KVM_IRQFD_FLAG_RESAMPLE
            args.resamplefd = resamplefd
        try:
            ioctl(self.fd, _abi.KVM_IRQFD, args, f"KVM_IRQFD assign (eventfd {eventfd}, GSI {gsi})")
        except irqbypass.DeviceError as exc:
            if exc.errno == errno.EBUSY:
                raise irqbypass.DeviceError(
                    f"eventfd {eventfd} is already assigned as an irqfd on this VM; "
                    "deassign it first (close the consumer or the VMM's irqfd that "
                    "holds it) or use another eventfd",
                    errno=errno.EBUSY,
                ) from exc.__cause__
            raise

    def irqfd_deassign(self, eventfd: int, gsi: int) -> None:
        args = _abi.kvm_irqfd(fd=eventfd, gsi=gsi, flags=_abi.KVM_IRQFD_FLAG_DEASSIGN)
        ioctl(self.fd, _abi.KVM_IRQFD, args, f"KVM_IRQFD deassign (eventfd {eventfd}, GSI {gsi})")

    # -- routing -------------------------------------------------------------

    @staticmethod
    def default_entries() -> list[_abi.kvm_irq_routing_entry]:
        """The in-kernel irqchip's default x86 table (what KVM_CREATE_IRQCHIP sets)."""
        entries = []
        for gsi in range(_abi.IOAPIC_NUM_PINS):
            if gsi < _abi.PIC_NUM_PINS:
                chip = _abi.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else _abi.KVM_IRQCHIP_PIC_SLAVE
                entry = _abi.kvm_irq_routing_entry(gsi=gsi, type=_abi.KVM_IRQ_ROUTING_IRQCHIP)
                entry.u.irqchip.irqchip, entry.u.irqchip.pin = chip, gsi % 8
                entries.append(entry)
            entry = _abi.kvm_irq_routing_entry(gsi=gsi, type=_abi.KVM_IRQ_ROUTING_IRQCHIP)
            entry.u.irqchip.irqchip, entry.u.irqchip.pin = _abi.KVM_IRQCHIP_IOAPIC, gsi
            entries.append(entry)
        return entries

    @staticmethod
    def msi_entry(gsi: int, route: MsiRoute) -> _abi.kvm_irq_routing_entry:
        entry = _abi.kvm_irq_routing_entry(gsi=gsi, type=_abi.KVM_IRQ_ROUTING_MSI)
        entry.u.msi.address_lo = route.address & 0xFFFFFFFF
        entry.u.msi.address_hi = route.address >> 32
        entry.u.msi.data = route.data
        if route.devid is not None:
            entry.flags = _abi.KVM_MSI_VALID_DEVID
            entry.u.msi.devid = route.devid
        return entry

    @staticmethod
    def routing_buffer(entries: Iterable[_abi.kvm_irq_routing_entry]) -> bytearray:
        """``struct kvm_irq_routing`` followed by its entries, as the ioctl takes it."""
        entries = list(entries)
        header = _abi.kvm_irq_routing(nr=len(entries), flags=0)
        return bytearray(bytes(header) + b"".join(bytes(e) for e in entries))

    def set_msi_route(self, gsi: int, route: MsiRoute | None) -> None:
        """Add, change (``route``) or remove (None) one MSI route; all or nothing."""
        with self._lock:
            new = dict(self.msi_routes)
            if route is None:
                new.pop(gsi, None)
            else:
                new[gsi] = route
            entries = self.default_entries() + [
                self.msi_entry(g, r) for g, r in sorted(new.items())
            ]
            ioctl(
                self.fd,
                _abi.KVM_SET_GSI_ROUTING,
                self.routing_buffer(entries),
                f"KVM_SET_GSI_ROUTING ({len(entries)} entries, GSI {gsi})",
            )
            self.msi_routes = new

    # -- lines ---------------------------------------------------------------

    def irq_line(self, gsi: int, level: int) -> None:
        """KVM_IRQ_LINE: what a userspace relay does per interrupt."""
        ioctl(self.fd, _abi.KVM_IRQ_LINE, _abi.kvm_irq_level(irq=gsi, level=level), "KVM_IRQ_LINE")
