"""Teardown, once begun, finishes; apply is all or nothing under Ctrl-C (issue 13,
items 3 and 4; issue 12, defect 11).

Before the fix, the undo caught only ``Exception``: a KeyboardInterrupt in one
endpoint's close (a second Ctrl-C landing there) left every later endpoint open
and the tokens unreleased, and ``irqbypass run`` lost its summary and its
"torn down" message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import irqbypass
import pytest
from irqbypass import cli
from irqbypass._config import parse_config
from irqbypass._topology import Topology
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
