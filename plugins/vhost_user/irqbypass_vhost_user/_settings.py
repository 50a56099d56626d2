"""What a vhost-user producer is told: one frozen value, checked once.

Both ways of making a producer end in a :class:`VhostUserSettings` (an
:class:`irqbypass.plugin.Settings`): the Python constructor's keywords, and a TOML
entry's options read by :meth:`VhostUserSettings.read`, whose every refusal
names the key, so ``irqbypass check`` reports it. The rules are checked in
one place, :meth:`VhostUserSettings.check`; a value that exists is valid, and
the producer and its load generator never check again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import irqbypass
import irqbypass.plugin
from irqbypass.plugin import show_value

from . import _wire as wire
from .connection import DEFAULT_TIMEOUT, MAX_TIMEOUT, Connection, check_socket_path
from .errors import VhostUserError
from .ring import GuestMemory

__all__ = ["DEFAULT_QUEUE_SIZE", "VhostUserOptions", "VhostUserSettings"]

DEFAULT_QUEUE_SIZE = 256
#: the highest uid a back-end may run as ((uid_t)-1 means "no uid")
MAX_UID = 2**32 - 2


class VhostUserOptions(TypedDict, total=False):
    """The producer's option keywords but ``queue`` (the producer's own
    keyword: None for its ``irq``, else 0): :class:`VhostUserSettings`' fields."""

    socket: str | None
    spawn: bool
    connection: Connection | int | None
    timeout: float
    queue_size: int
    memory: GuestMemory | None
    reply_ack: bool
    kicks_on_set_call: bool | None
    requests: int
    rate: float
    delay: float
    drain_timeout: float
    backend_uid: int | None


#: what a file is told when it names no back-end, or more than one
_ONE_BACKEND_IN_CONFIG = (
    "give exactly one of socket (the back-end's socket path), spawn = true (a "
    "private qemu-storage-daemon) and fd (a connection this process inherited)"
)


