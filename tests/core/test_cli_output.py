"""The CLI's writes and a reader that stops reading (cli/output.py): the event
loop's threads never wait for it, and after a stop the main thread waits for it
only so long."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

import pytest
from irqbypass.cli import output

HANG_GUARD = 120.0


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> output._Screen:
    fresh = output._Screen()
    monkeypatch.setattr(output, "_SCREEN", fresh)
    return fresh


@pytest.fixture
def stalled() -> Iterator[tuple[int, TextIO]]:
    """A text stream on a pipe that is full: nobody reads it."""
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    try:
        while True:
            os.write(writer, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(writer, True)
    with os.fdopen(writer, "w") as stream:
        yield reader, stream
    os.close(reader)


def _drain(reader: int) -> bytes:
    os.set_blocking(reader, False)
    taken = b""
    try:
        while chunk := os.read(reader, 65536):
            taken += chunk
    except BlockingIOError:
        pass
    os.set_blocking(reader, True)
    return taken


def test_another_threads_line_is_dropped_not_waited_for_and_told_later(
    screen: output._Screen, stalled: tuple[int, TextIO], capsys: pytest.CaptureFixture[str]
) -> None:
    reader, stream = stalled
    loop_thread = threading.Thread(target=output.say, args=("from the loop", stream))
    loop_thread.start()
    loop_thread.join(HANG_GUARD)
    stuck = loop_thread.is_alive()
    if stuck:
        _drain(reader)  # let it go, then fail
    assert not stuck, "the loop's thread waited for a reader that does not read"
    assert screen.dropped == 1
    _drain(reader)
    output.say("from the main thread", stream)  # the reader reads again
    assert _drain(reader) == b"from the main thread\n"
    assert capsys.readouterr().err == (
        "irqbypass: warning: 1 line of output not written: nothing was reading it\n"
    )
    assert screen.dropped == 0


def test_after_a_stop_the_main_thread_waits_for_a_reader_only_so_long(
    screen: output._Screen, stalled: tuple[int, TextIO]
) -> None:
    reader, stream = stalled
    assert output.stop_signal(KeyboardInterrupt()) == signal.SIGINT  # the clock starts
    assert screen.leave_by is not None

    def hung(signum: int, frame: object) -> None:
        raise AssertionError("the main thread waited for a reader after the stop")

    previous = signal.signal(signal.SIGALRM, hung)  # a hang guard, not a time limit
    signal.setitimer(signal.ITIMER_REAL, HANG_GUARD)
    try:
        output.say("stopped", stream)  # returns: the line is dropped once the time is up
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() >= screen.leave_by
    assert b"stopped" not in _drain(reader)


def test_while_serving_a_run_the_main_thread_waits_for_a_reader_only_a_while(
    screen: output._Screen, stalled: tuple[int, TextIO], capsys: pytest.CaptureFixture[str]
) -> None:
    reader, stream = stalled

    def hung(signum: int, frame: object) -> None:
        raise AssertionError("the run's main loop waited for a reader")

    previous = signal.signal(signal.SIGALRM, hung)  # a hang guard, not a time limit
    signal.setitimer(signal.ITIMER_REAL, HANG_GUARD)
    try:
        with output.serving():
            output.say("a status", stream)  # dropped after SERVING_WAIT
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not screen.serving
    assert screen.dropped == 1
    assert b"a status" not in _drain(reader)
    output.say("read again", stream)
    assert _drain(reader) == b"read again\n"
    assert "1 line of output not written" in capsys.readouterr().err


def test_a_count_of_dropped_lines_that_cannot_be_told_is_kept_for_later(
    screen: output._Screen, stalled: tuple[int, TextIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning that tells how many lines were dropped goes to stderr; when
    stderr is the stalled stream too, the count is kept, not lost with it."""
    _reader, stream = stalled
    screen.dropped = 2  # as two lines of the loop dropped earlier
    monkeypatch.setattr(sys, "stderr", stream)
    with output.serving():
        output.say("a status", stream)
    assert screen.dropped == 3  # the two, and this line


def test_while_serving_a_stalled_reader_costs_one_wait_not_one_per_line(
    screen: output._Screen, stalled: tuple[int, TextIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status of many lines (SIGUSR1 with --all) on a stalled stderr: the main
    loop waits for the reader once, then drops the other lines at once until it
    reads again (before: SERVING_WAIT per line, 60 pairs kept the control socket
    unanswered for 30 s, past its clients' 10 s deadline)."""
    reader, stream = stalled
    real_poll = output.select.poll
    waits: list[int | None] = []  # the poll timeouts that expired with nothing writable

    class Poll:
        def __init__(self) -> None:
            self.poll_ = real_poll()

        def register(self, fd: int, mask: int) -> None:
            self.poll_.register(fd, mask)

        def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
            ready = self.poll_.poll(timeout)
            if not ready and timeout:
                waits.append(timeout)
            return ready

    monkeypatch.setattr(output.select, "poll", Poll)
    monkeypatch.setattr(output, "SERVING_WAIT", 0.01)  # the old code fails sooner
    monkeypatch.setattr(sys, "stderr", stream)  # SIGUSR1's status: stderr is the stalled one
    with output.serving():
        for n in range(40):
            output.say(f"row {n}", stream)
    assert len(waits) == 1, f"waited for the stalled reader {len(waits)} times"
    assert screen.dropped == 40
    _drain(reader)  # the reader reads again: lines go out again, the count is told
    with output.serving():
        output.say("read again", stream)
    assert _drain(reader) == (
        b"irqbypass: warning: 40 lines of output not written: nothing was reading it\nread again\n"
    )
