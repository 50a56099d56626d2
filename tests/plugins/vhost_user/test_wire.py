"""The wire format against QEMU's docs/interop/vhost-user.rst.

The tables below are transcribed from the spec's text (sections "Header",
"Payload", "Protocol features", "Front-end message types" and
"Communication"), independently of ``_wire``: a number changed in either place
fails here.
"""

from __future__ import annotations

import struct

import pytest
from irqbypass_vhost_user import _wire as wire

#: ":id:" of every front-end message type in the spec
SPEC_IDS = {
    "GET_FEATURES": 1, "SET_FEATURES": 2, "SET_OWNER": 3, "RESET_OWNER": 4,
    "SET_MEM_TABLE": 5, "SET_LOG_BASE": 6, "SET_LOG_FD": 7, "SET_VRING_NUM": 8,
    "SET_VRING_ADDR": 9, "SET_VRING_BASE": 10, "GET_VRING_BASE": 11, "SET_VRING_KICK": 12,
    "SET_VRING_CALL": 13, "SET_VRING_ERR": 14, "GET_PROTOCOL_FEATURES": 15,
    "SET_PROTOCOL_FEATURES": 16, "GET_QUEUE_NUM": 17, "SET_VRING_ENABLE": 18,
    "SEND_RARP": 19, "NET_SET_MTU": 20, "SET_SLAVE_REQ_FD": 21, "IOTLB_MSG": 22,
    "SET_VRING_ENDIAN": 23, "GET_CONFIG": 24, "SET_CONFIG": 25,
    "CREATE_CRYPTO_SESSION": 26, "CLOSE_CRYPTO_SESSION": 27, "POSTCOPY_ADVISE": 28,
    "POSTCOPY_LISTEN": 29, "POSTCOPY_END": 30, "GET_INFLIGHT_FD": 31,
    "SET_INFLIGHT_FD": 32, "GPU_SET_SOCKET": 33, "RESET_DEVICE": 34, "VRING_KICK": 35,
    "GET_MAX_MEM_SLOTS": 36, "ADD_MEM_REG": 37, "REM_MEM_REG": 38, "SET_STATUS": 39,
    "GET_STATUS": 40,
}  # fmt: skip

#: "#define VHOST_USER_PROTOCOL_F_*" in the spec
SPEC_PROTOCOL = {
    "MQ": 0, "LOG_SHMFD": 1, "RARP": 2, "REPLY_ACK": 3, "MTU": 4, "SLAVE_REQ": 5,
    "CROSS_ENDIAN": 6, "CRYPTO_SESSION": 7, "PAGEFAULT": 8, "CONFIG": 9,
    "SLAVE_SEND_FD": 10, "HOST_NOTIFIER": 11, "INFLIGHT_SHMFD": 12, "RESET_DEVICE": 13,
    "INBAND_NOTIFICATIONS": 14, "CONFIGURE_MEM_SLOTS": 15, "STATUS": 16,
}  # fmt: skip


def test_message_ids_are_the_specs() -> None:
    assert {r.name: r.value for r in wire.Request} == SPEC_IDS


def test_protocol_feature_bits_are_the_specs() -> None:
    assert {f.name: f.value for f in wire.ProtocolFeature} == SPEC_PROTOCOL
    assert wire.VHOST_USER_F_PROTOCOL_FEATURES == 30  # "#define VHOST_USER_F_PROTOCOL_FEATURES 30"
    assert wire.VIRTIO_F_VERSION_1 == 32  # virtio 1.x, 6 Reserved Feature Bits


def test_header_is_three_native_u32() -> None:
    # "request: 32-bit type", "flags: 32-bit bit field", "size: 32-bit size of the payload"
    assert wire.HEADER.size == 12
    data = wire.message(wire.Request.SET_VRING_NUM, wire.pack_vring_state(1, 256))
    assert struct.unpack("=III", data[:12]) == (8, 0x1, 8)
    assert data[12:] == struct.pack("=II", 1, 256)