@dataclass(frozen=True)
class VhostUserSettings(irqbypass.plugin.Settings):
    """A vhost-user producer's options (see the producer and
    ``docs/plugins/vhost-user.md``, "Options"), checked once when made:
    :class:`irqbypass.InvalidEndpointError` says which is wrong (in a
    configuration file's words, too: :meth:`irqbypass.plugin.Options.refusals`).

    Exactly one of ``socket``, ``spawn`` and ``connection`` says where the
    back-end is; ``queue`` is the virtqueue (the producer resolves a missing
    one from its ``irq``); ``requests``, ``rate`` and ``delay`` are the block
    load generator's and ``memory`` the ring's, so both need a connection the
    producer owns.
    """

    socket: str | None = None
    spawn: bool = False
    connection: Connection | int | None = None
    queue: int = 0
    timeout: float = DEFAULT_TIMEOUT
    queue_size: int = DEFAULT_QUEUE_SIZE
    memory: GuestMemory | None = None
    reply_ack: bool = False
    kicks_on_set_call: bool | None = None
    requests: int = 0
    rate: float = 100.0
    delay: float = 0.0
    drain_timeout: float = 5.0
    backend_uid: int | None = None

    def check(self) -> None:
        self._check_backend()
        self._check_types()
        self._check_ranges()
        self._check_socket()

    @property
    def owns_connection(self) -> bool:
        """The producer connects (``socket`` or ``spawn``); else the VMM's connection."""
        return self.connection is None

    def _check_backend(self) -> None:
        socket, spawn, connection = self.socket, self.spawn, self.connection
        if sum((socket is not None, spawn, connection is not None)) != 1:
            raise self.refuse(
                "give exactly one of socket (the back-end's socket path), spawn (a "
                "private qemu-storage-daemon) and connection (the VMM's connection) (got "
                f"socket={socket!r}, spawn={spawn!r}, connection={connection!r})",
                option="socket",
                in_config=_ONE_BACKEND_IN_CONFIG,
            )
        if isinstance(connection, bool) or (isinstance(connection, int) and connection < 0):
            raise self.refuse(f"connection {connection!r} is not an fd")
        q = self.queue
        if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= wire.VRING_INDEX_MASK:
            raise self.refuse(
                f"queue {q!r} must be 0..{wire.VRING_INDEX_MASK} (the index field of "
                "SET_VRING_CALL has 8 bits)"
            )
        if connection is not None and (self.requests or self.memory is not None):
            raise self.refuse(
                "requests and memory need a connection this producer owns (socket or "
                "spawn); on a handed connection the VMM owns the rings",
                option="requests",
                in_config="needs a connection this producer owns (socket or spawn)",
            )

    def _check_types(self) -> None:
        for key, value in (("timeout", self.timeout), ("drain_timeout", self.drain_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                shown = show_value(value)
                raise self.refuse(f"{key} must be a number of seconds, got {shown}")
            if not 0 <= value <= MAX_TIMEOUT:  # NaN fails too
                raise self.refuse(
                    f"{key} must be 0..{MAX_TIMEOUT:g} seconds, got {show_value(value)}"
                )
        for key, count in (("requests", self.requests), ("backend_uid", self.backend_uid)):
            if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
                raise self.refuse(
                    f"{key} must be an integer, got {show_value(count)}",
                    option=key,
                    in_config=self._uid_in_config() if key == "backend_uid" else None,
                )
        for key, number in (("rate", self.rate), ("delay", self.delay)):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise self.refuse(f"{key} must be a number, got {show_value(number)}")

    def _check_ranges(self) -> None:
        if (
            not self.timeout > 0
            or self.requests < 0
            or not 0 < self.rate < 1e9
            or not 0 <= self.delay <= MAX_TIMEOUT
        ):
            raise self.refuse(
                "timeout and rate must be > 0, requests and delay >= 0 (delay at most "
                f"{MAX_TIMEOUT:g} s)"
            )
        uid = self.backend_uid
        if uid is not None and not 0 <= uid <= MAX_UID:
            raise self.refuse(
                f"backend_uid {uid} is not a uid (0..{MAX_UID})",
                option="backend_uid",
                in_config=self._uid_in_config(),
            )

    def _uid_in_config(self) -> str:
        return (
            f"expected the uid the back-end runs as (an integer 0..{MAX_UID}), got "
            f"{show_value(self.backend_uid)}"
        )

    def _check_socket(self) -> None:
        if self.socket is None:
            return
        if not isinstance(self.socket, str):
            shown = show_value(self.socket)
            raise self.refuse(f"socket must be a path (str), got {shown}", option="socket")
        try:
            check_socket_path(self.socket)
        except VhostUserError as exc:
            raise self.refuse(exc.message, option="socket", errno=exc.errno) from exc

    # -- from a TOML entry -------------------------------------------------

    @classmethod
    def read(cls, opts: irqbypass.plugin.Options, irq: int | None) -> VhostUserSettings:
        """The settings a TOML entry's ``options`` give (``irq``: the entry's,
        the default virtqueue): the table's types and ranges, and the rules
        only a file can break, read here; the rest is :meth:`check`'s, in the
        file's words. Every refusal is a :class:`irqbypass.ConfigError` naming
        the key; the caller calls ``opts.finish()`` after."""
        socket_path = opts.get_str("socket")
        spawn = opts.get_bool("spawn", False)
        fd = opts.get_fd("fd")
        queue = opts.get_int("queue", irq if irq is not None else 0, min=0, max=255)
        timeout = opts.get_float("timeout", DEFAULT_TIMEOUT, min=0.001, max=MAX_TIMEOUT)
        backend_uid = opts.get_raw("backend_uid")
        queue_size = opts.get_int("queue_size", DEFAULT_QUEUE_SIZE, min=2, max=32768)
        if queue_size & (queue_size - 1):
            raise opts.error("queue_size", f"must be a power of 2, got {queue_size}")
        reply_ack = opts.get_bool("reply_ack", False)
        kicks = opts.get_raw("kicks_on_set_call")
        if kicks is not None and not isinstance(kicks, bool):
            raise opts.error("kicks_on_set_call", f"expected true or false, got {kicks!r}")
        requests = opts.get_int("requests", 0, min=0)
        rate = opts.get_float("rate", 100.0, min=0.001, max=1e6)
        delay = opts.get_float("delay", 0.0, min=0.0, max=MAX_TIMEOUT)
        with opts.refusals():
            return cls(
                socket=socket_path,
                spawn=spawn,
                connection=fd,
                queue=queue,
                timeout=timeout,
                queue_size=queue_size,
                reply_ack=reply_ack,
                kicks_on_set_call=kicks,
                requests=requests,
                rate=rate,
                delay=delay,
                backend_uid=backend_uid,
            )
