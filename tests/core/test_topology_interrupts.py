"""Teardown, once begun, finishes; apply is all or nothing under Ctrl-C (issue 13,
items 3 and 4; issue 12, defect 11).

Before the fix, the undo caught only ``Exception``: a KeyboardInterrupt in one
endpoint's close (a second Ctrl-C landing there) left every later endpoint open
and the tokens unreleased, and ``irqbypass run`` lost its summary and its
"torn down" message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass import cli
from irqbypass._config import parse_config
from irqbypass._topology import Topology
from test_interruptible import GUARD, interrupt_main_when
from test_topology import TOPO, Journal

pytestmark = pytest.mark.usefixtures("no_fd_leak")


class Interrupting(Journal):
    """A journal whose named steps raise KeyboardInterrupt (a Ctrl-C there)."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupt: set[str] = set()

    def _act(self, what: str) -> None:
        if what in self.interrupt:
            self.log.append(what)
            raise KeyboardInterrupt
        super()._act(what)


@pytest.fixture
def journal() -> Interrupting:
    return Interrupting()


@pytest.fixture
def host(journal: Interrupting) -> Iterator[irqbypass.PluginHost]:
    plugins = irqbypass.PluginHost()
    with plugins.registered(journal, name="journal"):
        yield plugins


def closes(journal: Interrupting) -> list[str]:
    return sorted(entry for entry in journal.log if entry.startswith("close "))


@pytest.mark.parametrize(
    "interrupted", [{"close c0"}, {"close p1"}, {"close p0", "close c1"}], ids=sorted
)
def test_a_ctrl_c_in_a_close_interrupts_that_close_and_teardown_finishes(
    journal: Interrupting, host: irqbypass.PluginHost, interrupted: set[str]
) -> None:
    topology = Topology(parse_config(TOPO, file="t.toml"), host)
    topology.apply()
    tokens = list(topology.tokens.values())
    journal.interrupt = interrupted
    with pytest.raises(KeyboardInterrupt) as caught:
        topology.teardown()
    assert closes(journal) == ["close c0", "close c1", "close p0", "close p1"]
    assert topology.placed == [] and len(topology.manager) == 0
    assert all(token.closed for token in tokens)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "interrupted by KeyboardInterrupt (the rest was still torn down)" in notes
    for step in interrupted:
        assert f"close of {'producer' if 'p' in step else 'consumer'} '{step.split()[1]}'" in notes


def test_a_ctrl_c_in_a_with_block_stays_a_ctrl_c_when_a_close_fails(
    journal: Interrupting, host: irqbypass.PluginHost
) -> None:
    """``with topology:`` tears down on a Ctrl-C too; a close that then failed
    made the teardown's TopologyError replace the KeyboardInterrupt (an
    ``except KeyboardInterrupt`` missed it, a VMM exited 1, not 130). The
    interrupt wins, as it does in teardown itself, with the failure noted."""
    journal.fail = {"close p0"}
    topology = Topology(parse_config(TOPO, file="t.toml"), host)
    with pytest.raises(KeyboardInterrupt) as caught, topology:
        raise KeyboardInterrupt
    assert closes(journal) == ["close c0", "close c1", "close p0", "close p1"]
    assert topology.placed == [] and len(topology.manager) == 0
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "tearing down t.toml: close of producer 'p0'" in notes and "close p0 failed" in notes
    journal.fail = {"close p0"}  # without an interrupt the failure is the error, as before
    again = Topology(parse_config(TOPO, file="t.toml"), host)
    with pytest.raises(irqbypass.TopologyError, match="close of producer 'p0'"), again:
        pass


def test_a_ctrl_c_in_an_open_undoes_everything_opened(
    journal: Interrupting, host: irqbypass.PluginHost
) -> None:
    topology = Topology(parse_config(TOPO, file="t.toml"), host)
    journal.interrupt = {"open p1"}
    with pytest.raises(KeyboardInterrupt):
        topology.apply()
    opened = {entry.split()[1] for entry in journal.log if entry.startswith("open ")}
    closed = {entry.split()[1] for entry in journal.log if entry.startswith("close ")}
    assert opened - {"p1"} == closed  # every endpoint that opened was closed again
    assert topology.placed == [] and topology.tokens == {} and len(topology.manager) == 0


def test_a_ctrl_c_in_an_undo_close_still_undoes_the_rest(
    journal: Interrupting, host: irqbypass.PluginHost
) -> None:
    """The first failure (an open) starts the undo; a Ctrl-C in one of its
    closes does not stop it."""
    topology = Topology(parse_config(TOPO, file="t.toml"), host)
    journal.fail = {"open p1"}
    journal.interrupt = {"close c0"}
    with pytest.raises(KeyboardInterrupt):
        topology.apply()
    opened = {entry.split()[1] for entry in journal.log if entry.startswith("open ")}
    closed = {entry.split()[1] for entry in journal.log if entry.startswith("close ")}
    assert opened - {"p1"} == closed
    assert topology.placed == [] and topology.tokens == {}


def test_run_keeps_its_summary_and_message_when_ctrl_c_lands_in_teardown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topo = tmp_path / "t.toml"
    topo.write_text(
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={count=5, rate=1000.0}\n'
        '[[consumers]]\nname="c"\nkind="ctrl-c-on-close"\ntoken="t"\n'
    )
    code = cli.main(["run", str(topo), "-p", "ctrl_c_plugin", "--duration", "5"])
    out, err = capsys.readouterr()
    assert code == 130
    assert "summary:" in out and "FIRED" in out
    assert "stopped by SIGINT; everything was torn down" in err
    assert "close of consumer 'c'" in err


class StuckName(irqbypass.Producer):
    """A plugin's bug: once armed, reading its name waits on a peer that never
    answers (timed_out says whether the wait ran out instead of being ended)."""

    armed: ClassVar[bool] = False
    waiting: ClassVar[threading.Event] = threading.Event()
    never: ClassVar[threading.Event] = threading.Event()
    timed_out: ClassVar[list[bool]] = []

    @property
    def name(self) -> str:
        if StuckName.armed:
            StuckName.waiting.set()
            if not StuckName.never.wait(GUARD):
                StuckName.timed_out.append(True)
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value


class StuckKind:
    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        register.producer("stuck", self.make)

    def make(self, spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Producer:
        spec.options_reader().finish()
        endpoint = StuckName(token=spec.token, name=spec.name)
        StuckName.armed = True  # the next read of its name is the builder's check
        return endpoint


@pytest.mark.usefixtures("guarded_sigint")
def test_a_ctrl_c_ends_a_plugin_hang_in_the_check_of_what_its_factory_returned() -> None:
    """The builder checks the factory's endpoint (its name, its token) in the
    plugin's call-out: a name that hangs is ended by one Ctrl-C, not waited for
    inside the builder's signal-safe section, and the token is given back."""
    plugins = irqbypass.PluginHost()
    StuckName.armed, StuckName.timed_out[:] = False, []
    StuckName.waiting.clear()
    toml = '[[producers]]\nname = "p0"\nkind = "stuck"\ntoken = "a"\n'
    with plugins.registered(StuckKind(), name="stuck"):
        topology = Topology(parse_config(toml, file="t.toml"), plugins)
        thread = interrupt_main_when(StuckName.waiting)
        try:
            with pytest.raises(KeyboardInterrupt):
                topology.apply()
        finally:
            StuckName.armed = False
            thread.join(GUARD)
    assert StuckName.timed_out == []  # ended by the Ctrl-C, not by the wait running out
    assert topology.placed == [] and topology.tokens == {}
