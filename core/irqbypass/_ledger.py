"""The ledger of a topology: the one index of what runs, and its invariants.

What a topology runs is recorded here and nowhere else: its entries (the
configuration), the endpoint placed for each (by name, and by token and side),
the tokens they hold from the token table, the pairs left out (``skipped``) or
left unpaired by a veto, and what removed entries counted (for a device
plugged in again under the same name). Only the ledger's own methods change
its indexes (``seed``, ``insert``, ``release``, ``adopt``, ``forget``,
``lose``, ``clear``; those that run while a change is under way
are signal-safe sections, all of it or nothing), and :meth:`Ledger.violations`
says which invariant does not hold, if any (the tests ask it after every
change). The ledger calls no plugin: the stats of :meth:`Ledger.status` are
read when a row's figures are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import _plan
from ._config import Config, EndpointConfig
from ._endpoints import Endpoint, Producer
from ._eventfd import Eventfd
from ._options import show_exception
from ._signals import signal_safe
from ._status import PairStatus
from ._tokens import TokenTable

#: The counters the core adds up across re-opens; every other stat is a
#: per-open figure (or a gauge, such as ``pending``) and is shown as it is.
COUNTERS = ("fired", "delivered", "coalesced", "reads", "direct", "eventfd")
_COUNTED = frozenset(COUNTERS)
#: How many removed entries' totals are kept, for a device plugged in again
#: under the same name (the oldest are forgotten first): bounded.
RETIRED_KEPT = 4096


@dataclass(slots=True)
class Totals:
    """What an entry's endpoints counted over every open, this one excepted."""

    opens: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def retire(self, stats: Mapping[str, object]) -> None:
        """Add what an endpoint that closed counted (its counters: ``fired``,
        ``delivered``, ``coalesced``, ``reads``, ``direct``, ``eventfd``)."""
        counters = self.counters
        for key, value in stats.items():  # a stats dict has 2-4 keys: fewer than COUNTERS
            if key in _COUNTED and (
                type(value) is int or (isinstance(value, int) and not isinstance(value, bool))
            ):
                counters[key] = counters.get(key, 0) + value


