"""Just enough of a virtio driver to make the vdpa simulators complete requests.

The vdpa tests play the guest driver a VMM would host: on a vhost-vdpa fd they
negotiate features, map memory through the device IOTLB (``VHOST_IOTLB_MSG_V2``
written to the fd: vhost-vdpa pins the pages, hence ``RLIMIT_MEMLOCK``), lay out
split virtqueues in that memory, give each a kick eventfd and set DRIVER_OK.
Then a virtio-blk GET_ID request (vdpa_sim_blk) or a broadcast frame on the
transmit queue (vdpa_sim_net loops it back to the receive queue) completes and
the device signals the virtqueue's call eventfd: what the producer binds.
The layouts are those of linux/vhost.h, linux/vhost_types.h and the virtio spec.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import resource
import struct

import irqbypass

VHOST = 0xAF
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (VHOST << 8) | nr


VHOST_GET_FEATURES = _ioc(_IOC_READ, 0x00, 8)
VHOST_SET_FEATURES = _ioc(_IOC_WRITE, 0x00, 8)
VHOST_SET_OWNER = _ioc(0, 0x01, 0)
VHOST_SET_VRING_NUM = _ioc(_IOC_WRITE, 0x10, 8)
VHOST_SET_VRING_ADDR = _ioc(_IOC_WRITE, 0x11, 40)
VHOST_SET_VRING_BASE = _ioc(_IOC_WRITE, 0x12, 8)
VHOST_SET_VRING_KICK = _ioc(_IOC_WRITE, 0x20, 8)
VHOST_SET_BACKEND_FEATURES = _ioc(_IOC_WRITE, 0x25, 8)
VHOST_VDPA_GET_STATUS = _ioc(_IOC_READ, 0x71, 1)
VHOST_VDPA_SET_STATUS = _ioc(_IOC_WRITE, 0x72, 1)
VHOST_VDPA_SET_VRING_ENABLE = _ioc(_IOC_WRITE, 0x75, 8)

VHOST_BACKEND_F_IOTLB_MSG_V2 = 1 << 0x1
VHOST_IOTLB_MSG_V2, VHOST_IOTLB_UPDATE, VHOST_ACCESS_RW = 0x2, 2, 0x3
VIRTIO_F_VERSION_1, VIRTIO_F_ACCESS_PLATFORM = 1 << 32, 1 << 33
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
VRING_DESC_F_NEXT, VRING_DESC_F_WRITE = 1, 2
VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_ID_BYTES = 8, 20
VIRTIO_NET_HDR_V1 = 12

QSIZE = 64
QUEUE_BYTES = 0x3000  # desc table, avail ring, used ring: one page each
SLOT_BYTES = 0x1000  # per request: headers and buffers
MEMORY = 8 * QUEUE_BYTES + QSIZE * SLOT_BYTES * 2


def raise_memlock() -> None:
    """vhost-vdpa pins the mapped pages against RLIMIT_MEMLOCK."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and soft < 4 * MEMORY:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def set_owner(fd: int) -> None:
    fcntl.ioctl(fd, VHOST_SET_OWNER, 0)


def status(fd: int) -> int:
    buf = bytearray(1)
    fcntl.ioctl(fd, VHOST_VDPA_GET_STATUS, buf, True)
    return buf[0]


def set_status(fd: int, value: int) -> None:
    fcntl.ioctl(fd, VHOST_VDPA_SET_STATUS, bytearray([value]), True)


