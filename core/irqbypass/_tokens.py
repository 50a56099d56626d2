"""A token table: token name -> the one :class:`~irqbypass.Eventfd` behind it.

A :class:`~irqbypass.Topology` asks its table for the eventfd of each token name
its entries use. Topologies that share one table (and one manager) pair across
files: a producer of ``a.toml`` and a consumer of ``b.toml`` that both name token
``"shared"`` get the same eventfd, so the manager pairs them. A VMM that already
owns an eventfd (the one it gave ``KVM_IRQFD``) :meth:`~TokenTable.provide`\\ s it
by name, so a TOML fragment can describe a hot-plugged device on it.

The table counts the entries using each name. An eventfd the table created is
closed when its last user releases it; one the VMM provided is never closed here.
Acquire and release are signal-safe: a Ctrl-C cannot land between an eventfd's
creation and the table holding it (it would leak); it acts as the call returns
(or as the section that called it ends). A table is not locked: change
the topologies that share it from one thread.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._errors import InvalidEndpointError, TopologyError
from ._eventfd import Eventfd
from ._options import show_value
from ._signals import uninterrupted


class TokenTable:
    """Token name -> Eventfd, with the count of entries using each name."""

    def __init__(self, provided: dict[str, Eventfd | int] | None = None) -> None:
        self._eventfds: dict[str, Eventfd] = {}
        self._users: dict[str, int] = {}
        #: names whose eventfd the VMM owns: never closed by the table
        self._provided: set[str] = set()
        #: each provided eventfd -> its name (one eventfd is one token)
        self._names: dict[Eventfd, str] = {}
        for name, token in (provided or {}).items():
            self.provide(name, token)

    def provide(self, name: str, token: Eventfd | int) -> None:
        """Make ``token`` (an :class:`Eventfd`, or the int fd of an eventfd the
        caller owns, wrapped with ``Eventfd.from_fd``) the eventfd of ``name``.
        The table never closes it; the caller does, after the endpoints using it
        are gone. A name already in the table is refused."""
        if not isinstance(name, str) or not name:
            raise InvalidEndpointError(
                f"token name {show_value(name)} is not a non-empty str; name it as the "
                'configuration does (token = "...")'
            )
        if name in self._eventfds:
            raise TopologyError(
                f"token {name!r} is already in the table; withdraw() it first or use another name"
            )
        if isinstance(token, bool) or not isinstance(token, (Eventfd, int)):
            raise InvalidEndpointError(
                f"token {name!r}: {show_value(token)} is not an irqbypass.Eventfd or an fd; "
                "pass Eventfd.from_fd(fd) or the fd itself"
            )
        eventfd = Eventfd.from_fd(token) if isinstance(token, int) else token
        if eventfd.closed:
            raise InvalidEndpointError(f"token {name!r}: the Eventfd is closed; pass an open one")
        other = self._names.get(eventfd)
        if other is not None:  # the manager would pair the two names' endpoints
            raise TopologyError(
                f"token {name!r}: this eventfd is already the table's token {other!r}; one "
                f"eventfd is one token: name it {other!r} wherever it is used"
            )
        self._eventfds[name] = eventfd
        self._users[name] = 0
        self._provided.add(name)
        self._names[eventfd] = name

    def withdraw(self, name: str) -> Eventfd:
        """Take a provided token back out; refused while an entry uses it."""
        if name not in self._provided:
            raise TopologyError(f"token {name!r} was not provided to this table")
        if self._users[name]:
            raise TopologyError(
                f"token {name!r} is still used by {self._users[name]} endpoint(s); "
                "detach them first"
            )
        self._provided.discard(name)
        del self._users[name]
        eventfd = self._eventfds.pop(name)
        self._names.pop(eventfd, None)
        return eventfd

    @uninterrupted
    def acquire(self, name: str) -> Eventfd:
        """The eventfd of ``name`` (created on first use), with one more user."""
        eventfd = self._eventfds.get(name)
        if eventfd is None:
            eventfd = self._eventfds[name] = Eventfd()
            self._users[name] = 0
        self._users[name] += 1
        return eventfd

    @uninterrupted
    def release(self, name: str) -> None:
        """One user less; a created eventfd with no user left is closed."""
        users = self._users.get(name, 0) - 1
        if users > 0 or name in self._provided:
            self._users[name] = max(0, users)
            return
        self._users.pop(name, None)
        eventfd = self._eventfds.pop(name, None)
        if eventfd is not None:
            eventfd.close()

    def get(self, name: str) -> Eventfd | None:
        """The eventfd of token ``name``, or None (no endpoint uses it, none was provided)."""
        return self._eventfds.get(name)

    def users(self, name: str) -> int:
        """How many endpoints use ``name`` now."""
        return self._users.get(name, 0)

    def is_provided(self, name: str) -> bool:
        """Whether ``name``'s eventfd was provided by the VMM (the table never closes it)."""
        return name in self._provided

    def __contains__(self, name: object) -> bool:
        return name in self._eventfds

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._eventfds))

    def __len__(self) -> int:
        return len(self._eventfds)

    def __repr__(self) -> str:
        return f"<TokenTable {len(self._eventfds)} tokens, {len(self._provided)} provided>"


class CheckTokens(TokenTable):
    """``irqbypass check``: one never-signalled eventfd for every name, so a
    check costs one fd however large the file."""

    @uninterrupted
    def acquire(self, name: str) -> Eventfd:
        one = next(iter(self._eventfds.values()), None)
        if one is None:
            one = Eventfd()
        self._eventfds[name] = one
        self._users[name] = self._users.get(name, 0) + 1
        return one

    @uninterrupted
    def release(self, name: str) -> None:
        users = self._users.get(name, 0) - 1
        if users > 0:
            self._users[name] = users
            return
        self._users.pop(name, None)
        one = self._eventfds.pop(name, None)
        if one is not None and not self._eventfds:
            one.close()
