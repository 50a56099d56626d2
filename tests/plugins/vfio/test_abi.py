"""Every ioctl number, flag, index and struct layout the vfio plugin uses equals
what gcc computes from the system's linux/vfio.h (/usr/include) and from Debian
6.12's (the vfio test guest's kernel), which scripts/vfio-header fetches into
.cache/uapi-6.12 (make test runs it): bookworm's own header (Linux 6.1) predates
the VFIO cdev, so only 6.12's can check VFIO_DEVICE_BIND_IOMMUFD."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from irqbypass_vfio import _abi

#: include folders holding a linux/vfio.h: the system's, and Debian 6.12's, whose
#: other includes (linux/types.h, linux/ioctl.h) still come from the system
SYSTEM = Path("/usr/include")
UAPI_612 = Path(__file__).resolve().parents[3] / ".cache" / "uapi-6.12"
FETCH_612 = "scripts/vfio-header"
INCLUDES = [d for d in (SYSTEM, UAPI_612) if (d / "linux" / "vfio.h").exists()]

NUMBERS = [
    "VFIO_API_VERSION",
    "VFIO_TYPE1_IOMMU",
    "VFIO_TYPE1v2_IOMMU",
    "VFIO_NOIOMMU_IOMMU",
    "VFIO_GET_API_VERSION",
    "VFIO_CHECK_EXTENSION",
    "VFIO_SET_IOMMU",
    "VFIO_GROUP_GET_STATUS",
    "VFIO_GROUP_SET_CONTAINER",
    "VFIO_GROUP_GET_DEVICE_FD",
    "VFIO_DEVICE_GET_INFO",
    "VFIO_DEVICE_GET_IRQ_INFO",
    "VFIO_DEVICE_SET_IRQS",
    "VFIO_GROUP_FLAGS_VIABLE",
    "VFIO_GROUP_FLAGS_CONTAINER_SET",
    "VFIO_DEVICE_FLAGS_RESET",
    "VFIO_DEVICE_FLAGS_PCI",
    "VFIO_IRQ_INFO_EVENTFD",
    "VFIO_IRQ_INFO_MASKABLE",
    "VFIO_IRQ_INFO_AUTOMASKED",
    "VFIO_IRQ_INFO_NORESIZE",
    "VFIO_IRQ_SET_DATA_NONE",
    "VFIO_IRQ_SET_DATA_BOOL",
    "VFIO_IRQ_SET_DATA_EVENTFD",
    "VFIO_IRQ_SET_ACTION_MASK",
    "VFIO_IRQ_SET_ACTION_UNMASK",
    "VFIO_IRQ_SET_ACTION_TRIGGER",
    "VFIO_PCI_INTX_IRQ_INDEX",
    "VFIO_PCI_MSI_IRQ_INDEX",
    "VFIO_PCI_MSIX_IRQ_INDEX",
    "VFIO_PCI_ERR_IRQ_INDEX",
    "VFIO_PCI_REQ_IRQ_INDEX",
    "VFIO_PCI_NUM_IRQS",
]
#: Linux 6.6+; older UAPI headers lack it, so the probe reports it only #ifdef.
OPTIONAL_NUMBERS = ["VFIO_DEVICE_BIND_IOMMUFD"]


def _members(cls: type[ctypes.Structure]) -> list[tuple[str, int]]:
    return [(name, getattr(cls, name).offset) for name, *_ in cls._fields_]


STRUCTS: dict[str, tuple[type[ctypes.Structure], list[tuple[str, int]]]] = {
    "vfio_group_status": (_abi.vfio_group_status, _members(_abi.vfio_group_status)),
    "vfio_device_info": (_abi.vfio_device_info, _members(_abi.vfio_device_info)),
    "vfio_irq_info": (_abi.vfio_irq_info, _members(_abi.vfio_irq_info)),
    "vfio_irq_set": (
        _abi.vfio_irq_set,
        [*_members(_abi.vfio_irq_set), ("data", ctypes.sizeof(_abi.vfio_irq_set))],
    ),
}
OPTIONAL_STRUCTS = {
    "vfio_device_bind_iommufd": (
        _abi.vfio_device_bind_iommufd,
        _members(_abi.vfio_device_bind_iommufd),
    ),
}


def _probe_source() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/vfio.h>",
        "int main(void) {",
    ]

    def numbers(names: list[str]) -> None:
        for name in names:
            lines.append(f'  printf("{name} %llu\\n", (unsigned long long)({name}));')

    def structs(table: dict[str, tuple[type[ctypes.Structure], list[tuple[str, int]]]]) -> None:
        for struct, (_cls, members) in table.items():
            lines.append(f'  printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
            for member, _offset in members:
                lines.append(
                    f'  printf("offsetof {struct}.{member} %zu\\n", '
                    f"offsetof(struct {struct}, {member}));"
                )

    numbers(NUMBERS)
    structs(STRUCTS)
    lines.append("#ifdef VFIO_DEVICE_BIND_IOMMUFD")
    numbers(OPTIONAL_NUMBERS)
    structs(OPTIONAL_STRUCTS)
    lines.append("#endif")
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _probe(include: Path, tmp: Path) -> dict[str, int]:
    """What gcc computes from ``include``/linux/vfio.h."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compute the VFIO ABI to compare against")
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text(_probe_source())
    subprocess.run(
        [gcc, "-Wall", f"-I{include}", "-o", str(exe), str(src)], check=True, capture_output=True
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    os.unlink(exe)
    values = {}
    for line in out.splitlines():
        key, _, value = line.rpartition(" ")
        values[key] = int(value)
    return values


Probe = tuple[Path, dict[str, int]]


@pytest.fixture(
    scope="module", params=INCLUDES, ids=lambda d: "system" if d == SYSTEM else "linux-6.12"
)
def probe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Probe:
    """An include folder and what gcc computes from its linux/vfio.h."""
    include: Path = request.param
    return include, _probe(include, tmp_path_factory.mktemp("vfioabi"))


@pytest.fixture(scope="module")
def newest_probe(tmp_path_factory: pytest.TempPathFactory) -> Probe:
    """The newest header's: Debian 6.12's where scripts/vfio-header fetched it."""
    if not INCLUDES:
        pytest.skip(
            f"no linux/vfio.h in {SYSTEM} or {UAPI_612}: install linux-libc-dev, or run {FETCH_612}"
        )
    return INCLUDES[-1], _probe(INCLUDES[-1], tmp_path_factory.mktemp("vfioabi"))


@pytest.mark.parametrize("name", NUMBERS)
def test_number_matches_the_header(probe: Probe, name: str) -> None:
    _include, values = probe
    assert getattr(_abi, name) == values[name], (
        f"{name}: ours {getattr(_abi, name):#x}, gcc {values[name]:#x}"
    )


def _check_struct(
    values: dict[str, int],
    struct: str,
    cls: type[ctypes.Structure],
    members: list[tuple[str, int]],
    *,
    exact: bool,
) -> None:
    """The members we use sit where ours do, and an ``exact`` header (the
    system's, the one ours follow) has our size. A newer one may append members,
    as the kernel reads a VFIO struct only up to the argsz we give (Debian 6.12's
    vfio_device_info ends in a pad, newer vfio_device_bind_iommufd in
    token_uuid_ptr)."""
    if exact:
        assert ctypes.sizeof(cls) == values[f"sizeof {struct}"]
    else:
        assert ctypes.sizeof(cls) <= values[f"sizeof {struct}"]
    mismatched = {
        member: (ours, values[f"offsetof {struct}.{member}"])
        for member, ours in members
        if ours != values[f"offsetof {struct}.{member}"]
    }
    assert not mismatched, f"(ours, gcc) offsets differ: {mismatched}"


@pytest.mark.parametrize("struct", sorted(STRUCTS))
def test_struct_layout_matches_the_header(probe: Probe, struct: str) -> None:
    include, values = probe
    _check_struct(values, struct, *STRUCTS[struct], exact=include == SYSTEM)


def test_bind_iommufd_matches_the_header(newest_probe: Probe) -> None:
    include, values = newest_probe
    if "VFIO_DEVICE_BIND_IOMMUFD" not in values:
        pytest.skip(
            f"{include / 'linux' / 'vfio.h'} predates the VFIO cdev (Linux 6.6) and has no "
            f"VFIO_DEVICE_BIND_IOMMUFD; {FETCH_612} fetches Debian 6.12's "
            "(ours: _IO(';', 118), 16-byte struct)"
        )
    assert values["VFIO_DEVICE_BIND_IOMMUFD"] == _abi.VFIO_DEVICE_BIND_IOMMUFD
    cls, members = OPTIONAL_STRUCTS["vfio_device_bind_iommufd"]
    _check_struct(values, "vfio_device_bind_iommufd", cls, members, exact=False)


def test_bind_iommufd_number_is_the_documented_encoding() -> None:
    """Without the header: _IO(';', VFIO_BASE + 18) is 0x3b76 (dir 0, size 0)."""
    assert _abi.VFIO_DEVICE_BIND_IOMMUFD == 0x3B76
    assert ctypes.sizeof(_abi.vfio_device_bind_iommufd) == 16


def test_irq_set_buffer_is_header_then_data() -> None:
    buf = _abi.irq_set(
        _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER,
        2,
        5,
        2,
        _abi.eventfd_data(9, -1),
    )
    assert bytes(buf) == (
        (28).to_bytes(4, "little")
        + (0x24).to_bytes(4, "little")
        + (2).to_bytes(4, "little")
        + (5).to_bytes(4, "little")
        + (2).to_bytes(4, "little")
        + (9).to_bytes(4, "little")
        + b"\xff\xff\xff\xff"
    )
