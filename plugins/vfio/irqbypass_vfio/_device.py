"""One open VFIO device, shared by the producers of its vectors in this process.

vfio-pci keeps a device's interrupt state per device, not per fd, and a group
node opens only once: so the producers of one device's vectors (one per MSI-X
vector) share one device fd, opened by the first to open and closed by the last
to close. The device's lock serializes their ``VFIO_DEVICE_SET_IRQS`` calls
with the bookkeeping those need: which producer holds each vector (two on one
vector would take each other's trigger), and which MSI/MSI-X block this process
enabled (on a ``NORESIZE`` index the first attach enables the whole block).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import cast

import irqbypass

__all__ = ["SharedDevice", "acquire", "release", "seam_key"]


@dataclass(eq=False)
class SharedDevice:
    """A device fd and what the producers sharing it must agree on."""

    key: Hashable
    fd: int
    #: the fds opened for it (device, group, container, iommufd): the last
    #: user closes them, the device first; empty for a VMM's fd (never closed)
    owned: list[int]
    mode: str  # "cdev", "group" or "fd"
    devid: int | None = None
    users: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: (index, vector) -> the name of the producer attached to it
    holders: dict[tuple[int, int], str] = field(default_factory=dict)
    #: index -> how many vectors this process enabled on it (NORESIZE blocks)
    blocks: dict[int, int] = field(default_factory=dict)
    #: GET_INFO and GET_IRQ_INFO answers (they do not change while open)
    info: dict[int, object] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        """Opened here: no one outside this process enables its interrupts."""
        return self.mode != "fd"


_DEVICES: dict[Hashable, SharedDevice] = {}
_LOCK = threading.Lock()


def seam_key(seam: irqbypass.Seam) -> Hashable:
    """The kernel is one device space; each model is its own."""
    return "kernel" if type(seam) is irqbypass.RealSeam else cast(Hashable, seam)


def acquire(key: Hashable, open_device: Callable[[], SharedDevice]) -> SharedDevice:
    """The open device under ``key``, opened by ``open_device`` when none is:
    one more user (call inside a signal-safe section, paired with :func:`release`)."""
    with _LOCK:
        device = _DEVICES.get(key)
        if device is None:
            device = open_device()
            _DEVICES[key] = device
        device.users += 1
        return device


def release(device: SharedDevice) -> list[int]:
    """One user fewer; the fds to close (device first) when it was the last."""
    with _LOCK:
        device.users -= 1
        if device.users > 0:
            return []
        if _DEVICES.get(device.key) is device:
            del _DEVICES[device.key]
        return sorted(device.owned, key=lambda fd: fd != device.fd)
