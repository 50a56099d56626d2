"""Every ioctl number, constant and struct layout the vdpa plugin uses equals
what gcc computes from /usr/include/linux/vhost.h and linux/virtio_config.h."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from irqbypass_vdpa import _abi

HEADERS = [Path("/usr/include/linux/vhost.h"), Path("/usr/include/linux/virtio_config.h")]

NUMBERS = [
    "VHOST_VIRTIO",
    "VHOST_SET_OWNER",
    "VHOST_SET_VRING_CALL",
    "VHOST_VDPA_GET_DEVICE_ID",
    "VHOST_VDPA_GET_STATUS",
    "VHOST_VDPA_GET_VQS_COUNT",
    "VHOST_VDPA_GET_VRING_GROUP",
    "VIRTIO_CONFIG_S_ACKNOWLEDGE",
    "VIRTIO_CONFIG_S_DRIVER",
    "VIRTIO_CONFIG_S_DRIVER_OK",
    "VIRTIO_CONFIG_S_FEATURES_OK",
    "VIRTIO_CONFIG_S_NEEDS_RESET",
    "VIRTIO_CONFIG_S_FAILED",
]
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "vhost_vring_file": _abi.vhost_vring_file,
    "vhost_vring_state": _abi.vhost_vring_state,
}


def _probe_source() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/vhost.h>",
        "#include <linux/virtio_config.h>",
        "int main(void) {",
    ]
    for name in NUMBERS:
        lines.append(f'  printf("{name} %llu\\n", (unsigned long long)({name}));')
    for struct, cls in STRUCTS.items():
        lines.append(f'  printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
        for member, *_ in cls._fields_:
            lines.append(
                f'  printf("offsetof {struct}.{member} %zu\\n", '
                f"offsetof(struct {struct}, {member}));"
            )
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compute the vhost ABI to compare against")
    for header in HEADERS:
        if not header.exists():
            pytest.skip(f"{header} is missing: install the Linux UAPI headers (linux-libc-dev)")
    tmp = tmp_path_factory.mktemp("vdpaabi")
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text(_probe_source())
    subprocess.run([gcc, "-Wall", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    os.unlink(exe)
    values = {}
    for line in out.splitlines():
        key, _, value = line.rpartition(" ")
        values[key] = int(value)
    return values


@pytest.mark.parametrize("name", NUMBERS)
def test_number_matches_the_header(probe: dict[str, int], name: str) -> None:
    assert getattr(_abi, name) == probe[name], (
        f"{name}: ours {getattr(_abi, name):#x}, gcc {probe[name]:#x}"
    )


@pytest.mark.parametrize("struct", sorted(STRUCTS))
def test_struct_layout_matches_the_header(probe: dict[str, int], struct: str) -> None:
    cls = STRUCTS[struct]
    assert ctypes.sizeof(cls) == probe[f"sizeof {struct}"]
    for member, *_ in cls._fields_:
        assert getattr(cls, member).offset == probe[f"offsetof {struct}.{member}"], member


def test_vring_file_payload_bytes() -> None:
    assert bytes(_abi.vhost_vring_file(index=2, fd=-1)) == b"\x02\0\0\0\xff\xff\xff\xff"
