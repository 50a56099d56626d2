"""The one error hierarchy of irqbypass.

Every error is an :class:`IrqBypassError`. Each carries an ``errno`` where the
kernel's IRQ bypass manager (or the device behind an endpoint) has one, so an
embedding VMM can map it back to the code the kernel would have returned, and a
message that says what was wrong and what to do about it.
"""

from __future__ import annotations

import errno as _errno
import sys
from collections.abc import Sequence
from typing import TypeVar

_E = TypeVar("_E", bound=BaseException)


class IrqBypassError(Exception):
    """Base of every irqbypass error; ``errno`` is set where the kernel has one."""

    errno: int | None = None

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno

    @property
    def message(self) -> str:
        """The message as given, without the errno (``str()`` of the error is the same
        text)."""
        return str(self.args[0]) if self.args else ""


class InvalidEndpointError(IrqBypassError):
    """An endpoint the manager cannot take: token ``None``, unhashable, or a
    consumer without ``add_producer``/``del_producer`` (the kernel's EINVAL)."""

    errno = _errno.EINVAL


class BusyError(IrqBypassError):
    """The kernel's EBUSY: something is already registered."""

    errno = _errno.EBUSY


class TokenInUseError(BusyError):
    """Another endpoint on the same side already holds this token."""


class AlreadyRegisteredError(BusyError):
    """This very endpoint object is already registered."""


class ReentrantCallError(IrqBypassError):
    """A callback called back into the manager that is running it.

    The manager's lock is held while callbacks run (as the kernel's mutex is);
    waiting for it from inside a callback would deadlock, so the call is refused.
    """

    errno = _errno.EDEADLK


class CallbackFailure(IrqBypassError):
    """Base of the errors raised because endpoint callbacks raised.

    ``errors`` holds every exception the callbacks raised during the operation,
    in the order they happened; ``__cause__`` is the one that decided the outcome.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[BaseException] = (),
        errno: int | None = None,
    ) -> None:
        if errno is None:
            errno = _errno_of(errors[0]) if errors else None
        super().__init__(message, errno=errno)
        self.errors: tuple[BaseException, ...] = tuple(errors)
        #: what raised, without the state it left ("producer 'p'.stop() raised
        #: RuntimeError: ..."): for a caller that tells the state itself
        self.details: str = message


class ConnectError(CallbackFailure):
    """Connecting a producer and a consumer failed (an ``add`` callback raised, or
    a hook wrapper vetoed it). The endpoint being registered was not registered;
    its partner stays registered and unpaired."""


class CallbackError(CallbackFailure):
    """A ``stop``, ``start`` or ``del`` callback raised.

    These callbacks cannot fail in the kernel, so the operation still completed
    exactly as the kernel would have (the message says what state it left), and
    the failure is reported here rather than lost.
    """


class Veto(IrqBypassError):
    """Raised by a hook wrapper of ``irqbypass_add`` (before its ``yield``) to
    refuse a pairing. The registration fails with a ConnectError whose cause is
    this veto; a :class:`~irqbypass.Topology` then fails as a whole, unless
    ``unpaired=True``: the pair is left unpaired (both ends open, the interrupts
    on the eventfd path) and the rest of the topology applies."""

    errno = _errno.EPERM

    def __init__(self, message: str, *, unpaired: bool = False) -> None:
        super().__init__(message)
        self.unpaired = unpaired


class PluginError(IrqBypassError):
    """A plugin could not be loaded or used."""


class KindConflictError(PluginError):
    """Two plugins register the same kind name."""


class UnknownKindError(PluginError):
    """A configuration asks for a kind no loaded plugin provides."""

    errno = _errno.ENOENT


class ConfigError(IrqBypassError):
    """A configuration file or an endpoint's options are invalid.

    The message starts with where the problem is: the file, the line where the
    parser knows it, and the key path.
    """

    errno = _errno.EINVAL

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.key = key
        self.line = line
        where = []
        if file is not None:
            shown = printable(str(file))
            if len(shown) > 300:  # a hostile path; the start and the end tell it
                shown = f"{shown[:200]}...{shown[-60:]}"
            where.append(shown if line is None else f"{shown}:{line}")
        if key is not None:
            where.append(printable(str(key)))
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)
        #: every problem found, in file order: this one alone, or those of
        #: :meth:`combine` (``irqbypass check`` reports each on its own line)
        self.errors: tuple[IrqBypassError, ...] = (self,)

    @classmethod
    def combine(cls, errors: Sequence[IrqBypassError]) -> IrqBypassError:
        """One error for several problems of one file (given in file order):
        the problem itself when there is one, else a ConfigError whose message
        is theirs, one a line, and whose :attr:`errors` lists them."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        combined = cls(
            "\n".join(str(e) for e in errors),
            file=None,
            key=None,
            line=None,
        )
        if isinstance(first, ConfigError):
            combined.file, combined.key, combined.line = first.file, first.key, first.line
        combined.errors = tuple(errors)
        return combined


class EventfdClosedError(IrqBypassError, ValueError):
    """I/O on an :class:`~irqbypass.Eventfd` that is closed, or was closed while
    the call waited (EBADF). A ``ValueError`` too, as I/O on a closed file is."""

    errno = _errno.EBADF


class LoopClosedError(IrqBypassError):
    """The :class:`~irqbypass.plugin.EventLoop` was closed (or cannot be moved to asyncio now)."""

    errno = _errno.ESHUTDOWN


class TopologyError(IrqBypassError):
    """Applying or tearing down a topology failed; the message names the
    endpoint and the step, ``__cause__`` is the underlying error."""


class DeviceError(IrqBypassError):
    """A device or kernel interface behind an endpoint refused an operation.

    Raised by plugins around their ioctls; ``errno`` is the kernel's.
    """


def printable(text: str) -> str:
    """``text`` with every control character escaped, so that a name or a
    message cannot clear a terminal or forge a line of output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _errno_of(exc: BaseException) -> int | None:
    value = getattr(exc, "errno", None)
    return value if isinstance(value, int) else None


def with_notes(exc: _E, notes: Sequence[str]) -> _E:
    """``exc`` with ``notes`` added: how an interrupt that was let through says
    what it interrupted and what state it left (``add_note``; on Python 3.10 the
    same ``__notes__`` list of PEP 678, which the CLI prints and 3.10's
    tracebacks do not)."""
    if sys.version_info >= (3, 11):
        for note in notes:
            exc.add_note(note)
    else:
        exc.__dict__.setdefault("__notes__", []).extend(notes)
    return exc
