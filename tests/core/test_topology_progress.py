"""Apply and teardown report their progress (Topology's callbacks, and
`irqbypass run`'s `applying N/M` and `tearing down: N left` on a terminal)."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import irqbypass
import pytest
from irqbypass.cli import main, summary
from irqbypass.cli import run as run_command


def text(n: int) -> str:
    return "".join(
        f'[[producers]]\nname = "m{i}"\nkind = "mock"\ntoken = "t{i}"\n'
        "options = { count = 0 }\n"
        f'[[consumers]]\nname = "l{i}"\nkind = "logging"\ntoken = "t{i}"\n'
        for i in range(n)
    )


def config(n: int) -> irqbypass.Config:
    return irqbypass.parse_config(text(n), file="progress.toml")


@pytest.mark.usefixtures("no_fd_leak")
def test_apply_and_teardown_report_each_endpoint() -> None:
    topology = irqbypass.Topology(config(5), irqbypass.load_plugins())
    applied: list[tuple[int, int]] = []
    left: list[int] = []
    topology.apply(progress=lambda done, total: applied.append((done, total)))
    try:
        assert applied == [(i, 10) for i in range(1, 11)]
        rows = topology.status()
        assert [r.token for r in rows] == [f"t{i}" for i in range(5)]
        assert all(r.paired for r in rows)
    finally:
        topology.teardown(progress=left.append)
    assert left == list(range(9, -1, -1))


@pytest.mark.usefixtures("no_fd_leak")
def test_a_failing_teardown_progress_does_not_stop_the_teardown() -> None:
    topology = irqbypass.Topology(config(3), irqbypass.load_plugins())
    topology.apply()
    consumers = [p.endpoint for p in topology.placed if p.config.side == "consumer"]

    def broken(left: int) -> None:
        raise RuntimeError("the terminal went away")

    topology.teardown(progress=broken)
    assert topology.placed == [] and topology.tokens == {}
    assert all(c._reader is None for c in consumers), "every consumer was closed"


@pytest.mark.usefixtures("no_fd_leak")
def test_a_failing_apply_progress_neither_undoes_the_apply_nor_blames_a_plugin() -> None:
    """As in teardown, the progress callback is advisory: one that raised (the
    terminal went away) failed the whole apply, undoing every endpoint, with an
    error blaming the last endpoint's step ("register of consumer 'l0' (kind
    logging) failed: the terminal went away"). The apply now goes on, every
    pair applied; a Ctrl-C in it still interrupts the apply."""
    topology = irqbypass.Topology(config(3), irqbypass.load_plugins())

    def broken(done: int, total: int) -> None:
        raise RuntimeError("the terminal went away")

    topology.apply(progress=broken)
    try:
        assert len(topology.placed) == 6 and all(r.paired for r in topology.status())
    finally:
        topology.teardown()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_step_progress_draws_on_a_terminal_only_after_a_tick_and_clears(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    with run_command._step_progress("applying") as shown:
        assert shown is not None
        shown.applying(1, 100)  # within the first tick: nothing yet
        assert stream.getvalue() == ""
        shown.last -= 1.0  # as if a tick passed
        shown.applying(50, 100)
        assert "applying 50/100" in stream.getvalue()
        shown.applying(100, 100)  # the last one is drawn at once
    assert stream.getvalue().endswith("applying 100/100\x1b[K\r\x1b[K")

    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with run_command._step_progress("tearing down") as shown:
        assert shown is not None
        shown.tearing_down(0)  # a teardown quicker than a tick shows nothing
    assert quiet.getvalue() == ""

    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with run_command._step_progress("tearing down") as shown:
        assert shown is None, "nothing when not a terminal"
    assert piped.getvalue() == ""

    teardown = Terminal()
    monkeypatch.setattr(sys, "stderr", teardown)
    with run_command._step_progress("tearing down", wanted=False) as shown:
        assert shown is None, "nothing when not wanted"
    with run_command._step_progress("tearing down") as shown:
        assert shown is not None
        shown.last = time.monotonic() - 1.0
        shown.tearing_down(3100)
    assert "tearing down: 3100 left" in teardown.getvalue()


def test_run_shows_no_step_progress_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Apply and teardown draw their progress on a terminal only: on a pipe
    nothing, even once a tick has passed at every step."""
    monkeypatch.setattr(run_command, "TICK_SECONDS", -1.0)  # every step is drawn, if any
    file = tmp_path / "progress.toml"
    file.write_text(text(3))
    assert main(["run", str(file), "--duration", "0.1"]) == 0
    err = capsys.readouterr().err
    assert "applying" not in err and "tearing down" not in err, err


def test_the_run_progress_line_totals_every_pair() -> None:
    topology = irqbypass.Topology(config(12), irqbypass.load_plugins())
    topology.apply()
    try:
        rows = summary.snapshot(topology, settled=False)
        line = summary.progress_line(rows, 1.0, 3, 12)
    finally:
        topology.teardown()
    assert line.startswith("[  1.0s] fired 0 delivered 0 lost 0, 3/12 pairs finished; ")
    assert "delivered/fired: t0 0/0" in line
    assert "t8" not in line, "only the first pairs' own figures"


def test_a_snapshot_asks_whether_the_topology_finished_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: every row asked ``topology.finished``, which asks every
    producer: O(N^2) per snapshot (1000 pairs: 20 s of a 30 s run)."""
    topology = irqbypass.Topology(config(20), irqbypass.load_plugins())
    asked: list[int] = []
    real = irqbypass.Topology.finished

    def counting(self: irqbypass.Topology) -> bool:
        asked.append(1)
        return bool(real.fget(self))  # type: ignore[attr-defined]

    topology.apply()
    try:
        monkeypatch.setattr(irqbypass.Topology, "finished", property(counting))
        rows = summary.snapshot(topology)
    finally:
        topology.teardown()
    assert len(rows) == 20 and len(asked) == 1
