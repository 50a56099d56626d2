"""A running topology's figures, one row per token read once, and the
tables and progress line that show them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TextIO

from ..endpoints import Consumer
from ..options import show_exception
from ..topology import PairStatus, Topology
from .output import _num, _print_table, _say


@dataclass(frozen=True)
class _Row:
    """One token's figures, all from one read of each end's ``stats()`` (the
    consumer's first: a counter read later is never smaller, so ``delivered``
    never exceeds ``fired``), so a row never contradicts itself."""

    status: PairStatus
    producer_stats: dict[str, int] = field(default_factory=dict)
    consumer_stats: dict[str, int] = field(default_factory=dict)
    #: what the token's eventfd still holds: signalled, not yet taken by anyone
    queued: int | None = None
    #: the consumer merges signals (an interrupt controller's edge or pending bit)
    coalesces: bool = False
    #: every producer finished and the row stopped changing
    settled: bool = False
    #: this row's producer still fires: its shortfall is in flight, not lost
    live: bool = False
    #: what each end gave up on (``Endpoint.problem``: a loop callback raised, ...)
    problems: tuple[str, ...] = ()

    @property
    def fired(self) -> int | None:
        return _int(self.producer_stats.get("fired"))

    @property
    def delivered(self) -> int | None:
        return _int(self.consumer_stats.get("delivered"))

    @property
    def shortfall(self) -> int | None:
        if self.fired is None or self.delivered is None:
            return None
        return max(0, self.fired - self.delivered)

    @property
    def coalesced(self) -> int | None:
        """Signals the consumer took but merged: its own ``coalesced`` count, or,
        for a consumer that merges, the settled shortfall the eventfd no longer
        holds (the kernel took each signal; the guest saw fewer edges)."""
        reported = _int(self.consumer_stats.get("coalesced"))
        if reported is not None:
            return reported
        if self.shortfall is None or not self.coalesces:
            return None
        return self.shortfall - (self.queued or 0) if self.settled else 0

    @property
    def lost(self) -> int | None:
        """What no one can account for: neither delivered, merged, nor queued.
        Unknown (None) while the producer still fires: the consumer's count is
        read before the producer's, so what fired in between is in flight."""
        if self.shortfall is None or self.live:
            return None
        return max(0, self.shortfall - (self.coalesced or 0) - (self.queued or 0))

    def as_dict(self) -> dict[str, Any]:
        row = self.status
        return {
            "token": row.token,
            "producer": None if row.producer is None else row.producer.config.name,
            "producer_kind": None if row.producer is None else row.producer.config.kind,
            "consumer": None if row.consumer is None else row.consumer.config.name,
            "consumer_kind": None if row.consumer is None else row.consumer.config.kind,
            "paired": row.paired,
            "fired": self.fired,
            "delivered": self.delivered,
            "coalesced": self.coalesced,
            "queued": self.queued,
            "lost": self.lost,
            "producer_stats": self.producer_stats,
            "consumer_stats": self.consumer_stats,
            "problems": list(self.problems),
        }


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snapshot(topology: Topology, settled: bool = True) -> list[_Row]:
    rows = []
    # once, not per row: it asks every producer (per row it was O(N^2))
    settled = settled and topology.finished
    for status in topology.status():
        consumer = status.consumer.endpoint if status.consumer else None
        # counted over every open of the entry (a reload that changed it re-opens it)
        consumer_stats = status.consumer.stats() if status.consumer is not None else {}
        producer_stats = status.producer.stats() if status.producer is not None else {}
        token = topology.tokens.get(status.token)
        rows.append(
            _Row(
                status,
                producer_stats,
                consumer_stats,
                queued=_eventfd_count(token),
                coalesces=isinstance(consumer, Consumer) and _coalesces(consumer),
                settled=settled,
                live=status.producer is not None and not status.producer.finished,
                problems=_problems(status),
            )
        )
    return rows


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


def _progress_line(rows: list[_Row], elapsed: float, finished: int, producers: int) -> str:
    """Totals over every pair (however many), then the first pairs' own figures."""
    fired = sum(r.fired or 0 for r in rows)
    delivered = sum(r.delivered or 0 for r in rows)
    lost = sum(r.lost or 0 for r in rows)
    parts = [f"{r.status.token} {_num(r.delivered)}/{_num(r.fired)}" for r in rows[:8]]
    return (
        f"[{elapsed:5.1f}s] fired {fired} delivered {delivered} lost {lost}, "
        f"{finished}/{producers} pairs finished; delivered/fired: " + " | ".join(parts)
    )


def _print_pairs(topology: Topology, out: TextIO) -> None:
    _say(f"{topology.config.file}: applied", out)
    table = [("TOKEN", "PRODUCER", "CONSUMER", "STATE")]
    vetoed = dict(topology.vetoed)
    for row in topology.status():
        state = "paired (bypass)" if row.paired else "unpaired (eventfd only)"
        if row.token in vetoed:
            state = f"unpaired (eventfd only): vetoed: {vetoed[row.token]}"
        table.append((row.token, _ends(row.producer), _ends(row.consumer), state))
    for token, reason in topology.skipped:
        table.append((token, "-", "-", f"skipped: {reason}"))
    _print_table(table, out)


def _ends(placed: Any) -> str:
    return "-" if placed is None else f"{placed.config.name} ({placed.config.kind})"


_SUMMARY_COLUMNS = (
    *("TOKEN", "PRODUCER", "CONSUMER", "FIRED", "DELIVERED"),
    *("COALESCED", "QUEUED", "LOST", "DETAILS"),
)


def _print_summary(summary: list[dict[str, Any]], out: TextIO, title: str = "summary:") -> None:
    if not summary:
        _say("summary: nothing ran (no pair was applied)", out)
        return
    if title:
        _say(title, out)
    table = [_SUMMARY_COLUMNS]
    for row in summary:
        details = {
            k: v
            for k, v in {**row["producer_stats"], **row["consumer_stats"]}.items()
            if k not in ("fired", "delivered", "coalesced")
        }
        table.append(
            (
                row["token"],
                row["producer"] or "-",
                row["consumer"] or "-",
                _num(row["fired"]),
                _num(row["delivered"]),
                _num(row["coalesced"]),
                _num(row["queued"]),
                _num(row["lost"]),
                " ".join(f"{k}={v}" for k, v in details.items()),
            )
        )
    _print_table(table, out)
    problems = [p for row in summary for p in row["problems"]]
    if problems:
        _say("problems:", out)
        for problem in problems:
            _say(f"  {problem}", out)
