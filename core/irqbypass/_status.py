"""One pair's figures: fired, delivered, coalesced, queued, lost.

Each count has one definition, here, read by the API (:meth:`Topology.status
<irqbypass.Topology.status>`) and by the CLI alike (run's summary and progress
line, ``status``, ``--json``, metrics): they show a :meth:`PairStatus.snapshot`,
whose counts all come from one reading of each end and of the token's eventfd.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ._endpoints import Consumer
from ._options import show_exception

if TYPE_CHECKING:
    from ._ledger import Placed


@dataclass(frozen=True)
class _Reading:
    """The one read of a row's ends that all its counts come from."""

    producer_stats: dict[str, int]
    consumer_stats: dict[str, int]
    queued: int | None
    coalesces: bool
    live: bool
    problems: tuple[str, ...]


@dataclass(frozen=True)
class PairStatus:
    """One token of a topology: its two ends, whether they pair, and the counts.

    Once its producer is done, ``fired`` adds up to ``delivered + coalesced +
    queued + lost`` (a count that is None counting 0); while it fires, what is
    not delivered yet is in flight and :attr:`lost` is None. Each count reads
    the ends when asked (a row held in a loop sees the figures move); each is
    computed from one reading, and :meth:`snapshot` fixes one reading for a
    whole row, so that a table never contradicts itself.
    """

    token: str
    producer: Placed | None
    consumer: Placed | None
    paired: bool
    #: every producer of the topology had finished when the row was made: a
    #: merging consumer's shortfall is then merged (coalesced), not in flight
    settled: bool = False
    #: the token's eventfd, whose counter is :attr:`queued` (None: not known)
    eventfd: object = field(default=None, repr=False, compare=False)
    _fixed: _Reading | None = field(default=None, init=False, repr=False, compare=False)

    def snapshot(self) -> PairStatus:
        """This row with every count fixed from one reading of each end (the
        consumer's first: a counter read later is never smaller, so
        ``delivered`` never exceeds ``fired``) and of the eventfd."""
        fixed = replace(self)
        object.__setattr__(fixed, "_fixed", self._read())
        return fixed

    def _read(self) -> _Reading:
        if self._fixed is not None:
            return self._fixed
        consumer_stats = self.consumer.stats() if self.consumer is not None else {}
        producer_stats = self.producer.stats() if self.producer is not None else {}
        consumer = self.consumer.endpoint if self.consumer is not None else None
        return _Reading(
            producer_stats=producer_stats,
            consumer_stats=consumer_stats,
            queued=_eventfd_count(self.eventfd),
            coalesces=isinstance(consumer, Consumer) and _coalesces(consumer),
            live=self.producer is not None and not self.producer.finished,
            problems=_problems(self),
        )

    @property
    def producer_stats(self) -> dict[str, int]:
        """The producer's integer stats, counters added up over every open."""
        if self._fixed is None:
            return self.producer.stats() if self.producer is not None else {}
        return self._fixed.producer_stats

    @property
    def consumer_stats(self) -> dict[str, int]:
        """The consumer's integer stats, counters added up over every open."""
        if self._fixed is None:
            return self.consumer.stats() if self.consumer is not None else {}
        return self._fixed.consumer_stats

    @property
    def fired(self) -> int | None:
        """Interrupts the producer signalled (its ``fired`` stat), or None."""
        return _int(self.producer_stats.get("fired"))

    @property
    def delivered(self) -> int | None:
        """Interrupts the consumer took and passed on (its ``delivered`` stat), or None."""
        return _int(self.consumer_stats.get("delivered"))

    @property
    def queued(self) -> int | None:
        """What the token's eventfd still holds: signalled, taken by no one yet
        (None where the kernel does not show it)."""
        return self._fixed.queued if self._fixed is not None else _eventfd_count(self.eventfd)

    @property
    def coalesces(self) -> bool:
        """The consumer merges signals (an interrupt controller's edge or pending bit)."""
        return self._read().coalesces

    @property
    def live(self) -> bool:
        """This pair's producer still fires: its shortfall is in flight, not lost."""
        return self._read().live

    @property
    def problems(self) -> tuple[str, ...]:
        """What each end gave up on (``Endpoint.problem``), as ``"side name: problem"``."""
        return self._read().problems

    @property
    def shortfall(self) -> int | None:
        """``fired - delivered`` (never negative): coalesced, queued or lost."""
        return _shortfall(self._read())

    @property
    def coalesced(self) -> int | None:
        """Signals the consumer took but merged: its own ``coalesced`` count, or,
        for a consumer that merges, the settled shortfall the eventfd no longer
        holds (the kernel took each signal; the guest saw fewer edges)."""
        return _coalesced(self._read(), self.settled)

    @property
    def lost(self) -> int | None:
        """What no one can account for: neither delivered, coalesced nor queued.
        None while the producer still fires (what fired between the two reads
        is in flight) or when either count is unknown."""
        return _lost(self._read(), self.settled)

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON (``irqbypass run --json``'s ``pairs``), from one reading."""
        row = self if self._fixed is not None else self.snapshot()
        return {
            "token": row.token,
            "producer": None if row.producer is None else row.producer.config.name,
            "producer_kind": None if row.producer is None else row.producer.config.kind,
            "consumer": None if row.consumer is None else row.consumer.config.name,
            "consumer_kind": None if row.consumer is None else row.consumer.config.kind,
            "paired": row.paired,
            "fired": row.fired,
            "delivered": row.delivered,
            "coalesced": row.coalesced,
            "queued": row.queued,
            "lost": row.lost,
            "producer_stats": row.producer_stats,
            "consumer_stats": row.consumer_stats,
            "problems": list(row.problems),
        }


def _shortfall(reading: _Reading) -> int | None:
    fired = _int(reading.producer_stats.get("fired"))
    delivered = _int(reading.consumer_stats.get("delivered"))
    if fired is None or delivered is None:
        return None
    return max(0, fired - delivered)


def _coalesced(reading: _Reading, settled: bool) -> int | None:
    reported = _int(reading.consumer_stats.get("coalesced"))
    if reported is not None:
        return reported
    shortfall = _shortfall(reading)
    if shortfall is None or not reading.coalesces:
        return None
    return shortfall - (reading.queued or 0) if settled else 0


def _lost(reading: _Reading, settled: bool) -> int | None:
    shortfall = _shortfall(reading)
    if shortfall is None or reading.live:
        return None
    return max(0, shortfall - (_coalesced(reading, settled) or 0) - (reading.queued or 0))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _coalesces(consumer: Consumer) -> bool:
    """The consumer's ``coalesces``; a broken one counts as not merging."""
    try:
        return bool(getattr(consumer, "coalesces", False))
    except Exception:
        return False


def _problems(status: PairStatus) -> tuple[str, ...]:
    """Each end's ``problem``, by name; a broken property is a problem itself."""
    found = []
    for placed in (status.producer, status.consumer):
        if placed is None:
            continue
        try:
            problem = placed.endpoint.problem
        except Exception as exc:
            problem = (
                f"its problem property raised {show_exception(exc)}; "
                f"this is a bug in plugin {placed.plugin or '?'}"
            )
        if isinstance(problem, str) and problem:
            found.append(f"{placed.config.side} {placed.config.name}: {problem}")
    return tuple(found)


def _eventfd_count(token: object) -> int | None:
    """The counter of the token's eventfd (fdinfo ``eventfd-count``, hex), read
    without taking it; None where the kernel does not show it."""
    if token is None:
        return None
    try:
        fd = token.fileno()  # type: ignore[attr-defined]
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key == "eventfd-count":
                    return int(value.strip(), 16)
    except (AttributeError, OSError, ValueError):
        return None
    return None
