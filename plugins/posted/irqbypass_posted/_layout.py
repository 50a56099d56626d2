"""The posted-interrupt descriptor's layout, its small types, and the notification write.

Bytes 0-63 of the mapping are bit-exact with ``struct pi_desc``
(arch/x86/include/asm/posted_intr.h)::

    u64 pir[4];                                   bytes  0-31  PIR, bit v = vector v
    u64 on:1, sn:1, rsvd_1:14, nv:8, rsvd_2:8, ndst:32   bytes 32-39  control
    u32 rsvd[6];                                  bytes 40-63

Behind the descriptor (from byte 64) lies a software sidecar that hardware does
not have: a magic, counters, and per-vector post counts. It lets any process that
maps the file count exactly what it drains, because a PIR bit alone cannot say how
many posts it stands for (posts of one vector before a sync coalesce into one bit).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import irqbypass
import irqbypass.plugin

__all__ = [
    "CONTROL_OFFSET",
    "DESCRIPTOR_SIZE",
    "MAGIC",
    "MAPPING_SIZE",
    "NDST_OFFSET",
    "NV_OFFSET",
    "ON_BIT",
    "PIR_BYTES",
    "PIR_OFFSET",
    "SN_BIT",
    "LockMode",
    "Port",
    "SyncResult",
    "check_vector",
]

#: The hardware descriptor: 64 bytes, 64-byte aligned.
DESCRIPTOR_SIZE = 64
#: The whole mapping: the descriptor and the software sidecar (two pages).
MAPPING_SIZE = 8192

# Byte offsets in the hardware descriptor.
PIR_OFFSET = 0
PIR_BYTES = 32
CONTROL_OFFSET = 32  # ON is bit 0 and SN bit 1 of this byte (bits 256 and 257)
NV_OFFSET = 34
NDST_OFFSET = 36
ON_BIT = 0x01
SN_BIT = 0x02

# The sidecar, in u64 slots (slot i = bytes 8i .. 8i+7), little-endian like x86.
MAGIC = int.from_bytes(b"IRQBPID1", "little")
_MAGIC = 8  # byte 64
_SIZE = 9  # byte 72: MAPPING_SIZE, so an attacher can check it
_NOTIFIED = 10  # notifications sent (ON 0 -> 1 with a notification)
_SYNCS = 11  # sync() calls
_VECTORS_DRAINED = 12  # PIR bits taken by sync()
_POSTS_DRAINED = 13  # posts taken by sync() (the sum of the counts behind those bits)
_NONCE = 14  # bytes 112-127: the file-backed descriptor's nonce, repeated in its record
_PENDING = 64  # bytes 512..2559: posts per vector since its bit was last drained
_DRAINED = 320  # bytes 2560..4607: posts drained per vector, cumulative

_ZERO_PIR = bytes(PIR_BYTES)
_ONE = (1).to_bytes(8, "little")  # what an eventfd write of 1 sends

LockMode = Literal["process", "file"]
_show = irqbypass.plugin.show_value


def _gil_holding_write() -> Callable[[int, bytes, int], int]:
    """``write(fd, data, len)`` through libc *without* releasing the GIL;
    returns -1 on failure (see :func:`_write_error`).

    ``os.write`` releases the GIL, and a vCPU thread woken by that very
    notification then takes it: poster and vCPU ping-pong the GIL on every
    notification (measured with a flat-out mock: about 6,000 notifications and
    syncs per 200,000 posts instead of about 45). An eventfd write never blocks
    (the fd is non-blocking), so holding the GIL over it is safe.

    It is the C function itself, not a Python wrapper: a signal can then land
    only after it returned, never between setting ON and notifying. Falls back
    to ``os.write`` (which raises instead of returning -1)."""
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        raw = libc.write
    except (OSError, AttributeError):
        return lambda fd, data, size: os.write(fd, data)
    raw.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    raw.restype = ctypes.c_ssize_t
    written: Callable[[int, bytes, int], int] = raw
    return written


_write = _gil_holding_write()


def _write_error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"writing the notification eventfd: {os.strerror(code)}")


@dataclass(frozen=True)
class SyncResult:
    """What one ``sync`` took: the PIR bitmap and the posts behind each bit."""

    vectors: int = 0
    posts: Mapping[int, int] = field(default_factory=dict)

    @property
    def vector_list(self) -> list[int]:
        return [v for v in range(256) if self.vectors >> v & 1]

    @property
    def total_posts(self) -> int:
        return sum(self.posts.values())


class DescriptorFields:
    """The hardware fields of a descriptor mapped at ``_b``, read as they are
    (no lock: a post or another process's sync may be changing them)."""

    _b: memoryview

    def raw(self) -> bytes:
        """The 64 descriptor bytes, exactly as mapped."""
        return bytes(self._b[:DESCRIPTOR_SIZE])

    @property
    def pir(self) -> int:
        return int.from_bytes(self._b[PIR_OFFSET:PIR_BYTES], "little")

    @property
    def on(self) -> bool:
        return bool(self._b[CONTROL_OFFSET] & ON_BIT)

    @property
    def sn(self) -> bool:
        return bool(self._b[CONTROL_OFFSET] & SN_BIT)

    @property
    def nv(self) -> int:
        return self._b[NV_OFFSET]

    @property
    def ndst(self) -> int:
        return int.from_bytes(self._b[NDST_OFFSET : NDST_OFFSET + 4], "little")


class Port:
    """One producer's way in: while ``held`` (the pair is stopped), posts are
    counted here instead of reaching the descriptor, and flushed on release.
    Guarded by the descriptor's lock."""

    __slots__ = ("held", "held_count", "urgent", "vector")

    def __init__(self, vector: int, urgent: bool = False) -> None:
        check_vector(vector)
        if not isinstance(urgent, bool):
            raise irqbypass.InvalidEndpointError(
                f"urgent must be True or False, not {_show(urgent)}"
            )
        self.vector = vector
        self.urgent = urgent
        self.held = False
        self.held_count = 0


def check_vector(vector: object) -> int:
    if not isinstance(vector, int) or isinstance(vector, bool) or not 0 <= vector <= 255:
        raise irqbypass.InvalidEndpointError(
            f"vector {_show(vector)} is outside the PIR: use an int from 0 to 255"
        )
    return vector


def _check_control(nv: int, ndst: int) -> None:
    if not isinstance(nv, int) or isinstance(nv, bool) or not 0 <= nv <= 255:
        raise irqbypass.InvalidEndpointError(
            f"notification vector nv={_show(nv)} does not fit its byte; use 0 to 255"
        )
    if not isinstance(ndst, int) or isinstance(ndst, bool) or not 0 <= ndst <= 0xFFFFFFFF:
        raise irqbypass.InvalidEndpointError(
            f"notification destination ndst={_show(ndst)} does not fit its u32; "
            "use 0 to 0xffffffff (the x2APIC ID, or the xAPIC ID shifted left by 8)"
        )
