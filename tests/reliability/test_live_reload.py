"""200 running mock -> logging pairs while 50 reloads add, remove and change
other pairs (issue 18's proof): the running pairs lose no interrupt and see no
callback, the changed ones count exactly from their new start.

No wall-clock limit: each wait is for a condition, with a generous hang guard.
(A kvm-irqfd pair into the plugin's guest is not part of it: /dev/kvm is
needed, and the kvm suite covers that consumer.)
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Generator
from typing import Any

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._config import parse_config
from irqbypass._topology import Topology
from rel_support import COUNTERS

pytestmark = pytest.mark.usefixtures("no_fd_leak")

STEADY = 200
RELOADS = 50
HANG_GUARD = 300.0  # seconds: only a hang reaches it


class Callbacks:
    """A plugin counting every stop and start the manager makes, by endpoint."""

    def __init__(self) -> None:
        self.count: collections.Counter[tuple[str, str]] = collections.Counter()

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.count[(endpoint.name, "stop")] += 1
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.count[(endpoint.name, "start")] += 1
        return (yield)


def entry(name: str, token: str, options: str) -> str:
    return (
        f'[[producers]]\nname = "{name}-p"\nkind = "mock"\ntoken = "{token}"\n'
        f"options = {{ {options} }}\n"
        f'[[consumers]]\nname = "{name}-c"\nkind = "logging"\ntoken = "{token}"\n'
    )


def steady() -> str:
    return "".join(entry(f"s{i}", f"s{i}", "rate = 10.0, count = -1") for i in range(STEADY))


def reload_text(n: int) -> str:
    """Reload ``n``: the steady pairs, a changed pair whose count is n's, and
    the pairs added at n and n - 1 (the one added at n - 2 is removed)."""
    changing = entry("chg", "chg", f"rate = 0.0, count = {100 + n}")
    added = "".join(entry(f"add{k}", f"add{k}", "rate = 0.0, count = 50") for k in (n - 1, n))
    return steady() + changing + added


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, f"hang guard: {what} never happened"
        time.sleep(0.01)


def counts(topology: Topology, name: str) -> tuple[int, int]:
    """(fired, delivered) of pair ``name``, over every open."""
    producer, consumer = topology.entry(f"{name}-p"), topology.entry(f"{name}-c")
    assert producer is not None and consumer is not None
    return producer.stats()["fired"], consumer.stats()["delivered"]


def test_fifty_reloads_leave_two_hundred_running_pairs_alone() -> None:
    calls = Callbacks()
    host = irqbypass.load_plugins(allow=["irqbypass-mock", "irqbypass-logging"])
    host.register(calls, name="callbacks")
    topology = Topology(parse_config(reload_text(0), file="live.toml"), host)
    topology.apply()
    kept: dict[str, Any] = {}
    try:
        steady_names = [f"s{i}" for i in range(STEADY)]
        for name in steady_names:
            for side in "pc":
                assert calls.count[(f"{name}-{side}", "stop")] == 1  # its one connect
        wait_for(
            "every steady pair firing",
            lambda: all(counts(topology, n)[0] > 0 for n in steady_names),
        )
        first = topology.entry("chg-p")
        assert first is not None
        wait_for("the first changed producer's 100", lambda: first.endpoint.finished)
        for n in range(1, RELOADS + 1):
            changes = topology.reconcile(parse_config(reload_text(n), file="live.toml"))
            assert changes.changed == ("chg-p",) and changes.why["chg-p"] == ("options",)
            assert changes.added == (f"add{n}-p", f"add{n}-c")
            assert changes.removed == (f"add{n - 2}-p", f"add{n - 2}-c") or n == 1
            assert topology._ledger.violations() == []
            producer = topology.entry("chg-p")
            assert producer is not None
            finished = producer.endpoint
            # the changed pair counts exactly from its new start: all 100 + n, no more
            wait_for(
                f"reload {n}: the changed producer's {100 + n} interrupts delivered",
                lambda: (
                    finished.finished  # noqa: B023 (called before the loop moves on)
                    and counts(topology, "chg")[1] == counts(topology, "chg")[0]
                ),
            )
            assert producer.endpoint.stats()["fired"] == 100 + n
            assert producer.opens == n + 1
        expected_changed = sum(100 + n for n in range(RELOADS + 1))
        assert counts(topology, "chg") == (expected_changed, expected_changed)
        for name in steady_names:  # none of them was stopped or started again
            for side in "pc":
                assert calls.count[(f"{name}-{side}", "stop")] == 1
                assert calls.count[(f"{name}-{side}", "start")] == 1
        kept = {p.config.name: p.endpoint for p in topology.placed}
    finally:
        topology.teardown()
    # closed producers first, then the consumers took what was left: every
    # interrupt a steady producer fired was delivered
    fired = delivered = 0
    for name in steady_names:
        f, d = kept[f"{name}-p"].stats()["fired"], kept[f"{name}-c"].stats()["delivered"]
        assert f == d, f"{name}: fired {f}, delivered {d}"
        fired, delivered = fired + f, delivered + d
    COUNTERS["live reload: steady interrupts delivered"] += delivered
    COUNTERS["live reload: reloads"] += RELOADS
