"""Every ioctl number, constant and struct layout the plugin uses equals what
gcc computes from /usr/include/linux/kvm.h."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from irqbypass_kvm import _abi

HEADER = Path("/usr/include/linux/kvm.h")

IOCTLS = [
    "KVM_GET_API_VERSION",
    "KVM_CREATE_VM",
    "KVM_CHECK_EXTENSION",
    "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_CREATE_VCPU",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_SET_TSS_ADDR",
    "KVM_CREATE_IRQCHIP",
    "KVM_IRQ_LINE",
    "KVM_SET_GSI_ROUTING",
    "KVM_IRQFD",
    "KVM_IOEVENTFD",
    "KVM_RUN",
    "KVM_GET_REGS",
    "KVM_SET_REGS",
    "KVM_GET_SREGS",
    "KVM_SET_SREGS",
    "KVM_SET_SIGNAL_MASK",
    "KVM_ENABLE_CAP",
    "KVM_SIGNAL_MSI",
    "KVM_GET_STATS_FD",
    "KVM_GET_SUPPORTED_CPUID",
    "KVM_SET_CPUID2",
]
CONSTANTS = [
    "KVM_API_VERSION",
    "KVM_CAP_IRQCHIP",
    "KVM_CAP_IRQ_ROUTING",
    "KVM_CAP_IRQFD",
    "KVM_CAP_IOEVENTFD",
    "KVM_CAP_SIGNAL_MSI",
    "KVM_CAP_IRQFD_RESAMPLE",
    "KVM_CAP_MSI_DEVID",
    "KVM_CAP_IMMEDIATE_EXIT",
    "KVM_CAP_HALT_POLL",
    "KVM_CAP_BINARY_STATS_FD",
    "KVM_CAP_X2APIC_API",
    "KVM_X2APIC_API_USE_32BIT_IDS",
    "KVM_IRQFD_FLAG_DEASSIGN",
    "KVM_IRQFD_FLAG_RESAMPLE",
    "KVM_IRQ_ROUTING_IRQCHIP",
    "KVM_IRQ_ROUTING_MSI",
    "KVM_IRQCHIP_PIC_MASTER",
    "KVM_IRQCHIP_PIC_SLAVE",
    "KVM_IRQCHIP_IOAPIC",
    "KVM_MSI_VALID_DEVID",
    "KVM_IOEVENTFD_FLAG_DATAMATCH",
    "KVM_IOEVENTFD_FLAG_PIO",
    "KVM_IOEVENTFD_FLAG_DEASSIGN",
    "KVM_EXIT_IO",
    "KVM_EXIT_HLT",
    "KVM_EXIT_MMIO",
    "KVM_EXIT_SHUTDOWN",
    "KVM_EXIT_FAIL_ENTRY",
    "KVM_EXIT_INTR",
    "KVM_EXIT_INTERNAL_ERROR",
    "KVM_EXIT_IO_IN",
    "KVM_EXIT_IO_OUT",
]
# C struct name -> (our ctypes class, [(C member path, our offset)])
STRUCTS: dict[str, tuple[type[ctypes.Structure], list[tuple[str, int]]]] = {
    "kvm_userspace_memory_region": (
        _abi.kvm_userspace_memory_region,
        [
            (f, getattr(_abi.kvm_userspace_memory_region, f).offset)
            for f in ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr")
        ],
    ),
    "kvm_irq_level": (_abi.kvm_irq_level, [("irq", 0), ("level", _abi.kvm_irq_level.level.offset)]),
    "kvm_irqfd": (
        _abi.kvm_irqfd,
        [
            (f, getattr(_abi.kvm_irqfd, f).offset)
            for f in ("fd", "gsi", "flags", "resamplefd", "pad")
        ],
    ),
    "kvm_irq_routing": (
        _abi.kvm_irq_routing,
        [
            ("nr", _abi.kvm_irq_routing.nr.offset),
            ("flags", _abi.kvm_irq_routing.flags.offset),
            ("entries", ctypes.sizeof(_abi.kvm_irq_routing)),
        ],
    ),
    "kvm_irq_routing_entry": (
        _abi.kvm_irq_routing_entry,
        [
            (f, getattr(_abi.kvm_irq_routing_entry, f).offset)
            for f in ("gsi", "type", "flags", "pad", "u")
        ]
        + [
            ("u.irqchip.irqchip", _abi.kvm_irq_routing_entry.u.offset),
            (
                "u.irqchip.pin",
                _abi.kvm_irq_routing_entry.u.offset + _abi.kvm_irq_routing_irqchip.pin.offset,
            ),
        ]
        + [
            (
                f"u.msi.{f}",
                _abi.kvm_irq_routing_entry.u.offset + getattr(_abi.kvm_irq_routing_msi, f).offset,
            )
            for f in ("address_lo", "address_hi", "data", "devid")
        ],
    ),
    "kvm_irq_routing_msi": (
        _abi.kvm_irq_routing_msi,
        [
            (f, getattr(_abi.kvm_irq_routing_msi, f).offset)
            for f in ("address_lo", "address_hi", "data", "devid")
        ],
    ),
    "kvm_msi": (
        _abi.kvm_msi,
        [
            (f, getattr(_abi.kvm_msi, f).offset)
            for f in ("address_lo", "address_hi", "data", "flags", "devid", "pad")
        ],
    ),
    "kvm_ioeventfd": (
        _abi.kvm_ioeventfd,
        [
            (f, getattr(_abi.kvm_ioeventfd, f).offset)
            for f in ("datamatch", "addr", "len", "fd", "flags", "pad")
        ],
    ),
    "kvm_enable_cap": (
        _abi.kvm_enable_cap,
        [(f, getattr(_abi.kvm_enable_cap, f).offset) for f in ("cap", "flags", "args", "pad")],
    ),
    "kvm_stats_header": (
        _abi.kvm_stats_header,
        [
            (f, getattr(_abi.kvm_stats_header, f).offset)
            for f in ("flags", "name_size", "num_desc", "id_offset", "desc_offset", "data_offset")
        ],
    ),
    "kvm_stats_desc": (
        _abi.kvm_stats_desc,
        [
            (f, getattr(_abi.kvm_stats_desc, f).offset)
            for f in ("flags", "exponent", "size", "offset", "bucket_size")
        ]
        + [("name", ctypes.sizeof(_abi.kvm_stats_desc))],
    ),
    "kvm_regs": (
        _abi.kvm_regs,
        [(f, getattr(_abi.kvm_regs, f).offset) for f in ("rax", "rsp", "rip", "rflags")],
    ),
    "kvm_segment": (
        _abi.kvm_segment,
        [
            (f, getattr(_abi.kvm_segment, f).offset)
            for f in ("base", "limit", "selector", "type", "present", "unusable")
        ],
    ),
    "kvm_sregs": (
        _abi.kvm_sregs,
        [
            (f, getattr(_abi.kvm_sregs, f).offset)
            for f in (
                "cs",
                "ds",
                "es",
                "fs",
                "gs",
                "ss",
                "tr",
                "ldt",
                "gdt",
                "idt",
                "cr0",
                "efer",
                "apic_base",
                "interrupt_bitmap",
            )
        ]
        + [
            ("cs.base", _abi.kvm_sregs.cs.offset),
            ("cs.selector", _abi.kvm_segment.selector.offset),
            ("ss.selector", _abi.kvm_sregs.ss.offset + _abi.kvm_segment.selector.offset),
        ],
    ),
    "kvm_cpuid_entry2": (
        _abi.kvm_cpuid_entry2,
        [
            (f, getattr(_abi.kvm_cpuid_entry2, f).offset)
            for f in ("function", "index", "flags", "eax", "ebx", "ecx", "edx", "padding")
        ],
    ),
    "kvm_cpuid2": (
        _abi.kvm_cpuid2,
        [
            ("nent", 0),
            ("padding", _abi.kvm_cpuid2.padding.offset),
            ("entries", ctypes.sizeof(_abi.kvm_cpuid2)),
        ],
    ),
    "kvm_signal_mask": (
        _abi.kvm_signal_mask,
        [("len", 0), ("sigset", ctypes.sizeof(_abi.kvm_signal_mask))],
    ),
    "kvm_run": (
        _abi.kvm_run_head,
        [(f, getattr(_abi.kvm_run_head, f).offset) for f in ("immediate_exit", "exit_reason", "io")]
        + [
            (f"io.{f}", _abi.KVM_RUN_IO_OFFSET + getattr(_abi.kvm_run_io, f).offset)
            for f in ("direction", "size", "port", "count", "data_offset")
        ],
    ),
}
# kvm_run is far larger than the head we read, and the flexible headers' sizes
# are the header alone in C too
NO_SIZE_CHECK = {"kvm_run"}


def _probe_source() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/kvm.h>",
        "int main(void) {",
    ]
    for name in IOCTLS + CONSTANTS:
        lines.append(f'  printf("{name} %llu\\n", (unsigned long long)({name}));')
    for struct, (_cls, members) in STRUCTS.items():
        lines.append(f'  printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
        for member, _offset in members:
            label = f"offsetof {struct}.{member}"
            lines.append(f'  printf("{label} %zu\\n", offsetof(struct {struct}, {member}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compute the kernel ABI to compare against")
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is missing: install the Linux UAPI headers (linux-libc-dev)")
    tmp = tmp_path_factory.mktemp("kvmabi")
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text(_probe_source())
    subprocess.run([gcc, "-Wall", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        key, _, value = line.rpartition(" ")
        values[key] = int(value)
    os.unlink(exe)
    return values


@pytest.mark.parametrize("name", IOCTLS + CONSTANTS)
def test_number_matches_the_header(probe: dict[str, int], name: str) -> None:
    assert getattr(_abi, name) == probe[name], (
        f"{name}: ours {getattr(_abi, name):#x}, gcc {probe[name]:#x}"
    )


@pytest.mark.parametrize("struct", sorted(STRUCTS))
def test_struct_layout_matches_the_header(probe: dict[str, int], struct: str) -> None:
    cls, members = STRUCTS[struct]
    if struct not in NO_SIZE_CHECK:
        assert ctypes.sizeof(cls) == probe[f"sizeof {struct}"]
    mismatched = {
        member: (ours, probe[f"offsetof {struct}.{member}"])
        for member, ours in members
        if ours != probe[f"offsetof {struct}.{member}"]
    }
    assert not mismatched, f"(ours, gcc) offsets differ: {mismatched}"


def test_routing_buffer_is_header_then_default_then_msi_entries() -> None:
    from irqbypass_kvm import MsiRoute, _routing
    from irqbypass_kvm._routing import DEFAULT_ENTRIES, RoutingTable

    table = RoutingTable()
    table._put(40, MsiRoute(0x1_FEE0_1000, 0x4041, devid=0x0800))
    buf = table.buffer()
    assert DEFAULT_ENTRIES == 40 and len(buf) == 8 + 48 * 41
    assert _routing._MSI_ENTRY.size == ctypes.sizeof(_abi.kvm_irq_routing_entry)
    assert bytes(buf[:8]) == (41).to_bytes(4, "little") + bytes(4)
    # the first default entry: GSI 0 -> PIC master pin 0; then GSI 0 -> IOAPIC pin 0
    words = [int.from_bytes(buf[8 + 4 * i : 12 + 4 * i], "little") for i in range(6)]
    assert words == [0, 1, 0, 0, 0, 0]
    msi = buf[8 + 48 * 40 :]
    # gsi, type=MSI, flags=VALID_DEVID, pad, address_lo, address_hi, data, devid
    words = [int.from_bytes(msi[4 * i : 4 + 4 * i], "little") for i in range(8)]
    assert words == [40, 2, 1, 0, 0xFEE01000, 0x1, 0x4041, 0x0800]
    assert bytes(msi[32:]) == bytes(16)


def test_removing_a_route_moves_the_last_entry_into_its_slot() -> None:
    from irqbypass_kvm import MsiRoute
    from irqbypass_kvm._routing import RoutingTable

    table = RoutingTable()
    for gsi in (30, 31, 32):
        table._put(gsi, MsiRoute(0xFEE00000, gsi))
    table._drop(30)
    buf = table.buffer()
    gsis = [int.from_bytes(buf[8 + 48 * i : 12 + 48 * i], "little") for i in range(40, 42)]
    assert gsis == [32, 31] and table._slot == {32: 40, 31: 41}


def test_the_packed_irqfd_is_the_struct() -> None:
    from irqbypass_kvm import _kvm

    packed = _kvm._IRQFD.pack(7, 40, _abi.KVM_IRQFD_FLAG_RESAMPLE, 9)
    assert packed == bytes(_abi.kvm_irqfd(fd=7, gsi=40, flags=2, resamplefd=9))
