"""The virtqueue a producer sets up and feeds on a connection it owns.

There the producer is the back-end's whole front-end: it shares memory (the
memory it was given, or a sealed memfd it makes), lays out one split ring
for its virtqueue, gives the back-end a kick eventfd, and a minimal
virtio-blk driver queues requests on the ring. :class:`OwnedRing` is that
state and the messages that set it up; the producer keeps the call
interrupt and decides when work is published.
"""

from __future__ import annotations

from collections.abc import Callable

import irqbypass

from . import _wire as wire
from .blk import BlkDriver
from .connection import Connection
from .ring import GuestMemory, SplitRing

__all__ = ["DEFAULT_MEMORY", "OwnedRing"]

#: the least memory a producer makes for its ring and request buffers
DEFAULT_MEMORY = 1 << 20


class OwnedRing:
    """Virtqueue ``queue`` of ``size`` entries in ``memory`` (None: a memfd
    made for it, closed with it). Made empty; :meth:`set_up` obtains and
    sends, :meth:`close` releases whatever that obtained."""

    def __init__(self, queue: int, size: int, memory: GuestMemory | None = None) -> None:
        self.queue = queue
        self.size = size
        self._given_memory = memory
        self.memory: GuestMemory | None = None
        self.ring: SplitRing | None = None
        self.driver: BlkDriver | None = None
        self.kick: irqbypass.Eventfd | None = None

    def set_up(self, conn: Connection) -> None:
        """The memory, ring and driver; then SET_MEM_TABLE, SET_VRING_NUM,
        SET_VRING_BASE, SET_VRING_ADDR and SET_VRING_KICK, each acked."""
        memory = self.memory = self._given_memory
        if memory is None:
            memory = self.memory = GuestMemory.create(_memory_for(self.size))
        ring = self.ring = SplitRing(memory, memory.guest_addr, self.size)
        self.driver = BlkDriver(ring, memory, ring.end_gpa)
        region = wire.MemoryRegion(memory.guest_addr, memory.size, memory.user_addr, 0)
        conn.request(
            wire.Request.SET_MEM_TABLE, wire.pack_memory_table([region]), [memory.fd], sync=True
        )
        q = self.queue
        conn.request(wire.Request.SET_VRING_NUM, wire.pack_vring_state(q, ring.size), sync=True)
        conn.request(wire.Request.SET_VRING_BASE, wire.pack_vring_state(q, 0), sync=True)
        addr = wire.pack_vring_addr(
            q,
            desc=memory.user(ring.desc_gpa),
            used=memory.user(ring.used_gpa),
            avail=memory.user(ring.avail_gpa),
        )
        conn.request(wire.Request.SET_VRING_ADDR, addr, sync=True)
        self.kick = irqbypass.Eventfd()
        conn.request(
            wire.Request.SET_VRING_KICK,
            wire.pack_vring_file(q, has_fd=True),
            [self.kick.fileno()],
            sync=True,
        )

    @property
    def ready(self) -> bool:
        """Set up far enough to queue requests and kick the back-end."""
        return self.driver is not None and self.kick is not None

    def submit(self, n: int, *, publish: bool) -> int:
        """Queue up to ``n`` GET_ID requests; publish them and kick the
        back-end unless not ``publish`` (see :meth:`resume`). How many fitted."""
        assert self.driver is not None and self.kick is not None
        queued = self.driver.queue(n, publish=publish)
        if queued and publish:
            self.kick.write()
        return queued

    def resume(self) -> int:
        """Publish what :meth:`submit` held back and kick the back-end; how many."""
        ring, kick = self.ring, self.kick
        if ring is None or kick is None or not ring.unpublished:
            return 0
        held = ring.unpublished
        ring.publish()
        kick.write()
        return held

    def close(self, step: Callable[[Callable[[], object]], None]) -> None:
        """Release the kick eventfd and the memory made here, each through
        ``step`` (which goes on past a failure)."""
        kick, memory = self.kick, self.memory
        self.kick = self.memory = self.ring = self.driver = None
        if kick is not None:
            step(kick.close)
        if memory is not None and memory is not self._given_memory:
            step(memory.close)


def _memory_for(size: int) -> int:
    """Bytes for a ring of ``size`` entries and its request buffers, whole pages."""
    slots = size // 2
    ring_bytes = 16 * size + 8 * size + 3 * 4096
    need = ring_bytes + slots * 1024
    return max(DEFAULT_MEMORY, (need + 4095) // 4096 * 4096)
