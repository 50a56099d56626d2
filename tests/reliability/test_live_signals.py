"""A Ctrl-C at every moment of attach, detach, reconcile and change (issue 18).

The signal is swept over every bytecode the operation runs in the topology, the
token table and the manager (``interrupts.sweep``). After each run the topology
is either as it was or as the operation makes it, never in between: the placed
entries, the manager's pairs and the token table's users agree, no eventfd is
left open, and the pair the operation does not name saw no callback at all.

Each run's endpoints are kept alive until its check: a signal tripped just
before the last reference to an endpoint goes would otherwise be handled in
``Eventfd.__del__`` (a function start is where CPython runs handlers), which
CPython reports as unraisable and drops; that is the garbage collector's
window, not the topology's.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import interrupts
import irqbypass
import irqbypass._manager
import irqbypass._signals
import irqbypass._tokens
import irqbypass._topology
import pytest
from irqbypass import _build, _ledger, _plan, _transaction
from irqbypass._config import parse_config
from irqbypass._topology import Topology
from rel_support import COUNTERS
from test_topology_live import Recorder, pair, pairs

pytestmark = pytest.mark.usefixtures("no_fd_leak")

#: a sweep of every point (stride 1) passed too; make test takes every third
STRIDE = 3
#: the topology's parts (the facade, its plan, ledger, builder and transaction)
#: and what they call in the core (the signal machinery's callout included)
FILES = [
    *(m.__file__ for m in (irqbypass._topology, _plan, _ledger, _build, _transaction)),
    irqbypass._tokens.__file__,
    irqbypass._manager.__file__,
    irqbypass._signals.__file__,
]

BEFORE = {"p0", "c0", "p1", "c1"}
OPERATIONS: dict[str, tuple[Callable[[Topology], object], set[str]]] = {
    "attach": (lambda t: t.attach(parse_config(pair(2), file="plug.toml")), BEFORE | {"p2", "c2"}),
    "detach": (lambda t: t.detach(["p1", "c1"]), {"p0", "c0"}),
    "reconcile": (
        lambda t: t.reconcile(parse_config(pair(0) + pair(1, level=4), file="t.toml")),
        BEFORE,
    ),
    "change": (
        lambda t: t.change(
            remove=["c1"],
            replace=parse_config(pair(1, level=4).split("[[consumers]]")[0], file="p1.toml"),
        ),
        {"p0", "c0", "p1"},
    ),
}


def _state(topology: Topology) -> set[str]:
    return {p.config.name for p in topology.placed}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_ctrl_c_anywhere_in_a_change_leaves_before_or_after(operation: str) -> None:
    action, after = OPERATIONS[operation]
    fds_before = len(os.listdir("/proc/self/fd"))

    def make() -> tuple[Callable[[], object], Callable[[BaseException | None], None]]:
        rec = Recorder()
        host = irqbypass.PluginHost()
        host.register(rec, name="rec")
        topology = Topology(parse_config(pairs(0, 1), file="t.toml"), host)
        topology.apply()
        rec.log.clear()
        kept = [p.endpoint for p in topology.placed]

        def check(exc: BaseException | None) -> None:
            try:
                names = _state(topology)
                assert names in (BEFORE, after), f"half done: {sorted(names)} after {exc!r}"
                assert rec.of("p0") == [] and rec.of("c0") == [], "an untouched pair was called"
                registered = {e.name for e in topology.manager.producers()} | {
                    e.name for e in topology.manager.consumers()
                }
                assert registered == names
                for placed in topology.placed:
                    assert placed.opened and not placed.released
                table = topology.token_table
                for token in {p.config.token for p in topology.placed}:
                    ends = sum(1 for p in topology.placed if p.config.token == token)
                    assert table.users(token) == ends, f"token {token}: users {table.users(token)}"
                assert set(table) == set(topology.tokens)
                assert topology._ledger.violations() == []
                assert len(topology.manager.pairs()) == len(names) // 2
                kept.extend(p.endpoint for p in topology.placed)
            finally:
                topology.teardown()
            assert len(topology.manager) == 0 and len(topology.token_table) == 0
            assert len(os.listdir("/proc/self/fd")) == fds_before, "an eventfd was left open"

        def act() -> object:
            result = action(topology)
            return result

        return act, check

    # every third arrival point: the whole sweep took 220 s on the loaded host
    result = interrupts.sweep(make, FILES, stride=STRIDE)
    COUNTERS[f"signals: {operation} arrival points"] += result.points
    assert result.interrupted > 0
