"""A minimal real guest: one vCPU in real mode that counts interrupts.

Two modes: the 8259 PIC (the default, below), or the local APIC in x2APIC mode
(``apic="x2apic"``: MSIs, counted per vector; see :mod:`._apic`).

The plugin creates it for ``vm = "guest"`` and tests use it to prove that an
interrupt really reached a guest. Its program (hand-assembled below, every
instruction commented) programs the 8259 PICs, unmasks one line, and then sits
in an ``sti; hlt`` loop. Each interrupt on that line increments a 32-bit
counter in guest memory, acknowledges by writing an I/O port, and sends EOI.

The acknowledgement port either exits to this process (``ack="exit"``: the vCPU
thread counts and timestamps it, and can hold the guest before its EOI) or is
bound to an ioeventfd (``ack="eventfd"``: KVM signals :attr:`Guest.ack_eventfd`
without leaving the kernel, as a virtio notification does).

The vCPU runs on a thread of its own (:mod:`._vcpu`), stopped the way QEMU
stops its vCPUs.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time
from typing import Protocol, TypeVar

import irqbypass
import irqbypass.plugin

from . import _abi, _apic
from ._apic import APIC_MODES, MSI_VECTORS
from ._asm import idle_loop, ivt_entry, le16, prologue, reentry_check
from ._kvm import DEFAULT_DEVICE, Vm, check_halt_poll_ns, ioctl, open_device, os_call
from ._vcpu import ACK_PORT, READY_PORT, VcpuThread

__all__ = ["APIC_MODES", "ELCR_LINES", "GUEST_LINES", "MSI_VECTORS", "Guest", "guest_program"]

# -- guest physical layout -------------------------------------------------------

MEM_SIZE = 0x10000  # 64 KiB at guest physical 0
COUNT_ADDR = 0x0500  # u32: interrupts the guest handled
REENTERED_ADDR = 0x0508  # u32: deliveries into a running handler (not counted)
VECTOR_COUNTS_ADDR = 0x0800  # u32[256]: per vector (x2APIC mode)
CODE_ADDR = 0x1000  # the program below
STACK_TOP = 0x7000

MASTER_BASE, SLAVE_BASE = 0x20, 0x28  # the vectors the guest gives the two PICs
TSS_ADDR = 0xFFFBD000  # what QEMU uses; Intel VMX needs one for real mode

#: PIC lines the guest can listen on (2 is the cascade to the slave PIC)
GUEST_LINES = tuple(line for line in range(16) if line != 2)
#: lines the 8259's ELCR can make level-triggered (KVM's elcr masks 0xf8 / 0xde)
ELCR_LINES = tuple(line for line in GUEST_LINES if (0xDEF8 >> line) & 1)


def vector_of(line: int) -> int:
    return (MASTER_BASE if line < 8 else SLAVE_BASE) + line % 8


def guest_program(line: int, *, level: bool = False) -> bytes:
    """The guest's real-mode code, loaded at 0000:1000, for PIC ``line``."""
    if line not in GUEST_LINES:
        raise irqbypass.InvalidEndpointError(
            f"the demo guest listens on PIC lines {GUEST_LINES[0]}-15 except 2 "
            f"(the cascade), not {line}"
        )
    if level and line not in ELCR_LINES:
        raise irqbypass.InvalidEndpointError(
            f"PIC line {line} cannot be level-triggered (the ELCR allows "
            f"{', '.join(map(str, ELCR_LINES))}); pick one of those for resample"
        )
    code = bytearray()
    handler_fixup = _pic_setup(code, line, level)
    handler = CODE_ADDR + len(code)
    _pic_handler(code, line)
    code[handler_fixup : handler_fixup + 2] = bytes(le16(handler))
    return bytes(code)