def test_flags_version_reply_and_need_reply() -> None:
    # "Lower 2 bits are the version (currently 0x01)", "Bit 2 is the reply flag",
    # "Bit 3 is the need_reply flag"
    assert (wire.Flag.VERSION, wire.VERSION_MASK, wire.Flag.REPLY, wire.Flag.NEED_REPLY) == (
        1, 0b11, 1 << 2, 1 << 3,
    )  # fmt: skip
    data = wire.message(wire.Request.SET_OWNER, need_reply=True)
    assert struct.unpack("=III", data) == (3, 0x1 | 1 << 3, 0)
    reply = wire.Header.unpack(struct.pack("=III", 1, 0x5, 8))
    assert reply.is_reply and reply.version == 1 and reply.size == 8


def test_vring_state_and_address_layouts() -> None:
    # vring state: index (32-bit), num (32-bit)
    assert wire.pack_vring_state(2, 7) == struct.pack("=II", 2, 7)
    assert wire.unpack_vring_state(struct.pack("=II", 3, 9)) == (3, 9)
    # vring address: index, flags (32-bit), descriptor, used, available, log (64-bit):
    # 40 bytes, as struct vhost_vring_addr (the spec's table has a stray "size" column)
    addr = wire.pack_vring_addr(1, desc=0x1000, used=0x3000, avail=0x2000, log=0x9000, flags=1)
    assert addr == struct.pack("=IIQQQQ", 1, 1, 0x1000, 0x3000, 0x2000, 0x9000)
    assert len(addr) == 40


def test_vring_file_index_and_no_fd_flag() -> None:
    # "Bits (0-7) of the payload contain the vring index. Bit 8 is the invalid FD flag."
    assert wire.pack_vring_file(5, has_fd=True) == struct.pack("=Q", 5)
    assert wire.pack_vring_file(5, has_fd=False) == struct.pack("=Q", 5 | 1 << 8)
    assert (wire.VRING_INDEX_MASK, wire.VRING_NOFD_FLAG) == (0xFF, 0x100)
    with pytest.raises(ValueError, match="8 bits"):
        wire.pack_vring_file(256, has_fd=True)


def test_memory_table_layout() -> None:
    # "num regions (32-bit), padding (32-bit), region0 ... region7"; a region is guest
    # address, size, user address, mmap offset (64-bit each)
    regions = [
        wire.MemoryRegion(0, 1 << 20, 0x7F0000000000, 0),
        wire.MemoryRegion(1 << 20, 4096, 5, 8),
    ]
    data = wire.pack_memory_table(regions)
    assert data == struct.pack("=II", 2, 0) + struct.pack(
        "=QQQQQQQQ", 0, 1 << 20, 0x7F0000000000, 0, 1 << 20, 4096, 5, 8
    )
    assert wire.MEMORY_MAX_REGIONS == 8
    with pytest.raises(ValueError, match=r"1\.\.8 regions"):
        wire.pack_memory_table([])
    with pytest.raises(ValueError, match=r"1\.\.8 regions"):
        wire.pack_memory_table(regions * 5)


def test_the_requests_that_always_get_a_reply() -> None:
    # "Communication": GET_FEATURES, GET_PROTOCOL_FEATURES, GET_VRING_BASE (u64 or vring
    # state, 8 bytes either way) and GET_QUEUE_NUM (reply payload u64)
    assert wire.REPLY_SIZE == {
        wire.Request.GET_FEATURES: 8,
        wire.Request.GET_PROTOCOL_FEATURES: 8,
        wire.Request.GET_VRING_BASE: 8,
        wire.Request.GET_QUEUE_NUM: 8,
    }


def test_request_names() -> None:
    assert wire.request_name(13) == "VHOST_USER_SET_VRING_CALL"
    assert wire.request_name(99) == "request 99"
