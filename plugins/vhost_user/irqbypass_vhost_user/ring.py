"""Shared memory and one split virtqueue in it, as a front-end sets them up.

The back-end maps the memory (a memfd sent with SET_MEM_TABLE) and reads the
ring from it; guest physical address 0 is offset 0 of the memfd. The ring is
the virtio 1.x split layout: a descriptor table, the available ring (driver to
device) and the used ring (device to driver), page-aligned here.

Ordering: ring writes are plain stores to the shared mapping, made in program
order (descriptors, then the available entry, then its index); on x86 (TSO)
the back-end sees them in that order. This module assumes x86-64, as the
project's KVM code does.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct

import irqbypass

from .errors import ProtocolError

__all__ = ["DESC_F_NEXT", "DESC_F_WRITE", "GuestMemory", "SplitRing"]

PAGE = 4096
DESC_F_NEXT = 1
DESC_F_WRITE = 2

#: what a back-end must not do to the memory it maps: shrink it (our next access
#: to a page beyond the end is SIGBUS) or grow it; and no seal may be removed
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")  # id, len


class GuestMemory:
    """A memfd mapped shared: the memory the back-end is given.

    :meth:`create` makes and owns one; :meth:`from_fd` maps a VMM's memfd (the
    fd stays the VMM's). ``guest_addr`` is where it sits in guest physical
    address space; :meth:`close` unmaps (and closes an owned fd).

    The back-end gets the fd itself, so it could ``ftruncate`` it and kill
    this process with SIGBUS at its next ring access: the memfd is sealed
    against shrinking and growing before it is shared (as QEMU does), and a
    VMM's memfd must come sealed so.
    """

    def __init__(self, fd: int, size: int, *, guest_addr: int = 0, owned: bool) -> None:
        if size <= 0 or size % PAGE:
            raise irqbypass.InvalidEndpointError(
                f"guest memory size {size} must be a positive multiple of {PAGE}"
            )
        self.fd = fd
        self.size = size
        self.guest_addr = guest_addr
        self.owned = owned
        self._map: mmap.mmap | None = mmap.mmap(fd, size, mmap.MAP_SHARED)
        anchor = ctypes.c_char.from_buffer(self._map)
        self.user_addr = ctypes.addressof(anchor)
        del anchor  # the address stays valid while mapped; the export must not pin it

    @classmethod
    def create(cls, size: int, name: str = "irqbypass-vhost-user") -> GuestMemory:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS | fcntl.F_SEAL_SEAL)
            return cls(fd, size, owned=True)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, size: int, *, guest_addr: int = 0) -> GuestMemory:
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0  # not a memfd (nor a file that takes seals)
        if seals & fcntl.F_SEAL_SHRINK == 0:
            raise irqbypass.InvalidEndpointError(
                f"fd {fd} is not sealed against shrinking: the back-end it is shared with "
                "could ftruncate it and kill this process with SIGBUS; create it with "
                "memfd_create(..., MFD_ALLOW_SEALING) and fcntl(fd, F_ADD_SEALS, "
                "F_SEAL_SHRINK | F_SEAL_GROW) before sharing it",
                errno=errno.EPERM,
            )
        try:
            if os.fstat(fd).st_size < size:
                raise OSError(errno.EINVAL, f"the file has fewer than {size} bytes")
            return cls(fd, size, guest_addr=guest_addr, owned=False)
        except OSError as exc:
            raise irqbypass.InvalidEndpointError(
                f"cannot map fd {fd} ({size} bytes) shared: {exc.strerror}; pass a memfd "
                "(or shared file) at least that large",
                errno=exc.errno or errno.EINVAL,
            ) from exc

    @property
    def view(self) -> mmap.mmap:
        if self._map is None:
            raise ValueError("the guest memory is closed")
        return self._map

    def user(self, gpa: int) -> int:
        """This process's address of guest physical address ``gpa``."""
        return self.user_addr + (gpa - self.guest_addr)

    def close(self) -> None:
        mapping, self._map = self._map, None
        if mapping is None:
            return
        mapping.close()
        if self.owned:
            os.close(self.fd)


