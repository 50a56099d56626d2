"""A minimal virtio-blk driver on a :class:`SplitRing`: it makes completions.

The producer only routes the call interrupt; something has to give the
back-end work for interrupts to happen. This is that something for the demo,
the tests and the benchmark: it queues virtio-blk requests (GET_ID, which the
device answers without touching the disk, or a one-sector read) as two-
descriptor chains (the 16-byte request header, then the device-writable data
with the status byte last, as virtio 1.x allows), kicks the back-end, and
reaps the used ring. It never reads the call eventfd: in the bypass that is
the guest's.
"""

from __future__ import annotations

import errno
import struct

import irqbypass

from .errors import ProtocolError
from .ring import GuestMemory, SplitRing

__all__ = ["VIRTIO_BLK_T_GET_ID", "VIRTIO_BLK_T_IN", "BlkDriver"]

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_S_OK = 0
ID_BYTES = 20
SECTOR = 512

_REQ_HDR = struct.Struct("<IIQ")  # type, reserved, sector
_SLOT = 1024  # per request: header at 0, data at 16, status byte after the data


class BlkDriver:
    """Queue virtio-blk requests on ``ring``; buffers at ``data_gpa`` onward.

    Each request uses descriptors ``2*slot`` and ``2*slot+1``, so at most
    ``ring.size // 2`` are in flight. ``kick`` is called after each batch is
    published (the producer writes the kick eventfd).
    """

    def __init__(self, ring: SplitRing, memory: GuestMemory, data_gpa: int) -> None:
        self.ring = ring
        self.memory = memory
        self.data_gpa = data_gpa
        self.slots = ring.size // 2
        end = data_gpa + self.slots * _SLOT - memory.guest_addr
        if end > memory.size:
            raise irqbypass.InvalidEndpointError(
                f"{self.slots} request buffers at {data_gpa:#x} need {end} bytes of guest "
                f"memory, it has {memory.size}: give more memory or a smaller queue"
            )
        self._free = list(range(self.slots - 1, -1, -1))
        self._busy: set[int] = set()  # the slots the device holds
        self.submitted = 0
        self.completed = 0
        self.failed = 0

    @property
    def in_flight(self) -> int:
        return self.slots - len(self._free)

    def queue(
        self, n: int = 1, *, kind: int = VIRTIO_BLK_T_GET_ID, sector: int = 0, publish: bool = True
    ) -> int:
        """Add up to ``n`` requests (as many as there are free slots) and
        publish them (unless not ``publish``); returns how many. The caller kicks."""
        view = self.memory.view
        count = 0
        while count < n and self._free:
            slot = self._free.pop()
            self._busy.add(slot)
            base = self.data_gpa + slot * _SLOT
            off = base - self.memory.guest_addr
            length = ID_BYTES if kind == VIRTIO_BLK_T_GET_ID else SECTOR
            _REQ_HDR.pack_into(view, off, kind, 0, sector)
            view[off + 16 + length] = 0xFF  # the device overwrites it with the status
            self.ring.add(2 * slot, [(base, 16, False), (base + 16, length + 1, True)])
            count += 1
        if count and publish:
            self.ring.publish()
        self.submitted += count
        return count

    def reap(self) -> int:
        """Take every finished request off the used ring; returns how many.
        A request whose status is not OK is counted in ``failed``."""
        view = self.memory.view
        done = 0
        for head, _length in self.ring.pop_used():
            slot = head // 2
            if head % 2 or slot not in self._busy:
                raise ProtocolError(
                    f"the back-end returned descriptor {head}, which heads no request of "
                    "this driver in flight: it corrupted the used ring (see its log)",
                    errno=errno.EIO,
                )
            off = self.data_gpa + slot * _SLOT - self.memory.guest_addr
            kind = _REQ_HDR.unpack_from(view, off)[0]
            length = ID_BYTES if kind == VIRTIO_BLK_T_GET_ID else SECTOR
            if view[off + 16 + length] != VIRTIO_BLK_S_OK:
                self.failed += 1
            self._busy.discard(slot)
            self._free.append(slot)
            done += 1
        self.completed += done
        return done
