"""A running topology's figures, one row per token read once, and the
tables and progress line that show them."""

from __future__ import annotations

from typing import Any, TextIO

from .._status import PairStatus
from .._topology import Topology
from .output import counted, lists_every, number, print_table, say


def snapshot(topology: Topology, settled: bool = True) -> list[PairStatus]:
    """Every token's row, each read once (:meth:`~irqbypass.reports.PairStatus.snapshot`:
    the counts are defined there, for the API and the CLI alike). ``settled``: a
    final reading, once every producer is done; False while the run goes on."""
    # asked once, not per row: it asks every producer (per row it was O(N^2))
    return [row.snapshot() for row in topology.status(settled=None if settled else False)]


def reasons(left_out: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The JSON form of ``Topology.skipped`` or ``vetoed``: a token and why, each."""
    return [{"token": token, "reason": reason} for token, reason in left_out]


def progress_line(rows: list[PairStatus], elapsed: float, finished: int, producers: int) -> str:
    """Totals over every pair (however many), then the first pairs' own figures.
    A merging consumer's shortfall is not counted as lost before the reading is
    settled: it is coalesced or lost only once the counts stop (the summary)."""
    fired = sum(r.fired or 0 for r in rows)
    delivered = sum(r.delivered or 0 for r in rows)
    lost = sum(r.lost or 0 for r in rows if r.settled or not r.coalesces)
    parts = [f"{r.token} {number(r.delivered)}/{number(r.fired)}" for r in rows[:8]]
    return (
        f"[{elapsed:5.1f}s] fired {fired} delivered {delivered} lost {lost}, "
        f"{finished}/{producers} pairs finished; delivered/fired: " + " | ".join(parts)
    )


def print_pairs(
    topology: Topology, status: list[PairStatus], out: TextIO, every: bool | None = True
) -> None:
    """The applied table of ``topology``'s ``status`` (read with no count):
    every pair, or (``every`` false) its totals and the pairs not as the file
    asked (vetoed, one-ended, skipped); None: every pair of a table of at most
    TABLE_ROWS."""
    rows: list[tuple[tuple[str, ...], bool]] = []
    vetoed = dict(topology.vetoed)
    paired = 0
    for row in status:
        paired += row.paired
        state = "paired (bypass)" if row.paired else "unpaired (eventfd only)"
        if row.token in vetoed:
            state = f"unpaired (eventfd only): vetoed: {vetoed[row.token]}"
        # unpaired with both ends and no veto: bypass = false on one, as asked
        problem = row.token in vetoed or row.producer is None or row.consumer is None
        producer, consumer = (
            "-" if end is None else f"{end.config.name} ({end.config.kind})"
            for end in (row.producer, row.consumer)
        )
        rows.append(((row.token, producer, consumer, state), problem))
    for token, reason in topology.skipped:
        rows.append(((token, "-", "-", f"skipped: {reason}"), True))
    every = lists_every(every, len(rows))
    if every:
        say(f"{topology.config.file}: applied", out)
    else:
        skipped = len(topology.skipped)
        say(
            f"{topology.config.file}: applied {counted(len(rows), 'token')}: {paired} paired, "
            f"{len(rows) - paired - skipped} unpaired, {skipped} skipped",
            out,
        )
    print_table(("TOKEN", "PRODUCER", "CONSUMER", "STATE"), rows, out, every)


_SUMMARY_COLUMNS = (
    *("TOKEN", "PRODUCER", "CONSUMER", "FIRED", "DELIVERED"),
    *("COALESCED", "QUEUED", "LOST", "DETAILS"),
)


def print_summary(
    summary: list[dict[str, Any]],
    out: TextIO,
    title: str = "summary:",
    every: bool | None = True,
) -> None:
    """The summary table: every pair, or (``every`` false) the totals and the
    pairs with a problem (lost interrupts, an end's problem, one end only);
    None: every pair of a table of at most TABLE_ROWS."""
    if not summary:
        say("summary: nothing ran (no pair was applied)", out)
        return
    every = lists_every(every, len(summary))
    if not every:
        title = f"{title.removesuffix(':') or 'summary'}: {_totals(summary)}"
    if title:
        say(title, out)
    rows = []
    for row in summary:
        details = {
            k: v
            for k, v in {**row["producer_stats"], **row["consumer_stats"]}.items()
            if k not in ("fired", "delivered", "coalesced")
        }
        cells = (
            row["token"],
            row["producer"] or "-",
            row["consumer"] or "-",
            number(row["fired"]),
            number(row["delivered"]),
            number(row["coalesced"]),
            number(row["queued"]),
            number(row["lost"]),
            " ".join(f"{k}={v}" for k, v in details.items()),
        )
        problem = bool(row["problems"] or row["lost"] or not (row["producer"] and row["consumer"]))
        rows.append((cells, problem))
    print_table(_SUMMARY_COLUMNS, rows, out, every)
    problems = [p for row in summary for p in row["problems"]]
    if problems:
        say("problems:", out)
        for problem in problems:
            say(f"  {problem}", out)


def _totals(summary: list[dict[str, Any]]) -> str:
    """``200 pairs: fired 4000, delivered 3990, ...``: each count summed over
    the pairs that report it (``-`` where none does)."""
    parts = []
    for key in ("fired", "delivered", "coalesced", "queued", "lost"):
        known = [row[key] for row in summary if row[key] is not None]
        parts.append(f"{key} {sum(known) if known else '-'}")
    return f"{counted(len(summary), 'pair')}: " + ", ".join(parts)