class SplitRing:
    """A split virtqueue of ``size`` entries at guest address ``gpa``.

    The driver's side only: :meth:`add` writes a descriptor chain and its
    available entry, :meth:`publish` makes what was added visible,
    :meth:`pop_used` takes what the device finished. ``avail_idx`` and
    ``used_idx`` are the free-running 16-bit indices; ``in_flight`` is what
    the device has been given and not yet returned.
    """

    def __init__(self, memory: GuestMemory, gpa: int, size: int) -> None:
        if size < 1 or size > 32768 or size & (size - 1):
            raise irqbypass.InvalidEndpointError(
                f"queue size {size} must be a power of 2, 1..32768 (virtio split ring)"
            )
        self.memory = memory
        self.size = size
        self.desc_gpa = gpa
        self.avail_gpa = gpa + 16 * size
        self.used_gpa = _align(self.avail_gpa + 6 + 2 * size, PAGE)
        self.end_gpa = _align(self.used_gpa + 6 + 8 * size, PAGE)
        if self.end_gpa - memory.guest_addr > memory.size or gpa < memory.guest_addr:
            raise irqbypass.InvalidEndpointError(
                f"a {size}-entry ring at {gpa:#x} needs up to {self.end_gpa:#x}, beyond the "
                f"{memory.size}-byte guest memory at {memory.guest_addr:#x}"
            )
        view = memory.view
        start, end = self._off(gpa), self._off(self.end_gpa)
        view[start:end] = bytes(end - start)
        self.avail_idx = 0
        self.used_idx = 0  # the driver's last seen used index

    def _off(self, gpa: int) -> int:
        return gpa - self.memory.guest_addr

    @property
    def bytes(self) -> int:
        return self.end_gpa - self.desc_gpa

    def add(self, head: int, buffers: list[tuple[int, int, bool]]) -> None:
        """Write the chain ``buffers`` (gpa, length, device-writable) into
        descriptors ``head``, ``head + 1``, ... and queue ``head``."""
        view = self.memory.view
        for i, (gpa, length, writable) in enumerate(buffers):
            last = i == len(buffers) - 1
            flags = (DESC_F_WRITE if writable else 0) | (0 if last else DESC_F_NEXT)
            index = head + i
            _DESC.pack_into(
                view,
                self._off(self.desc_gpa) + 16 * index,
                gpa,
                length,
                flags,
                0 if last else index + 1,
            )
        slot = self._off(self.avail_gpa) + 4 + 2 * (self.avail_idx % self.size)
        _U16.pack_into(view, slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def publish(self) -> None:
        """Make every added chain visible to the device (the avail index)."""
        _U16.pack_into(self.memory.view, self._off(self.avail_gpa) + 2, self.avail_idx)

    def device_used_idx(self) -> int:
        idx: int = _U16.unpack_from(self.memory.view, self._off(self.used_gpa) + 2)[0]
        return idx

    def pop_used(self) -> list[tuple[int, int]]:
        """The (head, written length) of every chain the device returned since
        the last call."""
        end = self.device_used_idx()
        returned = (end - self.used_idx) & 0xFFFF
        if returned > self.outstanding:
            raise ProtocolError(
                f"the back-end moved the used index to {end} (from {self.used_idx}) with "
                f"the available index at {self._published()}: {returned} chains returned, "
                f"more than the {self.outstanding} it was given (the used ring's entries "
                f"from {self.used_idx}, as (head, length): {self._used_entries(4)}); it "
                "corrupted the used ring (see its log)",
                errno=errno.EIO,
            )
        done = self._used_entries(returned)
        self.used_idx = end
        return done

    def _used_entries(self, n: int) -> list[tuple[int, int]]:
        """The (head, length) of the ``n`` used-ring entries from ``used_idx`` on."""
        view, base = self.memory.view, self._off(self.used_gpa) + 4
        entries = []
        for i in range(n):
            slot = base + 8 * ((self.used_idx + i) % self.size)
            head, length = _USED_ELEM.unpack_from(view, slot)
            entries.append((head, length))
        return entries

    @property
    def unpublished(self) -> int:
        """Chains added but not yet published."""
        return (self.avail_idx - self._published()) & 0xFFFF

    def _published(self) -> int:
        idx: int = _U16.unpack_from(self.memory.view, self._off(self.avail_gpa) + 2)[0]
        return idx

    @property
    def outstanding(self) -> int:
        """Chains published and not yet taken by :meth:`pop_used`: the most the
        device can return (counted from the driver's own indices only)."""
        return (self._published() - self.used_idx) & 0xFFFF

    @property
    def in_flight(self) -> int:
        """Chains published and not yet in the used ring."""
        return (self._published() - self.device_used_idx()) & 0xFFFF


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to
