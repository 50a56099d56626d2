"""Just enough of a virtio-net driver and a tap to make vhost-net receive frames.

The vhost tests play what a VMM does with ``vhost=on``: on a ``/dev/vhost-net``
fd they become the owner, accept one feature (VHOST_NET_F_VIRTIO_NET_HDR:
vhost writes the 10-byte virtio-net header, the tap gives plain frames), give
the memory table (``VHOST_SET_MEM_TABLE``, guest address = this process's
address), lay out the receive ring (virtqueue 0) in that memory with a kick
eventfd, and attach a tap as the backend (``VHOST_NET_SET_BACKEND``). A frame
sent out of the tap's interface from a packet socket (nothing leaves the
guest) is what the tap's reader receives: vhost-net copies it into the next
receive buffer and signals virtqueue 0's call eventfd, which the producer binds.
The layouts are those of linux/vhost.h, linux/vhost_types.h, linux/if_tun.h.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from virtio_driver import _IOC_READ, _IOC_WRITE, QSIZE, VirtioDriver, Virtqueue, _ioc

VHOST_GET_FEATURES = _ioc(_IOC_READ, 0x00, 8)
VHOST_SET_FEATURES = _ioc(_IOC_WRITE, 0x00, 8)
VHOST_SET_OWNER = _ioc(0, 0x01, 0)
VHOST_SET_MEM_TABLE = _ioc(_IOC_WRITE, 0x03, 8)
VHOST_SET_VRING_NUM = _ioc(_IOC_WRITE, 0x10, 8)
VHOST_SET_VRING_ADDR = _ioc(_IOC_WRITE, 0x11, 40)
VHOST_SET_VRING_BASE = _ioc(_IOC_WRITE, 0x12, 8)
VHOST_SET_VRING_KICK = _ioc(_IOC_WRITE, 0x20, 8)
VHOST_NET_SET_BACKEND = _ioc(_IOC_WRITE, 0x30, 8)
VHOST_NET_F_VIRTIO_NET_HDR = 1 << 27

TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TAP, IFF_NO_PI, IFF_UP = 0x0002, 0x1000, 0x1
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
ETH_P_IRQBYPASS = 0x88B5  # IEEE 802 local experimental ethertype


class Tap:
    """A tap interface (no packet info), up, with IPv6 off so the kernel sends
    nothing of its own on it; :meth:`send` transmits one frame out of it."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            request = struct.pack("16sH", b"irqbp%d", IFF_TAP | IFF_NO_PI)
            ifr = fcntl.ioctl(self.fd, TUNSETIFF, request)
            self.name = ifr[:16].rstrip(b"\0").decode()
            ipv6 = f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6"
            if os.path.exists(ipv6):  # no router solicitations, no MLD reports
                with open(ipv6, "w") as f:
                    f.write("1")
            name = self.name.encode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", name, 0))
                flags = struct.unpack_from("16sH", got)[1]
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", name, flags | IFF_UP))
            proto = socket.htons(ETH_P_IRQBYPASS)
            self.packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, proto)
            self.packet.bind((self.name, 0))
        except BaseException:
            os.close(self.fd)
            raise

    def send(self, n: int = 0) -> None:
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ETH_P_IRQBYPASS)
        self.packet.send(frame + f"irqbypass {n}".encode().ljust(46, b"\0"))

    def close(self) -> None:
        self.packet.close()
        os.close(self.fd)


class VhostNetDriver(VirtioDriver):
    """Drives a /dev/vhost-net fd to receiving on virtqueue 0 from a tap.
    :meth:`close` releases the memory, the kick eventfd and the tap (the fd
    stays the caller's)."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, [])
        self.queues = {0: ReceiveQueue(self, 0)}
        self.tap = Tap()

    def start(self) -> None:
        fd = self.fd
        offered = bytearray(8)
        fcntl.ioctl(fd, VHOST_GET_FEATURES, offered, True)
        assert int.from_bytes(offered, "little") & VHOST_NET_F_VIRTIO_NET_HDR
        fcntl.ioctl(fd, VHOST_SET_FEATURES, struct.pack("=Q", VHOST_NET_F_VIRTIO_NET_HDR))
        # struct vhost_memory {u32 nregions, padding; struct vhost_memory_region
        # {u64 guest_phys_addr, memory_size, userspace_addr, flags_padding} regions[]}
        region = struct.pack("=QQQQ", self.address, len(self.mem), self.address, 0)
        fcntl.ioctl(fd, VHOST_SET_MEM_TABLE, struct.pack("=II", 1, 0) + region)
        self.queues[0].setup(fd)
        fcntl.ioctl(fd, VHOST_NET_SET_BACKEND, struct.pack("=Ii", 0, self.tap.fd))

    def close(self) -> None:
        fcntl.ioctl(self.fd, VHOST_NET_SET_BACKEND, struct.pack("=Ii", 0, -1))
        super().close()
        self.tap.close()


class ReceiveQueue(Virtqueue):
    """vhost-net's virtqueue 0 (no VDPA ring enable: a backend enables it)."""

    def setup(self, fd: int) -> None:
        fcntl.ioctl(fd, VHOST_SET_VRING_NUM, struct.pack("=II", self.index, QSIZE))
        addr = struct.pack(
            "=IIQQQQ", self.index, 0, self.addr(self.desc), self.addr(self.used),
            self.addr(self.avail), 0,
        )  # fmt: skip
        fcntl.ioctl(fd, VHOST_SET_VRING_ADDR, addr)
        fcntl.ioctl(fd, VHOST_SET_VRING_BASE, struct.pack("=II", self.index, 0))
        fcntl.ioctl(fd, VHOST_SET_VRING_KICK, struct.pack("=Ii", self.index, self.kick.fileno()))


def set_owner(fd: int) -> None:
    fcntl.ioctl(fd, VHOST_SET_OWNER, 0)
