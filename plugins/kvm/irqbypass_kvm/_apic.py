"""The guest's local-APIC mode: MSIs delivered into an x2APIC, counted per vector.

A real-mode guest cannot reach the xAPIC's MMIO page at 0xFEE00000 (above
1 MiB), but the x2APIC is programmed through MSRs, which real mode can write.
KVM offers x2APIC only when the vCPU's CPUID says so (leaf 1 ECX bit 21), so the
vCPU gets KVM's supported CPUID with that bit set and APIC ID 0
(:func:`x2apic_cpuid`); without the bit the guest's WRMSR takes #GP, which the
program reports on :data:`FAULT_PORT` instead of running off into nowhere.

The program (:func:`x2apic_program`, every instruction commented) sets EN and
EXTD in IA32_APIC_BASE, software-enables the APIC (spurious-vector register),
clears the task priority, reports ready and sits in ``sti; hlt``. Each vector
0x20-0xFE has its own IVT entry and stub, which counts it in a per-vector u32
table; a common tail counts the total, acknowledges on the ack port and writes
EOI. An MSI with address 0xFEE00000 (APIC ID 0) and data = vector reaches it.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

import irqbypass

from . import _abi
from ._asm import idle_loop, ivt_entry, le16, le32, prologue, reentry_check
from ._kvm import raw_ioctl

__all__ = ["APIC_MODES", "MSI_VECTORS", "x2apic_cpuid", "x2apic_program"]

#: the interrupt-controller modes a Guest offers beside its 8259 PIC (None)
APIC_MODES = ("x2apic",)
#: the vectors the guest counts (0x00-0x1f are exceptions; 0xff is spurious)
MSI_VECTORS = tuple(range(0x20, 0xFF))
SPURIOUS_VECTOR = 0xFF
GP_VECTOR = 13  # #GP, as real mode delivers it: through IVT entry 13
FAULT_PORT = 0xE2  # the guest writes the faulting vector here, then halts for good

MSR_APIC_BASE = 0x1B
MSR_X2APIC_TPR = 0x808
MSR_X2APIC_EOI = 0x80B
MSR_X2APIC_SVR = 0x80F
APIC_BASE_EXTD = 1 << 10  # x2APIC mode
APIC_BASE_EN = 1 << 11  # APIC globally enabled
SVR_APIC_ENABLED = 1 << 8
CPUID_1_ECX_X2APIC = 1 << 21


def x2apic_program(
    *,
    code_addr: int,
    count_addr: int,
    vector_counts_addr: int,
    reentered_addr: int,
    ready_port: int,
    ack_port: int,
) -> bytes:
    """The guest's real-mode code, loaded at 0000:``code_addr``."""
    code = bytearray()
    fixups = _setup(code, ready_port)
    addresses = _Addresses(code_addr, count_addr, vector_counts_addr, reentered_addr)
    _handlers(code, fixups, addresses, ack_port)
    return bytes(code)


@dataclass(frozen=True)
class _Addresses:
    """Where the program sits and what it counts, in guest memory."""

    code: int
    count: int
    vector_counts: int
    reentered: int


def _setup(code: bytearray, ready_port: int) -> dict[int, int]:
    """Emit the IVT entries, the x2APIC's enabling and the idle loop; return,
    per vector, where its handler's offset goes."""
    emit = code.extend
    fixups: dict[int, int] = {}  # vector -> where its handler offset goes
    prologue(code)
    for vector in (GP_VECTOR, *MSI_VECTORS, SPURIOUS_VECTOR):
        fixups[vector] = ivt_entry(code, vector)
    emit((0x66, 0xB9, *le32(MSR_APIC_BASE)))  # mov ecx, 0x1b   ; IA32_APIC_BASE
    emit((0x0F, 0x32))  # rdmsr                ; edx:eax = the base (EN set at reset)
    emit((0x0D, *le16(APIC_BASE_EN | APIC_BASE_EXTD)))  # or ax, 0x0c00 ; EN | EXTD
    emit((0x0F, 0x30))  # wrmsr                ; x2APIC mode (#GP without the CPUID bit)
    emit((0x66, 0xB9, *le32(MSR_X2APIC_SVR)))  # mov ecx, 0x80f ; spurious-vector register
    emit((0x66, 0xB8, *le32(SVR_APIC_ENABLED | SPURIOUS_VECTOR)))  # mov eax, 0x1ff
    emit((0x66, 0x31, 0xD2))  # xor edx, edx
    emit((0x0F, 0x30))  # wrmsr                ; software-enable the APIC
    emit((0x66, 0xB9, *le32(MSR_X2APIC_TPR)))  # mov ecx, 0x808 ; task priority
    emit((0x66, 0x31, 0xC0))  # xor eax, eax
    emit((0x0F, 0x30))  # wrmsr                ; TPR = 0: every vector gets through
    idle_loop(code, ready_port)
    return fixups


