"""Thin, checked wrappers over /dev/kvm and a VM fd.

Every failing ioctl becomes an :class:`irqbypass.DeviceError` carrying the
kernel's errno, raised from the ``OSError``, with a message saying what to do.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import heapq
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar, TypeVar

import irqbypass

from . import _abi
from ._routing import (
    DEFAULT_ENTRIES,
    FIRST_MSI_GSI,
    MAX_GSI_ROUTES,
    MAX_MSI_ROUTES,
    MsiRoute,
    RoutingTable,
)

_T = TypeVar("_T")

#: where the KVM device lives; every entry point takes a ``device`` path seam
DEFAULT_DEVICE = "/dev/kvm"


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
        raise _failed(what, exc) from exc


#: the errnos of a process (or a system) out of file descriptors
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


def _failed(what: str, exc: OSError) -> irqbypass.DeviceError:
    advice = (
        "; the process is out of file descriptors: raise its limit (ulimit -n) or close others"
        if exc.errno in _OUT_OF_FDS
        else ""
    )
    return irqbypass.DeviceError(
        f"{what} failed: {exc.strerror} (errno {exc.errno}){advice}", errno=exc.errno
    )


def os_call(what: str, call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)``, an OSError from it raised as a DeviceError naming
    ``what`` (a new fd, a mapping: what an fd limit or low memory refuses)."""
    try:
        return call(*args)
    except OSError as exc:
        raise _failed(what, exc) from exc


#: ``struct kvm_irqfd`` (fd, gsi, flags, resamplefd, 16 bytes of padding), packed
#: straight into the bytes the ioctl copies: the cheapest way Python can build it
_IRQFD = struct.Struct("<IIII16x")


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
        if device != DEFAULT_DEVICE:  # a wrong path, not a host without KVM
            raise irqbypass.DeviceError(
                f"{device} does not exist; check the consumer's device option "
                f"(the KVM device is {DEFAULT_DEVICE})",
                errno=exc.errno,
            ) from exc
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
        if exc.errno in _OUT_OF_FDS:
            raise _failed(f"opening {device}", exc) from exc
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


#: kcmp(2) (x86-64's syscall number) with KCMP_FILE: are two fds one open file?
_SYS_KCMP, _KCMP_FILE = 312, 0


def same_open_file(fd: int, other: int) -> bool | None:
    """Whether ``fd`` and ``other`` are one open file (a dup, a copy received
    with SCM_RIGHTS), by kcmp(2); None where kcmp is refused (a kernel without
    CONFIG_KCMP, a container's seccomp filter). A KVM VM has exactly one open
    file, so for VM fds this says whether they are one VM."""
    pid = ctypes.c_long(os.getpid())
    args = (ctypes.c_long(_SYS_KCMP), pid, pid, ctypes.c_long(_KCMP_FILE))
    ret: int = _libc.syscall(*args, ctypes.c_long(fd), ctypes.c_long(other))
    return None if ret < 0 else ret == 0


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


