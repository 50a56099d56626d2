"""A running topology's figures, one row per token read once, and the
tables and progress line that show them."""

from __future__ import annotations

from typing import Any, TextIO

from ..status import PairStatus
from ..topology import Topology
from .output import _num, _print_table, _say


def _snapshot(topology: Topology, settled: bool = True) -> list[PairStatus]:
    """Every token's row, each read once (:meth:`~irqbypass.PairStatus.snapshot`:
    the counts are defined there, for the API and the CLI alike). ``settled``: a
    final reading, once every producer is done; False while the run goes on."""
    # asked once, not per row: it asks every producer (per row it was O(N^2))
    return [row.snapshot() for row in topology.status(settled=None if settled else False)]


def _progress_line(rows: list[PairStatus], elapsed: float, finished: int, producers: int) -> str:
    """Totals over every pair (however many), then the first pairs' own figures."""
    fired = sum(r.fired or 0 for r in rows)
    delivered = sum(r.delivered or 0 for r in rows)
    lost = sum(r.lost or 0 for r in rows)
    parts = [f"{r.token} {_num(r.delivered)}/{_num(r.fired)}" for r in rows[:8]]
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