def _handlers(code: bytearray, fixups: dict[int, int], at: _Addresses, ack_port: int) -> None:
    """Emit the #GP, spurious and per-vector handlers, patching their offsets."""
    emit = code.extend
    handlers = at.code + len(code)  # everything from here on is a handler
    code[fixups[GP_VECTOR] : fixups[GP_VECTOR] + 2] = bytes(le16(handlers))
    emit((0xB0, GP_VECTOR))  # gp: mov al, 13
    emit((0xE6, FAULT_PORT))  # out 0xe2, al   ; tell the host: #GP (no x2APIC?)
    stuck = len(code)
    emit((0xFA,))  # cli
    emit((0xF4,))  # hlt
    emit((0xEB, (stuck - (len(code) + 2)) & 0xFF))  # jmp back: never resume

    spurious = at.vector_counts + 4 * SPURIOUS_VECTOR
    code[fixups[SPURIOUS_VECTOR] : fixups[SPURIOUS_VECTOR] + 2] = bytes(le16(at.code + len(code)))
    emit((0x66, 0xFF, 0x06, *le16(spurious)))  # inc dword [counts+4*0xff] ; no EOI
    emit((0xCF,))  # iret

    common = len(code)  # bx = 4 * the vector (its stub pushed bx and set it)
    reentry_check(code, handlers, pushed=2)
    reentry_jump = len(code) - 1
    emit((0x66, 0xFF, 0x87, *le16(at.vector_counts)))  # inc dword [bx+counts] ; per vector
    emit((0x66, 0x50))  # push eax
    emit((0x66, 0x51))  # push ecx
    emit((0x66, 0x52))  # push edx
    emit((0x66, 0xFF, 0x06, *le16(at.count)))  # inc dword [0x0500] ; the total
    emit((0xE6, ack_port))  # out 0xe1, al     ; acknowledge to the host
    emit((0x66, 0xB9, *le32(MSR_X2APIC_EOI)))  # mov ecx, 0x80b ; EOI register
    emit((0x66, 0x31, 0xC0))  # xor eax, eax
    emit((0x66, 0x31, 0xD2))  # xor edx, edx
    emit((0x0F, 0x30))  # wrmsr                ; EOI
    emit((0x66, 0x5A))  # pop edx
    emit((0x66, 0x59))  # pop ecx
    emit((0x66, 0x58))  # pop eax
    emit((0x5B,))  # pop bx
    emit((0xCF,))  # iret
    code[reentry_jump] = len(code) - (reentry_jump + 1)
    emit((0x66, 0xFF, 0x06, *le16(at.reentered)))  # reentered: inc dword [reentered]
    emit((0x5B,))  # pop bx
    emit((0xCF,))  # iret                      ; no EOI: the outer run sends it

    for vector in MSI_VECTORS:  # one 7-byte stub per vector
        code[fixups[vector] : fixups[vector] + 2] = bytes(le16(at.code + len(code)))
        emit((0x53,))  # push bx
        emit((0xBB, *le16(4 * vector)))  # mov bx, 4*vector
        emit((0xE9, *le16(common - (len(code) + 3))))  # jmp common


def supported_cpuid(kvm_fd: int) -> list[_abi.kvm_cpuid_entry2]:
    """KVM_GET_SUPPORTED_CPUID (through ctypes: the table is larger than the
    1024 bytes ``fcntl.ioctl`` copies), growing the buffer while KVM says E2BIG."""
    nent = 64
    while True:
        entries = (_abi.kvm_cpuid_entry2 * nent)()
        buf = ctypes.create_string_buffer(ctypes.sizeof(_abi.kvm_cpuid2) + ctypes.sizeof(entries))
        _abi.kvm_cpuid2.from_buffer(buf).nent = nent
        ret = raw_ioctl(kvm_fd, _abi.KVM_GET_SUPPORTED_CPUID, ctypes.addressof(buf))
        if ret == -errno.E2BIG and nent < 1024:
            nent *= 2
            continue
        if ret < 0:
            raise irqbypass.DeviceError(
                f"KVM_GET_SUPPORTED_CPUID failed: errno {-ret}; this KVM cannot describe "
                "its vCPUs, so the guest cannot use its local APIC",
                errno=-ret,
            )
        got = _abi.kvm_cpuid2.from_buffer(buf).nent
        offset = ctypes.sizeof(_abi.kvm_cpuid2)
        return list((_abi.kvm_cpuid_entry2 * got).from_buffer_copy(buf, offset))


def x2apic_cpuid(supported: list[_abi.kvm_cpuid_entry2]) -> list[_abi.kvm_cpuid_entry2]:
    """KVM's supported CPUID with the x2APIC bit set and APIC ID 0."""
    leaf1 = [entry for entry in supported if entry.function == 1]
    if not leaf1:
        raise irqbypass.DeviceError(
            "KVM_GET_SUPPORTED_CPUID has no leaf 1; the guest cannot be told it has an "
            "x2APIC on this host",
            errno=errno.ENOTSUP,
        )
    for entry in supported:
        if entry.function == 1:
            entry.ecx |= CPUID_1_ECX_X2APIC
            entry.ebx &= 0x00FFFFFF  # initial APIC ID (bits 31:24) = 0
        elif entry.function in (0xB, 0x1F):
            entry.edx = 0  # x2APIC ID = 0
    return supported


def set_cpuid(vcpu_fd: int, entries: list[_abi.kvm_cpuid_entry2]) -> None:
    """KVM_SET_CPUID2 on the vCPU (through ctypes, for the same reason)."""
    table = (_abi.kvm_cpuid_entry2 * len(entries))(*entries)
    buf = ctypes.create_string_buffer(ctypes.sizeof(_abi.kvm_cpuid2) + ctypes.sizeof(table))
    _abi.kvm_cpuid2.from_buffer(buf).nent = len(entries)
    ctypes.memmove(ctypes.addressof(buf) + ctypes.sizeof(_abi.kvm_cpuid2), table, len(bytes(table)))
    ret = raw_ioctl(vcpu_fd, _abi.KVM_SET_CPUID2, ctypes.addressof(buf))
    if ret < 0:
        raise irqbypass.DeviceError(
            f"KVM_SET_CPUID2 failed: errno {-ret}; the vCPU refused the CPUID that gives "
            "it an x2APIC",
            errno=-ret,
        )
