"""Fakes and fixtures for tests: the API tier for a plugin's (or a VMM's) test suite.

The fixtures (``token``, ``no_fd_leak``, ``vmm_fd``, ``irqbypass_plugins``,
``irqbypass_host``, ``irqbypass_manager``) come with the core as a pytest
plugin (:mod:`irqbypass.pytest_plugin`, entry point ``pytest11``): a test asks
for them by name. This module holds what a test imports: the device models'
base and what the fixtures are made of (:func:`open_fds`, :class:`HandsOver`).

What models of devices behind a :class:`~irqbypass.system.Seam` share: a
plugin's model (``irqbypass_vfio.testing.FakeVfio``,
``irqbypass_vdpa.testing.FakeVdpa``, ``irqbypass_vhost.testing.FakeVhost``)
subclasses :class:`FakeDevice` and answers each ioctl as its driver documents;
the base records every call with its payload bytes, makes any request fail
on demand, hands out real fds (``/dev/null``) so leak checks see them, and
holds a reference on each eventfd the device was pointed at, as the kernel
does (:meth:`FakeDevice.take_eventfd`).
A model proves the plugin speaks the documented ABI in the documented order,
nothing about a particular device.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ._errors import InvalidEndpointError
from ._eventfd import Eventfd

__all__ = ["DeviceCall", "FakeDevice", "HandsOver", "open_fds"]

_F = TypeVar("_F")
_U64 = struct.Struct("=Q")


@dataclass(frozen=True)
class DeviceCall:
    """One ioctl as the kernel would see it: the payload as it was passed."""

    fd: int
    request: int
    payload: bytes | int
    name: str


class FakeDevice(Generic[_F]):
    """The recording half of a device model; ``names`` names the requests
    (:meth:`request_names`), ``files`` maps each fd it handed out to what the
    subclass knows of it. ``denied`` paths open with EACCES."""

    def __init__(
        self,
        names: Mapping[int, str],
        *,
        denied: tuple[str, ...] = (),
        sysfs_root: str = "/nonexistent-sysfs",
    ) -> None:
        self.names_of = names
        self.denied = denied
        self.sysfs_root = sysfs_root
        self.calls: list[DeviceCall] = []
        self.opened: list[str] = []
        self.closed: list[int] = []
        self.files: dict[int, _F] = {}
        self._failures: dict[int, list[int]] = {}

    @staticmethod
    def request_names(abi: object, *names: str) -> dict[int, str]:
        """``{abi.NAME: "NAME"}`` for each name: how the model names recorded calls."""
        return {getattr(abi, name): name for name in names}

    @staticmethod
    def error(code: int) -> OSError:
        """What a syscall failing with errno ``code`` raises."""
        return OSError(code, os.strerror(code))

    @staticmethod
    def put(arg: bytearray | int, data: bytes) -> int:
        """Write ``data`` into an ioctl's buffer, as the kernel's copy_to_user."""
        assert isinstance(arg, bytearray)
        arg[: len(data)] = data
        return 0

    def fail(self, request: int, code: int, times: int = 1) -> None:
        """Make the next ``times`` calls of ``request`` raise OSError(code)."""
        self._failures.setdefault(request, []).extend([code] * times)

    def names(self) -> list[str]:
        """The names of the recorded calls, in order."""
        return [call.name for call in self.calls]

    @property
    def open_fds(self) -> list[int]:
        """The fds the model holds open, sorted: empty once everything was closed."""
        return sorted(self.files)

    def record(self, fd: int, request: int, arg: bytearray | int) -> None:
        """Record an ioctl; raise the failure :meth:`fail` queued for it."""
        name = self.names_of.get(request, f"{request:#x}")
        self.calls.append(
            DeviceCall(fd, request, arg if isinstance(arg, int) else bytes(arg), name)
        )
        pending = self._failures.get(request)
        if pending:
            raise self.error(pending.pop(0))

    def check_access(self, path: str) -> None:
        """Refuse ``path`` with EACCES if the test put it in :attr:`denied`, as a node the user
        cannot open."""
        if path in self.denied:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)

    def new_fd(self, path: str, file: _F) -> int:
        """A real fd (of /dev/null) standing for ``path``'s open file, which the model keeps in
        :attr:`files`."""
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.files[fd] = file
        self.opened.append(path)
        return fd

    def drop_fd(self, fd: int) -> _F:
        """Close one of the model's fds (EBADF for one it never gave out)."""
        if fd not in self.files:
            raise self.error(errno.EBADF)
        file = self.files.pop(fd)
        self.closed.append(fd)
        os.close(fd)
        return file

    @staticmethod
    def take_eventfd(fd: int) -> int:
        """``eventfd_ctx_fdget``: a reference (a dup) on eventfd ``fd``; EBADF
        for a closed fd, EINVAL for one that is no eventfd."""
        try:
            Eventfd.from_fd(fd)
        except InvalidEndpointError as exc:
            raise FakeDevice.error(exc.errno or errno.EINVAL) from exc
        return os.dup(fd)

    @staticmethod
    def signal(ref: int, n: int = 1) -> int:
        """The device signals the eventfd it holds ``ref`` on, ``n`` times."""
        for _ in range(n):
            os.write(ref, _U64.pack(1))
        return n


class HandsOver(Protocol):
    """A device model that can play the VMM setting its device up (what the
    ``vmm_fd`` fixture needs of the test module's ``fake``)."""

    calls: list[DeviceCall]
    opened: list[str]

    def hand_over(self) -> int:
        """Open and set up the device as a VMM would; return the VMM's fd."""
        ...

    def close(self, fd: int) -> None:
        """Close an fd the model handed out."""
        ...


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used, now closed
    return fds