class Vm:
    """A KVM VM fd: owned (created here) or borrowed (the embedding VMM's).

    It also keeps the GSI routing table that this plugin writes with
    KVM_SET_GSI_ROUTING (:class:`RoutingTable`). That ioctl replaces the VM's
    whole table, so every writer must go through one table: the x86 default
    (GSI n -> IOAPIC pin n, and PIC pin n for n < 16) plus the MSI routes
    consumers add. ``Vm.borrow(fd)`` returns the one shared instance for a
    VMM's VM, whichever of its fds reaches it. It hands out MSI GSIs
    (:meth:`claim_gsi`), lowest free first.
    """

    #: the borrowed instances, by their own fd, with their references
    _borrowed: ClassVar[dict[int, tuple[Vm, int]]] = {}
    _borrowed_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, fd: int, *, owned: bool) -> None:
        self.fd = fd
        self.owned = owned
        #: the fd numbers a VMM handed over for this VM (borrowed): what tells
        #: it apart where kcmp(2) is refused
        self.handed: set[int] = set()
        self.routing = RoutingTable()
        self._caps: dict[int, int] = {}
        self._gsi_owners: dict[int, tuple[object, str]] = {}
        self._free_gsis: list[int] = []  # a heap of released GSIs below _next_gsi
        #: what the heap holds: each GSI once (one given back again and again,
        #: claimed by number in between, would else be pushed once per release)
        self._listed_free: set[int] = set()
        self._next_gsi = FIRST_MSI_GSI
        self._lock = threading.Lock()

    # -- life --------------------------------------------------------------

    @classmethod
    def create(cls, kvm_fd: int, device: str = DEFAULT_DEVICE) -> Vm:
        fd = ioctl(kvm_fd, _abi.KVM_CREATE_VM, 0, f"KVM_CREATE_VM on {device}")
        return cls(fd, owned=True)

    @classmethod
    def borrow(cls, fd: int, refs: int = 1) -> Vm:
        """The shared wrapper of a VMM-owned VM, taking ``refs`` references
        (one per consumer); release each with :meth:`close`. Every fd of one VM
        (a dup, a copy received over a socket) gets the same wrapper, which
        works on a copy of the fd of its own: the VMM may close any of its fds
        whose consumers are closed."""
        check_vm_fd(fd)
        with cls._borrowed_lock:
            vm = cls._wrapper_of(fd)
            if vm is None:
                vm = cls(os_call(f"dup of VM fd {fd}", os.dup, fd), owned=False)
            vm.handed.add(fd)
            held = cls._borrowed.get(vm.fd, (vm, 0))[1]
            cls._borrowed[vm.fd] = (vm, held + refs)
            return vm

    @classmethod
    def _wrapper_of(cls, fd: int) -> Vm | None:
        """Under the lock: the borrowed wrapper of the VM ``fd`` is one of, if
        any. One VM has one wrapper: KVM_SET_GSI_ROUTING replaces the VM's whole
        table, so two tables of one VM would take each other's routes away."""
        for vm, _ in cls._borrowed.values():
            same = same_open_file(fd, vm.fd)
            if same or (same is None and fd in vm.handed):
                return vm
        return None

    def hold(self, refs: int = 1) -> Vm:
        """Take ``refs`` more references to a borrowed Vm (a consumer handed the
        Vm itself holds it while open, as one handed the fd does; give each back
        with :meth:`release`). An owned Vm needs none."""
        if self.owned:
            return self
        with Vm._borrowed_lock:
            vm, held = Vm._borrowed.get(self.fd, (None, 0))
            if vm is not self:
                raise irqbypass.InvalidEndpointError(
                    "this Vm was given back (its last reference closed, and its copy of "
                    "the VM fd with it); borrow it again with Vm.borrow(fd)",
                    errno=errno.EBADF,
                )
            Vm._borrowed[self.fd] = (self, held + refs)
        return self

    def release(self, refs: int = 1) -> None:
        """Give back ``refs`` references :meth:`hold` took (an owned Vm: nothing)."""
        if not self.owned:
            self.close(refs)

    def close(self, refs: int = 1) -> None:
        """Close an owned fd; drop ``refs`` references to a borrowed VM (the
        last closes the wrapper's own copy of its fd; the VMM's stay open)."""
        if not self.owned:
            with Vm._borrowed_lock:
                vm, held = Vm._borrowed.get(self.fd, (None, 0))
                if vm is not self:
                    return
                if held > refs:
                    Vm._borrowed[self.fd] = (vm, held - refs)
                    return
                del Vm._borrowed[self.fd]
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    # -- capabilities --------------------------------------------------------

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (asked once per capability: it does not change)."""
        value = self._caps.get(cap)
        if value is None:
            value = self._caps[cap] = ioctl(
                self.fd, _abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION"
            )
        return value

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

    @property
    def closed(self) -> bool:
        """Its fd is closed (an owned VM its owner closed: KVM dropped its
        irqfds and routes with it)."""
        return self.fd < 0

    def _open_fd(self, what: str) -> int:
        """The VM's fd, or a DeviceError (EBADF) once it is closed."""
        if self.fd < 0:
            raise self._closed_error(what)
        return self.fd

    @staticmethod
    def _closed_error(what: str) -> irqbypass.DeviceError:
        return irqbypass.DeviceError(
            f"{what} failed: the VM is closed (its owner closed it, and KVM dropped "
            "its irqfds and routes with it); use a running VM",
            errno=errno.EBADF,
        )

    def irqfd_assign(self, eventfd: int, gsi: int, resamplefd: int | None = None) -> None:
        flags = 0 if resamplefd is None else _abi.KVM_IRQFD_FLAG_RESAMPLE
        fd = self.fd
        if fd < 0:  # (the message is made only then: this is the batch's per-vector path)
            raise self._closed_error(f"KVM_IRQFD assign (eventfd {eventfd}, GSI {gsi})")
        try:
            fcntl.ioctl(fd, _abi.KVM_IRQFD, _IRQFD.pack(eventfd, gsi, flags, resamplefd or 0))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                # KVM refuses an eventfd one of this VM's irqfds has, and since
                # Linux 6.17 one that any VM's irqfd has (one irqfd per eventfd)
                raise irqbypass.DeviceError(
                    f"eventfd {eventfd} is already assigned as an irqfd on this VM "
                    "or, since Linux 6.17, on another VM (an eventfd feeds one irqfd "
                    "on the whole host); deassign it first (close the consumer or the "
                    "VMM's irqfd that holds it) or use another eventfd",
                    errno=errno.EBUSY,
                ) from exc
            raise _failed(f"KVM_IRQFD assign (eventfd {eventfd}, GSI {gsi})", exc) from exc

    def irqfd_deassign(self, eventfd: int, gsi: int) -> None:
        deassign = _abi.KVM_IRQFD_FLAG_DEASSIGN
        fd = self.fd
        if fd < 0:
            raise self._closed_error(f"KVM_IRQFD deassign (eventfd {eventfd}, GSI {gsi})")
        try:
            fcntl.ioctl(fd, _abi.KVM_IRQFD, _IRQFD.pack(eventfd, gsi, deassign, 0))
        except OSError as exc:
            raise _failed(f"KVM_IRQFD deassign (eventfd {eventfd}, GSI {gsi})", exc) from exc

    def claim_gsis(self, wanted: Iterable[tuple[int | None, object, str]]) -> list[int]:
        """:meth:`claim_gsi` for many owners under one lock (a batch's GSIs)."""
        with self._lock:
            return [self._claim(gsi, owner, name) for gsi, owner, name in wanted]

    # -- routing -------------------------------------------------------------

    @property
    def msi_routes(self) -> Mapping[int, MsiRoute]:
        """The MSI routes KVM has on this VM, by GSI (read-only)."""
        return self.routing.routes

    def set_msi_route(self, gsi: int, route: MsiRoute | None, owner: str | None = None) -> None:
        """Add, change (``route``) or remove (None) one MSI route; all or nothing."""
        self.set_msi_routes([(gsi, route)], None if owner is None else {gsi: owner})

    def set_msi_routes(
        self,
        changes: Iterable[tuple[int, MsiRoute | None]],
        owners: Mapping[int, str] | None = None,
    ) -> None:
        """Many route changes with one KVM_SET_GSI_ROUTING; all or nothing, and
        an error names the route KVM refuses (and its owner, from ``owners``)."""
        with self._lock:
            self.routing.write(self._open_fd("KVM_SET_GSI_ROUTING"), changes, owners)

    def claim_gsi(self, gsi: int | None, owner: object, name: str) -> int:
        """Reserve an MSI GSI for ``owner``: ``gsi``, or the lowest free one.

        Two owners never share a GSI (each would overwrite the other's route).
        """
        with self._lock:
            return self._claim(gsi, owner, name)

    def _claim(self, gsi: int | None, owner: object, name: str) -> int:
        """Under the lock: see :meth:`claim_gsi`."""
        if gsi is not None:
            held = self._gsi_owners.get(gsi)
            if held is not None and held[0] is not owner:
                raise irqbypass.InvalidEndpointError(
                    f"{name}: GSI {gsi} of this VM is already routed by {held[1]}; give "
                    "another gsi, or leave gsi out to get a free one",
                    errno=errno.EBUSY,
                )
            self._gsi_owners[gsi] = (owner, name)
            return gsi
        if len(self._gsi_owners) >= MAX_MSI_ROUTES:
            raise self._full(name)
        free, listed = self._free_gsis, self._listed_free
        while free and free[0] in self._gsi_owners:
            listed.discard(heapq.heappop(free))
        if free:
            gsi = heapq.heappop(free)
            listed.discard(gsi)
        else:
            while self._next_gsi in self._gsi_owners:
                self._next_gsi += 1
            if self._next_gsi >= MAX_GSI_ROUTES:
                raise self._full(name)
            gsi = self._next_gsi
            self._next_gsi += 1
        self._gsi_owners[gsi] = (owner, name)
        return gsi

    def _full(self, name: str) -> irqbypass.DeviceError:
        return irqbypass.DeviceError(
            f"{name}: no free GSI on this VM for an MSI route: {len(self._gsi_owners)} are "
            f"taken, and KVM allows {MAX_GSI_ROUTES} routing entries per VM "
            f"(KVM_MAX_IRQ_ROUTES), {DEFAULT_ENTRIES} of them the irqchip's, so at most "
            f"{MAX_MSI_ROUTES} MSI routes; close other MSI consumers of this VM first",
            errno=errno.ENOSPC,
        )

    def release_gsi(self, gsi: int, owner: object) -> None:
        """Give back a GSI that :meth:`claim_gsi` reserved for ``owner``."""
        self.release_gsis([(gsi, owner)])

    def release_gsis(self, claims: Iterable[tuple[int, object]]) -> None:
        """Give back many (GSI, owner) claims under one lock."""
        owners, free, listed = self._gsi_owners, self._free_gsis, self._listed_free
        with self._lock:
            for gsi, owner in claims:
                held = owners.get(gsi)
                if held is None or held[0] is not owner:
                    continue
                del owners[gsi]
                if gsi < self._next_gsi and gsi not in listed:
                    heapq.heappush(free, gsi)
                    listed.add(gsi)

    # -- lines ---------------------------------------------------------------

    def signal_msi(self, route: MsiRoute) -> None:
        """KVM_SIGNAL_MSI: what a userspace relay does per MSI (no route needed)."""
        msi = _abi.kvm_msi(
            address_lo=route.address & 0xFFFFFFFF, address_hi=route.address >> 32, data=route.data
        )
        if route.devid is not None:
            msi.flags, msi.devid = _abi.KVM_MSI_VALID_DEVID, route.devid
        ioctl(self.fd, _abi.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")

    def irq_line(self, gsi: int, level: int) -> None:
        """KVM_IRQ_LINE: what a userspace relay does per interrupt."""
        ioctl(self.fd, _abi.KVM_IRQ_LINE, _abi.kvm_irq_level(irq=gsi, level=level), "KVM_IRQ_LINE")