def _pic_setup(code: bytearray, line: int, level: bool) -> int:
    """Emit the set-up and the idle loop; return where the handler's offset goes."""
    emit = code.extend
    vector = vector_of(line)
    slave = line >= 8
    # everything but the line (and the cascade, if the line is on the slave)
    master_mask = 0xFF & ~(1 << (2 if slave else line))
    slave_mask = 0xFF & ~(1 << (line % 8)) if slave else 0xFF
    prologue(code)
    handler_fixup = ivt_entry(code, vector)
    emit((0xB0, 0x11))  # mov al, 0x11         ; ICW1: init, cascade mode, ICW4 follows
    emit((0xE6, 0x20))  # out 0x20, al         ; -> master command port
    emit((0xB0, MASTER_BASE))  # mov al, 0x20  ; ICW2: master vectors 0x20-0x27
    emit((0xE6, 0x21))  # out 0x21, al         ; -> master data port
    emit((0xB0, 0x04))  # mov al, 0x04         ; ICW3: a slave sits on IR2
    emit((0xE6, 0x21))  # out 0x21, al
    emit((0xB0, 0x01))  # mov al, 0x01         ; ICW4: 8086 mode, normal EOI
    emit((0xE6, 0x21))  # out 0x21, al
    emit((0xB0, 0x11))  # mov al, 0x11         ; ICW1 for the slave
    emit((0xE6, 0xA0))  # out 0xa0, al         ; -> slave command port
    emit((0xB0, SLAVE_BASE))  # mov al, 0x28   ; ICW2: slave vectors 0x28-0x2f
    emit((0xE6, 0xA1))  # out 0xa1, al         ; -> slave data port
    emit((0xB0, 0x02))  # mov al, 0x02         ; ICW3: slave cascade identity 2
    emit((0xE6, 0xA1))  # out 0xa1, al
    emit((0xB0, 0x01))  # mov al, 0x01         ; ICW4: 8086 mode
    emit((0xE6, 0xA1))  # out 0xa1, al
    emit((0xB0, master_mask))  # mov al, mask  ; OCW1: unmask our line (or the cascade)
    emit((0xE6, 0x21))  # out 0x21, al
    emit((0xB0, slave_mask))  # mov al, mask   ; OCW1: unmask our line on the slave, if there
    emit((0xE6, 0xA1))  # out 0xa1, al
    if level:
        emit((0xBA, *le16(0x4D1 if slave else 0x4D0)))  # mov dx, 0x4d0/1 ; our PIC's ELCR
        emit((0xB0, 1 << (line % 8)))  # mov al, bit ; our line: level-triggered
        emit((0xEE,))  # out dx, al
    idle_loop(code, READY_PORT)
    return handler_fixup


def _pic_handler(code: bytearray, line: int) -> None:
    """Emit the interrupt handler: count, acknowledge, EOI; a delivery into
    the handler itself is counted apart (see :attr:`Guest.reentered`)."""
    emit = code.extend
    handler = CODE_ADDR + len(code)  # the handler is the program's last part
    reentry_check(code, handler, pushed=0)
    reentry_jump = len(code) - 1
    emit((0x50,))  # push ax
    emit((0x66, 0xFF, 0x06, *le16(COUNT_ADDR)))  # inc dword [0x0500] ; count it
    emit((0xE6, ACK_PORT))  # out 0xe1, al     ; acknowledge to the host
    emit((0xB0, 0x20))  # mov al, 0x20         ; OCW2: non-specific EOI
    if line >= 8:
        emit((0xE6, 0xA0))  # out 0xa0, al     ; EOI to the slave
    emit((0xE6, 0x20))  # out 0x20, al         ; EOI to the master
    emit((0x58,))  # pop ax
    emit((0xCF,))  # iret
    code[reentry_jump] = len(code) - (reentry_jump + 1)
    emit((0x66, 0xFF, 0x06, *le16(REENTERED_ADDR)))  # reentered: inc dword [0x0508]
    emit((0xCF,))  # iret                      ; no EOI: the outer run sends it


