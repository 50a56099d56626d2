"""Apply and teardown pause the cyclic garbage collector and give it back as
the caller had it, on every path (issue 31, item 1: full collections of
thousands of live objects made apply and teardown grow with N)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass._collector import without_collection
from irqbypass._config import parse_config
from irqbypass._topology import Topology
from test_topology import TOPO
from test_topology_interrupts import Interrupting

pytestmark = pytest.mark.usefixtures("no_fd_leak")


class Watching(Interrupting):
    """Records whether the collector was on at each open and close."""

    def __init__(self) -> None:
        super().__init__()
        self.collecting: list[bool] = []

    def _act(self, what: str) -> None:
        self.collecting.append(gc.isenabled())
        super()._act(what)


@pytest.fixture
def journal() -> Watching:
    return Watching()


@pytest.fixture
def host(journal: Watching) -> Iterator[irqbypass.PluginHost]:
    plugins = irqbypass.PluginHost()
    with plugins.registered(journal, name="journal"):
        yield plugins


@pytest.fixture(params=[True, False], ids=["collector-on", "collector-off"])
def collector(request: pytest.FixtureRequest) -> Iterator[bool]:
    """The caller's setting, put back after the test whatever happened."""
    was = gc.isenabled()
    (gc.enable if request.param else gc.disable)()
    try:
        yield bool(request.param)
    finally:
        (gc.enable if was else gc.disable)()


def test_apply_and_teardown_run_without_collection_and_restore_it(
    journal: Watching, host: irqbypass.PluginHost, collector: bool
) -> None:
    topology = Topology(parse_config(TOPO, file="t.toml"), host)
    topology.apply()
    assert gc.isenabled() is collector
    topology.teardown()
    assert gc.isenabled() is collector
    assert journal.collecting and not any(journal.collecting)  # every open and close


@pytest.mark.parametrize("failure", ["fail", "interrupt"])
@pytest.mark.parametrize("step", ["open p1", "close c0"])
def test_a_failing_or_interrupted_apply_restores_the_collector(
    journal: Watching, host: irqbypass.PluginHost, collector: bool, failure: str, step: str
) -> None:
    """An open that raises (OSError or a Ctrl-C), and a close of the undo too."""
    topology = Topology(parse_config(TOPO, file="t.toml"), host)
    getattr(journal, failure).add(step)
    if step.startswith("close"):
        journal.fail.add("open p1")  # the undo's close is where it lands
    with pytest.raises((irqbypass.IrqBypassError, OSError, KeyboardInterrupt)):
        topology.apply()
    assert gc.isenabled() is collector
    assert topology.placed == [] and topology.tokens == {}


def test_an_interrupted_teardown_restores_the_collector(
    journal: Watching, host: irqbypass.PluginHost, collector: bool
) -> None:
    topology = Topology(parse_config(TOPO, file="t.toml"), host)
    topology.apply()
    journal.interrupt = {"close p0"}
    with pytest.raises(KeyboardInterrupt):
        topology.teardown()
    assert gc.isenabled() is collector
    assert topology.placed == []


def test_nested_pauses_restore_only_at_the_outermost(collector: bool) -> None:
    seen: list[bool] = []

    @without_collection
    def inner() -> None:
        seen.append(gc.isenabled())
        without_collection(seen.append)(gc.isenabled())
        seen.append(gc.isenabled())

    inner()
    assert seen == [False, False, False]
    assert gc.isenabled() is collector
