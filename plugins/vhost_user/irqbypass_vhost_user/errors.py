"""The vhost-user producer's errors: all :class:`irqbypass.DeviceError`.

A back-end is another process, so besides refusing a request it can vanish
(EOF, EPIPE), stall (no reply in time) or answer nonsense; each has its own
class so a VMM can tell "restart the back-end" from "fix the request".
"""

from __future__ import annotations

import errno

import irqbypass

__all__ = ["BackendGoneError", "BackendTimeoutError", "ProtocolError", "VhostUserError"]


class VhostUserError(irqbypass.DeviceError):
    """A vhost-user back-end refused or failed a request."""


class BackendGoneError(VhostUserError):
    """The back-end closed the connection or died (EOF, EPIPE, ECONNRESET).

    Its eventfds and the shared memory stay valid on this side: close the
    producer, restart the back-end, and open the producer again."""

    def __init__(self, message: str, *, errno: int | None = errno.EPIPE) -> None:
        super().__init__(message, errno=errno)


class BackendTimeoutError(VhostUserError):
    """The back-end did not answer within the producer's timeout."""

    def __init__(self, message: str, *, errno: int | None = errno.ETIMEDOUT) -> None:
        super().__init__(message, errno=errno)


class ProtocolError(VhostUserError):
    """The back-end sent a reply the protocol does not allow (wrong request,
    flags, size or file descriptors)."""

    def __init__(self, message: str, *, errno: int | None = errno.EPROTO) -> None:
        super().__init__(message, errno=errno)
