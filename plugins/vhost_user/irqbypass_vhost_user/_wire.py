"""The vhost-user wire format: header, payloads and file descriptors.

Transcribed from QEMU's ``docs/interop/vhost-user.rst`` (the protocol as
QEMU 7.2 and libvhost-user speak it). Every message is a 12-byte header
(``request``, ``flags``, ``size``, native byte order) and ``size`` bytes of
payload; file descriptors ride along as SCM_RIGHTS ancillary data. This module
only packs and unpacks: it never touches a socket. ``tests/plugins/vhost_user``
checks every number and layout here against the spec's text.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "HEADER",
    "MAX_FDS",
    "MAX_PAYLOAD",
    "MEMORY_MAX_REGIONS",
    "REPLY_SIZE",
    "VERSION_MASK",
    "VHOST_USER_F_PROTOCOL_FEATURES",
    "VIRTIO_F_VERSION_1",
    "VRING_INDEX_MASK",
    "VRING_NOFD_FLAG",
    "Flag",
    "Header",
    "MemoryRegion",
    "ProtocolFeature",
    "Request",
    "message",
    "pack_memory_table",
    "pack_u64",
    "pack_vring_addr",
    "pack_vring_file",
    "pack_vring_state",
    "request_name",
    "unpack_u64",
    "unpack_vring_state",
]

#: the header: request, flags, size (u32 each, native byte order)
HEADER = struct.Struct("=III")

#: the largest payload this front-end accepts in a reply (QEMU's own bound is
#: the size of its payload union; 4 KiB is far above every reply we ask for)
MAX_PAYLOAD = 4096
#: file descriptors per message (VHOST_MEMORY_BASELINE_NREGIONS in QEMU)
MAX_FDS = 8
MEMORY_MAX_REGIONS = 8

#: the virtio feature bit a back-end sets when it speaks protocol features
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32

#: SET_VRING_KICK / CALL / ERR payload: bits 0-7 the index, bit 8 "no fd"
VRING_INDEX_MASK = 0xFF
VRING_NOFD_FLAG = 1 << 8


class Request(enum.IntEnum):
    """Front-end message types ("Front-end message types" in the spec)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_SLAVE_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class Flag(enum.IntFlag):
    """The header's ``flags`` ("Header" in the spec): the version in bits 0-1
    (:data:`VERSION_MASK`), "this is a reply", "reply, please"."""

    VERSION = 0x1
    REPLY = 1 << 2
    NEED_REPLY = 1 << 3


#: the version's bits of the header's flags
VERSION_MASK = 0x3


class ProtocolFeature(enum.IntEnum):
    """Bits of GET/SET_PROTOCOL_FEATURES ("Protocol features" in the spec)."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    SLAVE_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    SLAVE_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


#: the requests that always get a reply ("Communication" in the spec), and
#: the size of that reply's payload
REPLY_SIZE: dict[Request, int] = {
    Request.GET_FEATURES: 8,
    Request.GET_PROTOCOL_FEATURES: 8,
    Request.GET_VRING_BASE: 8,
    Request.GET_QUEUE_NUM: 8,
}

_U64 = struct.Struct("=Q")
#: vring state description: index, num
_VRING_STATE = struct.Struct("=II")
#: vring address description: index, flags, descriptor, used, available, log.
#: (The spec's table shows a "size" column that no field and no
#: implementation has: ``struct vhost_vring_addr`` is these six, 40 bytes.)
_VRING_ADDR = struct.Struct("=IIQQQQ")
#: memory regions description: num regions, padding, then the regions
_MEMORY = struct.Struct("=II")
#: a region: guest address, size, user address, mmap offset
_REGION = struct.Struct("=QQQQ")


@dataclass(frozen=True)
class Header:
    """A decoded message header."""

    request: int
    flags: int
    size: int

    def pack(self) -> bytes:
        return HEADER.pack(self.request, self.flags, self.size)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        request, flags, size = HEADER.unpack(data)
        return cls(request, flags, size)

    @property
    def version(self) -> int:
        return self.flags & VERSION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & Flag.REPLY)


@dataclass(frozen=True)
class MemoryRegion:
    """One region of SET_MEM_TABLE: where the front-end's memory is, as the
    guest sees it (``guest_addr``) and as this process maps it (``user_addr``),
    and where it starts in the fd sent with it (``mmap_offset``)."""

    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int = 0


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(data: bytes) -> int:
    value: int = _U64.unpack(data)[0]
    return value


def pack_vring_state(index: int, num: int) -> bytes:
    return _VRING_STATE.pack(index, num)


def unpack_vring_state(data: bytes) -> tuple[int, int]:
    index, num = _VRING_STATE.unpack(data)
    return index, num


def pack_vring_addr(
    index: int, *, desc: int, used: int, avail: int, log: int = 0, flags: int = 0
) -> bytes:
    """The ring's three parts as user addresses of the front-end (no IOMMU)."""
    return _VRING_ADDR.pack(index, flags, desc, used, avail, log)


def pack_vring_file(index: int, *, has_fd: bool) -> bytes:
    """SET_VRING_KICK/CALL/ERR: the index, and the no-fd flag when no fd is sent.

    This front-end never sends the no-fd flag for a call: libvhost-user (so
    qemu-storage-daemon) then panics on the next completion and drops the
    connection; unbinding goes to a holding eventfd instead.
    """
    if not 0 <= index <= VRING_INDEX_MASK:
        raise ValueError(f"vring index {index} does not fit the 8 bits the message has")
    return _U64.pack(index | (0 if has_fd else VRING_NOFD_FLAG))


def pack_memory_table(regions: list[MemoryRegion]) -> bytes:
    """SET_MEM_TABLE's payload: as QEMU sends it, only the regions in use
    (``size`` = 8 + 32 per region); one fd per region goes with it."""
    if not 1 <= len(regions) <= MEMORY_MAX_REGIONS:
        raise ValueError(f"a memory table has 1..{MEMORY_MAX_REGIONS} regions, not {len(regions)}")
    parts = [_MEMORY.pack(len(regions), 0)]
    parts += [_REGION.pack(r.guest_addr, r.size, r.user_addr, r.mmap_offset) for r in regions]
    return b"".join(parts)


def message(request: Request, payload: bytes = b"", *, need_reply: bool = False) -> bytes:
    """A whole front-end message: header and payload."""
    flags = Flag.VERSION | (Flag.NEED_REPLY if need_reply else 0)
    return Header(int(request), flags, len(payload)).pack() + payload


def request_name(request: int) -> str:
    try:
        return f"VHOST_USER_{Request(request).name}"
    except ValueError:
        return f"request {request}"