@dataclass(slots=True)
class Placed:
    """One endpoint of the topology and how far it got.

    Slotted (as :class:`Totals` is): no ``__dict__`` of its own, so an undo
    touches fewer cache lines per endpoint (1.2 us of a pair's teardown, 0.9
    of its apply, at 10,000 pairs)."""

    #: the entry of the configuration this endpoint was built from
    config: EndpointConfig
    #: the endpoint its kind's factory built
    endpoint: Endpoint
    #: its ``open()`` succeeded and no ``close()`` ran since
    opened: bool = False
    #: it is registered with the topology's manager
    registered: bool = False
    #: the counts of this entry's earlier endpoints (re-opened, re-plugged)
    history: Totals = field(default_factory=Totals)
    #: the eventfd of its token, held from the token table until released
    token: Eventfd | None = None
    # internal: its token was given back to the token table (never twice)
    released: bool = False
    # internal: the order it was placed in, undone in the reverse order
    serial: int = 0
    #: the plugin whose kind built the endpoint
    plugin: str = ""
    #: what the plugin's ``stats()`` or ``finished`` raised, by call (the first
    #: time only): the run goes on and reports it once, instead of crashing
    faults: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``side 'name' (kind K)``: how messages name this endpoint."""
        return _plan.LABEL.format(self.config)

    def stats(self) -> dict[str, int]:
        """The endpoint's stats, its counters (:data:`COUNTERS`) added up over
        every open of this entry; ``endpoint.stats()`` has this open's alone.
        A ``stats()`` that raises or returns no mapping counts ``{}`` (the
        fault is recorded in :attr:`faults`)."""
        try:
            current = {k: v for k, v in self.endpoint.stats().items() if isinstance(v, int)}
        except Exception as exc:
            self._fault("stats()", exc)
            return {}
        for key, earlier in self.history.counters.items():
            current[key] = current.get(key, 0) + earlier
        return current

    @property
    def finished(self) -> bool:
        """The endpoint's ``finished``; False when it raises (recorded in
        :attr:`faults`): a run then lasts its duration."""
        try:
            return bool(self.endpoint.finished)
        except Exception as exc:
            self._fault("finished", exc)
            return False

    def _fault(self, call: str, exc: Exception) -> None:
        if call not in self.faults:
            self.faults[call] = (
                f"{self.label}: its {call} raised {show_exception(exc)}; "
                f"this is a bug in plugin {self.plugin or '?'}"
            )

    @property
    def opens(self) -> int:
        """How many times this entry was opened (re-plugs and changes count)."""
        return self.history.opens + (1 if self.opened else 0)


@dataclass(slots=True, eq=False)
class Ledger:
    """What a topology runs: its entries, its endpoints and their tokens.

    ``by_name`` is the index (entry name -> endpoint, in the order placed);
    ``_ends`` holds the same endpoints by token and side (a pair, for
    ``status()`` and the plans), in the order tokens were first used;
    ``entries`` is the configuration that runs, skipped entries included.
    ``tokens`` is read off ``_ends``, never kept beside it.
    """

    #: where tokens are held from (released when an endpoint is forgotten)
    token_table: TokenTable
    #: entry name -> entry, every running entry (skipped ones included), in order
    entries: dict[str, EndpointConfig] = field(default_factory=dict, init=False)
    #: (token, reason) of every optional pair left out
    skipped: list[tuple[str, str]] = field(default_factory=list, init=False)
    #: the file the entries are exactly (built, or reloaded, and no attach,
    #: detach or change since): a reload may compare them group by group
    file: Config | None = field(default=None, init=False)
    #: entry name -> its endpoint, in the order placed (undone in reverse); read
    #: it freely, change it only through the ledger's methods
    by_name: dict[str, Placed] = field(default_factory=dict, init=False)
    _ends: dict[str, dict[str, Placed]] = field(default_factory=dict, init=False)
    #: token -> reason, for each pair a plugin's Veto(unpaired=True) left unpaired
    vetoed: dict[str, str] = field(default_factory=dict, init=False)
    #: (side, name) -> what the earlier endpoints of a removed entry counted,
    #: oldest first; an OrderedDict: its oldest goes in O(1), where a dict's
    #: first key is found past every slot deleted before it (5 us a removal
    #: at 10,000 pairs)
    _retired: OrderedDict[tuple[str, str], Totals] = field(default_factory=OrderedDict, init=False)
    _serial: int = field(default=0, init=False)

    # -- reading -------------------------------------------------------------

    def ends(self, token: str) -> Sequence[EndpointConfig]:
        """The entries placed on ``token`` (what a plan reads)."""
        return [placed.config for placed in self._ends.get(token, {}).values()]

    @property
    def tokens(self) -> dict[str, Eventfd]:
        """Token name -> eventfd, for the tokens the endpoints use."""
        tokens = {}
        for name, ends in self._ends.items():
            for placed in ends.values():
                if placed.token is not None:
                    tokens[name] = placed.token
                    break
        return tokens

    @property
    def applied(self) -> bool:
        """Some endpoint is open."""
        return any(placed.opened for placed in self.by_name.values())

    def status(self, settled: bool) -> list[PairStatus]:
        """One row per token, in the order tokens were first used."""
        rows = []
        for token, ends in self._ends.items():
            producer, consumer = ends.get("producer"), ends.get("consumer")
            paired = (
                producer is not None
                and consumer is not None
                and isinstance(producer.endpoint, Producer)
                and producer.endpoint.consumer is consumer.endpoint
            )
            either = producer if producer is not None else consumer
            eventfd = either.token if either is not None else None
            rows.append(PairStatus(token, producer, consumer, paired, settled, eventfd))
        return rows

    # -- changing ------------------------------------------------------------

    def seed(self, file: Config, skipped: Mapping[str, str]) -> None:
        """Before ``file``'s endpoints are inserted: its entries are the
        running ones, its pairs left out are ``skipped`` (token -> reason), and
        its other tokens are listed in the file's order of first use, which
        ``status()`` keeps (its endpoints are inserted consumers first)."""
        self.entries = dict(file.by_name)
        self.file = file
        self.skipped = sorted(skipped.items())
        for token in file.token_names():
            if token not in skipped:
                self._ends[token] = {}

    def veto(self, token: str, reason: str) -> None:
        """Record that a plugin's veto left the pair of ``token`` unpaired."""
        self.vetoed[token] = reason

    @signal_safe
    def insert(self, built: Iterable[Placed]) -> None:
        """Make built endpoints part of the topology (its indexes), in this
        order (undone in the reverse); all of them or none."""
        retired, by_name, by_token = self._retired, self.by_name, self._ends
        for placed in built:
            entry = placed.config
            earlier = retired.pop((entry.side, entry.name), None)
            if earlier is not None:  # the same name plugged again: its counts carry on
                placed.history.opens += earlier.opens
                for key, value in earlier.counters.items():
                    placed.history.counters[key] = placed.history.counters.get(key, 0) + value
            self._serial += 1
            placed.serial = self._serial
            by_name[entry.name] = placed
            by_token.setdefault(entry.token, {})[entry.side] = placed

    @signal_safe
    def release(self, built: Iterable[Placed]) -> None:
        """Forget endpoints that are closed (or never opened): out of the
        indexes, their tokens released, their counts kept for a re-plug."""
        by_name, by_token, vetoed, table = self.by_name, self._ends, self.vetoed, self.token_table
        for placed in built:
            entry = placed.config
            token = entry.token
            if by_name.get(entry.name) is placed:
                del by_name[entry.name]
                if vetoed:
                    vetoed.pop(token, None)  # a pair again, or no pair at all
                ends = by_token.get(token)
                if ends is not None:
                    if ends.get(entry.side) is placed:
                        del ends[entry.side]
                    if not ends:
                        del by_token[token]
            if not placed.released:
                placed.released = True  # never twice
                table.release(token)
                self._retire(entry, placed.history)

    def waiting(self, leaving: Iterable[Placed]) -> list[Placed]:
        """The ends a veto left open and unregistered whose partner is in
        ``leaving`` (closed by now): the pair is gone, so they register again,
        as applying the file afresh would."""
        found = []
        for placed in leaving:
            token = placed.config.token
            if token in self.vetoed:
                for other in self._ends.get(token, {}).values():
                    if other.opened and other.config.bypass and not other.registered:
                        found.append(other)
        return found

    def _retire(self, entry: EndpointConfig, history: Totals) -> None:
        if not history.opens and not history.counters:
            return
        key = (entry.side, entry.name)
        retired = self._retired
        retired.pop(key, None)
        retired[key] = history
        while len(retired) > RETIRED_KEPT:
            retired.popitem(last=False)

    @signal_safe
    def adopt(
        self,
        updates: Mapping[str, EndpointConfig | None],
        skipped: list[tuple[str, str]] | None,
        file: Config | None,
    ) -> None:
        """Make the changed entries the running ones, in place, and ``file``
        (if any) the file they are (signal-safe: all of it)."""
        entries = self.entries
        for name, entry in updates.items():
            if entry is None:
                entries.pop(name, None)
                continue
            entries[name] = entry
            placed = self.by_name.get(name)
            if placed is not None:  # moved in the file: its messages follow it
                placed.config = entry
        if file is not None:
            self.file = file
        elif updates:
            self.file = None
        if skipped is not None:
            self.skipped = skipped

    @signal_safe
    def forget(self, names: Iterable[str]) -> None:
        """Forget the entries ``names`` (detached: their endpoints released);
        a skipped token none of the rest is on is skipped no more."""
        self.file = None
        for name in names:
            entry = self.entries.pop(name)
            if any(t == entry.token for t, _ in self.skipped) and not any(
                e.token == entry.token for e in self.entries.values()
            ):
                self.skipped = [(t, r) for t, r in self.skipped if t != entry.token]

    def unseed(self) -> None:
        """Undo :meth:`seed` (a build that failed): no entry runs, and the
        tokens seeded and never used are dropped."""
        self.entries = {}
        self.file = None
        self._ends = {token: ends for token, ends in self._ends.items() if ends}

    def lose(self, entries: Iterable[EndpointConfig]) -> None:
        """Forget entries whose endpoints could not be restored."""
        for entry in entries:
            self.entries.pop(entry.name, None)
        self.file = None

    def clear(self) -> None:
        """Forget every entry (torn down: every endpoint released)."""
        self._ends.clear()
        self.entries.clear()
        self.file = None

    # -- checking ------------------------------------------------------------

    def violations(self) -> list[str]:
        """Every invariant of the indexes that does not hold (none, unless the
        topology has a bug): what the tests ask after each change. O(N)."""
        found: list[str] = []
        found += self._placed_violations()
        found += self._ends_violations()
        found += self._entries_violations()
        return found

    def _placed_violations(self) -> list[str]:
        found = []
        serial = 0
        for name, placed in self.by_name.items():
            entry = placed.config
            if entry.name != name:
                found.append(f"{placed.label} is placed under the name {name!r}")
            if placed.serial <= serial:
                found.append(f"{placed.label} is out of the order placed")
            serial = placed.serial
            if placed.released or placed.token is None:
                found.append(f"{placed.label} holds no token (released: {placed.released})")
            if placed.registered and not placed.opened:
                found.append(f"{placed.label} is registered but not open")
            if self.entries.get(name) is not entry:
                found.append(f"{placed.label} is not the running entry {name!r}")
            if (entry.side, name) in self._retired:
                found.append(f"{placed.label} is placed and retired at once")
        if len(self._retired) > RETIRED_KEPT:
            found.append(f"{len(self._retired)} retired totals kept, over {RETIRED_KEPT}")
        return found

    def _ends_violations(self) -> list[str]:
        found = []
        count = 0
        for token, ends in self._ends.items():
            if not ends:
                found.append(f"token {token!r} is listed with no endpoint")
            for side, placed in ends.items():
                count += 1
                if (placed.config.token, placed.config.side) != (token, side):
                    found.append(f"{placed.label} is listed as the {side} of token {token!r}")
                if self.by_name.get(placed.config.name) is not placed:
                    found.append(f"{placed.label} is on token {token!r} but not placed")
            if len({id(p.token) for p in ends.values()}) > 1:
                found.append(f"the ends of token {token!r} hold different eventfds")
            if token in self.token_table and self.token_table.users(token) < len(ends):
                found.append(f"token {token!r} has fewer users than ends")
        if count != len(self.by_name):
            found.append(f"{len(self.by_name)} endpoints placed, {count} listed by token")
        found += [
            f"token {t!r} is vetoed with no endpoint" for t in self.vetoed if t not in self._ends
        ]
        return found

    def _entries_violations(self) -> list[str]:
        found = []
        tokens = {entry.token for entry in self.entries.values()}
        for token, _reason in self.skipped:
            if token in self._ends:
                found.append(f"token {token!r} is skipped but has endpoints")
            if token not in tokens and self.entries:  # torn down: kept for the report
                found.append(f"token {token!r} is skipped but no entry is on it")
        if self.file is not None:
            ours = {name: entry.fingerprint for name, entry in self.entries.items()}
            theirs = {name: entry.fingerprint for name, entry in self.file.by_name.items()}
            if ours != theirs:
                found.append(f"the entries are said to be {self.file.file}'s, and are not")
        return found