class Virtqueue:
    """A split virtqueue in the driver's memory, identity-mapped (IOVA = address)."""

    def __init__(self, driver: VirtioDriver, index: int) -> None:
        self.driver = driver
        self.index = index
        self.base = index * QUEUE_BYTES
        self.desc, self.avail, self.used = self.base, self.base + 0x1000, self.base + 0x2000
        self.avail_idx = 0
        self.kick = irqbypass.Eventfd()

    def addr(self, offset: int) -> int:
        return self.driver.address + offset

    def setup(self, fd: int) -> None:
        fcntl.ioctl(fd, VHOST_SET_VRING_NUM, struct.pack("=II", self.index, QSIZE))
        addr = struct.pack(
            "=IIQQQQ",
            self.index,
            0,
            self.addr(self.desc),
            self.addr(self.used),
            self.addr(self.avail),
            0,
        )
        fcntl.ioctl(fd, VHOST_SET_VRING_ADDR, addr)
        fcntl.ioctl(fd, VHOST_SET_VRING_BASE, struct.pack("=II", self.index, 0))
        fcntl.ioctl(fd, VHOST_SET_VRING_KICK, struct.pack("=Ii", self.index, self.kick.fileno()))
        fcntl.ioctl(fd, VHOST_VDPA_SET_VRING_ENABLE, struct.pack("=II", self.index, 1))

    def _slot(self, head: int) -> int:
        """Where request ``head``'s buffers live."""
        return 8 * QUEUE_BYTES + (self.index * QSIZE + head) * SLOT_BYTES

    def post(self, buffers: list[tuple[bytes | int, bool]]) -> None:
        """Make one descriptor chain available and kick: each buffer is its
        bytes (device-readable) or a length (device-writable)."""
        mem = self.driver.mem
        head = self.avail_idx % (QSIZE // 4) * 4  # four descriptors a chain at most
        slot = self._slot(self.avail_idx % (QSIZE // 4))
        offset = slot
        for i, (data, writable) in enumerate(buffers):
            length = data if isinstance(data, int) else len(data)
            if isinstance(data, bytes):
                mem[offset : offset + length] = data
            flags = (VRING_DESC_F_WRITE if writable else 0) | (
                VRING_DESC_F_NEXT if i < len(buffers) - 1 else 0
            )
            struct.pack_into(
                "=QIHH", mem, self.desc + 16 * (head + i), self.addr(offset), length, flags,
                head + i + 1,
            )  # fmt: skip
            offset += (length + 15) & ~15
        struct.pack_into("=H", mem, self.avail + 4 + 2 * (self.avail_idx % QSIZE), head)
        self.avail_idx += 1
        struct.pack_into("=HH", mem, self.avail, 0, self.avail_idx & 0xFFFF)
        self.kick.write(1)

    def used_idx(self) -> int:
        value: int = struct.unpack_from("=H", self.driver.mem, self.used + 2)[0]
        return value


class VirtioDriver:
    """Drives a vhost-vdpa fd the caller owns (VHOST_SET_OWNER done) to DRIVER_OK
    with split virtqueues ``queues``. :meth:`close` releases the memory and
    kick eventfds (the fd stays the caller's)."""

    def __init__(self, fd: int, queues: list[int]) -> None:
        self.fd = fd
        self.mem = mmap.mmap(-1, MEMORY)
        self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self.mem)
        self.address = ctypes.addressof(self._anchor)
        self.queues = {q: Virtqueue(self, q) for q in queues}

    def start(self) -> None:
        raise_memlock()
        fd = self.fd
        fcntl.ioctl(fd, VHOST_SET_BACKEND_FEATURES, struct.pack("=Q", VHOST_BACKEND_F_IOTLB_MSG_V2))
        set_status(fd, ACKNOWLEDGE | DRIVER)
        offered = bytearray(8)
        fcntl.ioctl(fd, VHOST_GET_FEATURES, offered, True)
        features = int.from_bytes(offered, "little") & (
            VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM
        )
        fcntl.ioctl(fd, VHOST_SET_FEATURES, struct.pack("=Q", features))
        set_status(fd, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        # struct vhost_msg_v2 {u32 type; u32 asid; struct vhost_iotlb_msg {u64 iova,
        # size, uaddr; u8 perm, type;} padded to 64}
        update = struct.pack(
            "=IIQQQBB", VHOST_IOTLB_MSG_V2, 0, self.address, MEMORY, self.address,
            VHOST_ACCESS_RW, VHOST_IOTLB_UPDATE,
        )  # fmt: skip
        os.write(fd, update.ljust(8 + 64, b"\0"))
        for queue in self.queues.values():
            queue.setup(fd)
        set_status(fd, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)

    def get_id(self, queue: int = 0) -> None:
        """A virtio-blk GET_ID request (vdpa_sim_blk completes it)."""
        header = struct.pack("=IIQ", VIRTIO_BLK_T_GET_ID, 0, 0)
        self.queues[queue].post([(header, False), (VIRTIO_BLK_ID_BYTES, True), (1, True)])

    def receive_buffer(self, queue: int = 0) -> None:
        """An empty receive buffer (vdpa_sim_net's receive queue 0)."""
        self.queues[queue].post([(2048, True)])

    def send_broadcast(self, queue: int = 1) -> None:
        """A broadcast frame on transmit queue 1; vdpa_sim_net loops it back."""
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"irqbypass".ljust(46)
        self.queues[queue].post([(bytes(VIRTIO_NET_HDR_V1) + frame, False)])

    def close(self) -> None:
        for queue in self.queues.values():
            queue.kick.close()
        self._anchor = None
        self.mem.close()

    def __enter__(self) -> VirtioDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
