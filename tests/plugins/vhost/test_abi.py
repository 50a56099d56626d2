"""Every ioctl number and struct layout the vhost plugin uses equals what gcc
computes from /usr/include/linux/vhost.h."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
from irqbypass_vhost import _abi

HEADER = Path("/usr/include/linux/vhost.h")
NUMBERS = ["VHOST_VIRTIO", "VHOST_GET_FEATURES", "VHOST_SET_OWNER", "VHOST_SET_VRING_CALL"]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compute the vhost ABI to compare against")
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is missing: install the Linux UAPI headers (linux-libc-dev)")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/vhost.h>"]
    lines.append("int main(void) {")
    lines += [f'  printf("{n} %llu\\n", (unsigned long long)({n}));' for n in NUMBERS]
    lines.append('  printf("sizeof %zu\\n", sizeof(struct vhost_vring_file));')
    lines += [
        f'  printf("{m} %zu\\n", offsetof(struct vhost_vring_file, {m}));'
        for m, *_ in _abi.vhost_vring_file._fields_
    ]
    lines += ["  return 0;", "}"]
    tmp = tmp_path_factory.mktemp("vhostabi")
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-Wall", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {
        key: int(value) for key, _, value in (line.rpartition(" ") for line in out.splitlines())
    }


@pytest.mark.parametrize("name", NUMBERS)
def test_number_matches_the_header(probe: dict[str, int], name: str) -> None:
    assert getattr(_abi, name) == probe[name], (
        f"{name}: {getattr(_abi, name):#x} != {probe[name]:#x}"
    )


def test_vring_file_layout_matches_the_header(probe: dict[str, int]) -> None:
    assert ctypes.sizeof(_abi.vhost_vring_file) == probe["sizeof"]
    for member, *_ in _abi.vhost_vring_file._fields_:
        assert getattr(_abi.vhost_vring_file, member).offset == probe[member], member
    assert bytes(_abi.vhost_vring_file(index=1, fd=-1)) == b"\x01\0\0\0\xff\xff\xff\xff"