class Guest(VcpuThread, irqbypass.plugin.Service):
    """A running one-vCPU guest that counts interrupts on one PIC ``line``, or,
    with ``apic="x2apic"``, MSIs into its local APIC on every vector 0x20-0xFE
    (:meth:`vector_count`; ``line`` and ``level`` do not apply).

    ``level`` makes the line level-triggered (for resample irqfds). ``ack`` is
    "exit" or "eventfd" (see the module docstring). ``halt_poll_ns`` caps
    KVM's halt polling for this VM (0 = a halted vCPU sleeps at once, trading
    wake-up latency for host CPU; None = the kernel's default). Create it with
    :meth:`create` (or use it as a context manager); :meth:`close` stops the
    vCPU and closes every fd and mapping.
    """

    def __init__(
        self,
        *,
        line: int = 5,
        level: bool = False,
        ack: str = "exit",
        device: str = DEFAULT_DEVICE,
        stop_signal: int | None = None,
        halt_poll_ns: int | None = None,
        apic: str | None = None,
    ) -> None:
        _check_arguments(ack, apic, level, halt_poll_ns)
        super().__init__(ack, stop_signal)
        self.apic = apic
        self.halt_poll_ns = halt_poll_ns
        self.line = line
        self.level = level
        self.device = device
        self.vector = vector_of(line) if apic is None and line in GUEST_LINES else -1
        self.program = _program(line, level, apic)  # validates line and level
        self._kvm_fd = -1
        self.vm: Vm | None = None
        self._stats_fd = -1
        self._mem: mmap.mmap | None = None
        self.ack_eventfd: irqbypass.Eventfd | None = None
        self._ioeventfd_assigned = False

    # -- life --------------------------------------------------------------

    @classmethod
    def create(cls, **kwargs: object) -> Guest:
        """Build and start a guest (see the class for the arguments)."""
        guest = cls(**kwargs)  # type: ignore[arg-type]
        guest.start()
        return guest

    def start(self, timeout: float = 10.0) -> None:
        """Create the VM and vCPU, load the program, and run it until it is
        ready to take interrupts. On failure everything opened is closed."""
        if self._thread is not None:
            return
        # a previous close() left these set: the new vCPU loop would exit at once
        # and start() would see the old ready flag
        self._stopping = False
        self._ready.clear()
        self.error = None
        try:
            self._setup()
            self._start_vcpu(f"irqbypass-kvm-vcpu-line{self.line}", timeout)
        except BaseException:
            self.close()
            raise

    @irqbypass.plugin.uninterrupted
    def _setup(self) -> None:
        """Make the VM and the vCPU: uninterrupted, so that a Ctrl-C never lands
        between an fd's making and its recording (start() undoes it all)."""
        self._kvm_fd = open_device(self.device)
        self.vm = Vm.create(self._kvm_fd, self.device)
        if self.halt_poll_ns is not None:
            self.vm.set_halt_poll_ns(self.halt_poll_ns)
        vm = self.vm.fd
        ioctl(vm, _abi.KVM_SET_TSS_ADDR, TSS_ADDR, "KVM_SET_TSS_ADDR")
        ioctl(vm, _abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
        self._mem = os_call(
            "mapping the guest's memory",
            mmap.mmap,
            -1,
            MEM_SIZE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        )
        self._mem[CODE_ADDR : CODE_ADDR + len(self.program)] = self.program
        region = _abi.kvm_userspace_memory_region(
            slot=0, guest_phys_addr=0, memory_size=MEM_SIZE, userspace_addr=_address_of(self._mem)
        )
        ioctl(vm, _abi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")
        self._vcpu_fd = ioctl(vm, _abi.KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")
        if self.apic == "x2apic":
            _apic.set_cpuid(self._vcpu_fd, guest_cpuid(self._kvm_fd))
        # now, not in vcpu_stats(): every vCPU ioctl takes the vCPU's mutex, which
        # KVM_RUN holds while the guest sleeps in hlt (reading the fd takes none)
        if self.vm.check_extension(_abi.KVM_CAP_BINARY_STATS_FD) > 0:
            self._stats_fd = ioctl(
                self._vcpu_fd, _abi.KVM_GET_STATS_FD, 0, "KVM_GET_STATS_FD (vCPU)"
            )
        run_size = ioctl(self._kvm_fd, _abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        # mmap keeps a dup of the fd: one more fd
        self._run = os_call(
            "mapping the vCPU's kvm_run", mmap.mmap, self._vcpu_fd, run_size, mmap.MAP_SHARED
        )
        sregs = _abi.kvm_sregs()
        ioctl(self._vcpu_fd, _abi.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
            seg.base, seg.selector = 0, 0
        ioctl(self._vcpu_fd, _abi.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")
        regs = _abi.kvm_regs(rip=CODE_ADDR, rsp=STACK_TOP, rflags=0x2)
        ioctl(self._vcpu_fd, _abi.KVM_SET_REGS, regs, "KVM_SET_REGS")
        if self.ack == "eventfd":
            self.ack_eventfd = os_call("making the guest's ack eventfd", irqbypass.Eventfd)
            ioeventfd = _abi.kvm_ioeventfd(
                addr=ACK_PORT,
                len=1,
                fd=self.ack_eventfd.fileno(),
                flags=_abi.KVM_IOEVENTFD_FLAG_PIO,
            )
            ioctl(vm, _abi.KVM_IOEVENTFD, ioeventfd, "KVM_IOEVENTFD (ack port)")
            self._ioeventfd_assigned = True

    @irqbypass.plugin.uninterrupted
    def close(self) -> None:
        """Stop the vCPU thread and close every fd and mapping (idempotent);
        runs to its end once begun (a Ctrl-C acts as it returns)."""
        self._stop_vcpu()
        try:
            if self._ioeventfd_assigned and self.vm is not None and self.ack_eventfd is not None:
                self._ioeventfd_assigned = False
                ioeventfd = _abi.kvm_ioeventfd(
                    addr=ACK_PORT,
                    len=1,
                    fd=self.ack_eventfd.fileno(),
                    flags=_abi.KVM_IOEVENTFD_FLAG_PIO | _abi.KVM_IOEVENTFD_FLAG_DEASSIGN,
                )
                ioctl(self.vm.fd, _abi.KVM_IOEVENTFD, ioeventfd, "KVM_IOEVENTFD deassign")
        finally:
            self._release()

    def _release(self) -> None:
        """Close every fd and mapping the guest owns (the VM goes with them), in
        this order; each is forgotten once closed, so a second close retries
        only what is left."""
        self.ack_eventfd = _closed(self.ack_eventfd)
        self._run = _closed(self._run)
        self._stats_fd = _closed_fd(self._stats_fd)
        self._vcpu_fd = _closed_fd(self._vcpu_fd)
        self.vm = _closed(self.vm)
        self._mem = _closed(self._mem)
        self._kvm_fd = _closed_fd(self._kvm_fd)

    def __del__(self) -> None:
        if getattr(self, "_kvm_fd", -1) >= 0:
            import warnings

            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()

    # -- observing ---------------------------------------------------------

    def vcpu_stats(self) -> dict[str, int]:
        """The vCPU's KVM statistics (KVM_GET_STATS_FD), by name: for instance
        ``halt_attempted_poll``, ``halt_successful_poll``, ``halt_poll_success_ns``,
        ``halt_poll_fail_ns``, ``halt_wakeup``, ``exits``. Histograms are left out.
        Proves what the halt-polling limit did, without debugfs or root."""
        if self._vcpu_fd < 0:
            raise irqbypass.InvalidEndpointError("the guest is not running; start() it first")
        if self._stats_fd < 0:
            raise irqbypass.DeviceError(
                "this kernel's KVM has no binary statistics (KVM_CAP_BINARY_STATS_FD, "
                "Linux 5.14+); read debugfs (/sys/kernel/debug/kvm) instead",
                errno=errno.ENOTSUP,
            )
        try:
            return _read_stats(self._stats_fd)
        except OSError as exc:
            raise irqbypass.DeviceError(
                f"reading the vCPU's KVM statistics failed: {exc.strerror}", errno=exc.errno
            ) from exc

    @property
    def count(self) -> int:
        """Interrupts the guest counted (read from guest memory)."""
        if self._mem is None:
            return 0
        value: int = struct.unpack_from("<I", self._mem, COUNT_ADDR)[0]
        return value

    @property
    def reentered(self) -> int:
        """Deliveries into a running handler, not counted as interrupts.

        A handler runs with interrupts off, so neither the PIC nor the local
        APIC can deliver into it; only a hypervisor injecting an event a second
        time can (an EXITINTINFO replayed after the exit that the handler's
        acknowledgement causes, or one taken before its first instruction).
        Seen only with KVM nested under QEMU's TCG (docs/testing.md); a test
        provokes one with KVM_SET_VCPU_EVENTS (tests/plugins/kvm/test_reentry.py).
        """
        if self._mem is None:
            return 0
        value: int = struct.unpack_from("<I", self._mem, REENTERED_ADDR)[0]
        return value

    def vector_count(self, vector: int) -> int:
        """MSIs the guest counted on ``vector`` (x2APIC mode; 0 in PIC mode)."""
        if self._mem is None or self.apic is None or not 0 <= vector < 256:
            return 0
        value: int = struct.unpack_from("<I", self._mem, VECTOR_COUNTS_ADDR + 4 * vector)[0]
        return value

    def vector_counts(self) -> dict[int, int]:
        """Every vector the guest counted, with its count (x2APIC mode)."""
        if self._mem is None or self.apic is None:
            return {}
        counts = struct.unpack_from("<256I", self._mem, VECTOR_COUNTS_ADDR)
        return {vector: n for vector, n in enumerate(counts) if n}

    def wait_count(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until the guest counted at least ``n`` interrupts; False on timeout."""
        deadline = time.monotonic() + timeout
        poll = self.ack == "eventfd"
        with self._cond:
            while self.count < n:
                if self.error is not None or not self.running:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.0005) if poll else left)
        return True

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        if self.apic is not None:
            return f"<Guest apic={self.apic} {state} count={self.count}>"
        return f"<Guest line={self.line} vector={self.vector:#x} {state} count={self.count}>"


def _check_arguments(ack: str, apic: str | None, level: bool, halt_poll_ns: int | None) -> None:
    if ack not in ("exit", "eventfd"):
        raise irqbypass.InvalidEndpointError(f'ack must be "exit" or "eventfd", not {ack!r}')
    if apic is not None and apic not in APIC_MODES:
        raise irqbypass.InvalidEndpointError(
            f'apic must be None (the 8259 PIC) or "x2apic" (MSIs into the local APIC), not {apic!r}'
        )
    if apic is not None and level:
        raise irqbypass.InvalidEndpointError(
            "level applies to the PIC mode's line; an x2APIC guest takes edge MSIs"
        )
    if halt_poll_ns is not None:
        check_halt_poll_ns(halt_poll_ns)


def _program(line: int, level: bool, apic: str | None) -> bytes:
    """The PIC guest's program for ``line``, or the x2APIC guest's."""
    if apic is None:
        return guest_program(line, level=level)
    return _apic.x2apic_program(
        code_addr=CODE_ADDR,
        count_addr=COUNT_ADDR,
        vector_counts_addr=VECTOR_COUNTS_ADDR,
        reentered_addr=REENTERED_ADDR,
        ready_port=READY_PORT,
        ack_port=ACK_PORT,
    )


def guest_cpuid(kvm_fd: int) -> list[_abi.kvm_cpuid_entry2]:
    """The x2APIC guest's CPUID: KVM's supported one, x2APIC on, APIC ID 0."""
    return _apic.x2apic_cpuid(_apic.supported_cpuid(kvm_fd))


def _read_stats(fd: int) -> dict[str, int]:
    """Parse a KVM binary stats fd: header, descriptors (each followed by its
    name), then the u64 data block. Only single-value stats are returned."""
    header = _abi.kvm_stats_header.from_buffer_copy(
        os.pread(fd, ctypes.sizeof(_abi.kvm_stats_header), 0)
    )
    desc_size = ctypes.sizeof(_abi.kvm_stats_desc) + header.name_size
    descs = os.pread(fd, desc_size * header.num_desc, header.desc_offset)
    entries = []
    end = 0
    for i in range(header.num_desc):
        raw = descs[i * desc_size : (i + 1) * desc_size]
        desc = _abi.kvm_stats_desc.from_buffer_copy(raw[: ctypes.sizeof(_abi.kvm_stats_desc)])
        name = raw[ctypes.sizeof(_abi.kvm_stats_desc) :].split(b"\0", 1)[0].decode()
        entries.append((name, desc.offset, desc.size))
        end = max(end, desc.offset + 8 * desc.size)
    data = os.pread(fd, end, header.data_offset)
    return {
        name: struct.unpack_from("<Q", data, offset)[0]
        for name, offset, size in entries
        if size == 1
    }


def _address_of(mem: mmap.mmap) -> int:
    """The host virtual address of an mmap (without keeping a buffer export)."""
    ref = ctypes.c_char.from_buffer(mem)
    try:
        return ctypes.addressof(ref)
    finally:
        del ref


class _Closable(Protocol):
    def close(self) -> object: ...


_C = TypeVar("_C", bound=_Closable)


def _closed(resource: _C | None) -> _C | None:
    """Close ``resource``, if any; None, what its attribute holds from then on
    (left as it was if the close raises: a second close retries it)."""
    if resource is not None:
        resource.close()
    return None


def _closed_fd(fd: int) -> int:
    """Close ``fd``, if any; -1, what its attribute holds from then on."""
    if fd >= 0:
        os.close(fd)
    return -1
