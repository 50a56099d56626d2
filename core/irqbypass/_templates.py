"""Small templates for a plugin's classes, so that each plugin does not write them again.

A plugin's endpoint is often a thin owner of parts (its checked settings, the
device's side of its interrupt) whose values it shows as its own attributes:
:class:`Alias` says so in one line, with the path it reads, instead of a
property per attribute that only forwards. The keywords every device producer
takes are :class:`DeviceArgs`. What a plugin starts and must
close again (a demo guest, a back-end daemon) is a :class:`Service`: ``with``
starts it and closes it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, overload

if TYPE_CHECKING:
    from ._seam import Seam

__all__ = ["Alias", "DeviceArgs", "Service"]

_T = TypeVar("_T")
_S = TypeVar("_S", bound="Service")


class Alias(Generic[_T]):
    """A read-only attribute whose value is read at ``path`` from the object:
    ``queue = Alias[int]("settings.queue")`` reads ``self.settings.queue``.

    Read on the class, it is the alias itself (``Cls.queue.path``).
    """

    __slots__ = ("_read", "path")

    def __init__(self, path: str) -> None:
        #: the dotted path read from the object
        self.path = path
        self._read: Callable[[Any], _T] = operator.attrgetter(path)

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Alias[_T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> _T | Alias[_T]:
        return self if obj is None else self._read(obj)

    def __set__(self, obj: object, value: _T) -> None:
        raise AttributeError(f"read-only: it is {type(obj).__name__}'s {self.path}")

    def __repr__(self) -> str:
        return f"Alias({self.path!r})"


class Service:
    """What a plugin starts and must close again: a guest, a back-end daemon.

    ``with service:`` starts it and closes it on every path out of the block.
    A subclass defines :meth:`start` and :meth:`close` (idempotent).
    """

    def start(self) -> None:
        """Start it (the subclass's); ``with`` calls it first."""
        raise NotImplementedError(f"{type(self).__name__} defines start()")

    def close(self) -> None:
        """Stop it and release what it holds, on every path (the subclass's; idempotent)."""
        raise NotImplementedError(f"{type(self).__name__} defines close()")

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeviceArgs(TypedDict, total=False):
    """The keywords of :class:`~irqbypass.plugin.DeviceProducer` that a device
    producer's constructor passes on as they are: it declares its own options
    and takes these as ``**device: Unpack[DeviceArgs]`` (a VMM gives them by
    name, as to any constructor), so each plugin does not declare them again.
    """

    #: the interrupt's number where the plugin has none of its own (``vector``, ``queue``)
    irq: int | None
    #: the endpoint's name
    name: str | None
    #: what performs the system calls (tests pass a model)
    seam: Seam | None
    #: the device's path (exactly one of ``device`` and ``device_fd``)
    device: str | None
    #: the VMM's fd of the device (the producer then owns nothing)
    device_fd: int | None
