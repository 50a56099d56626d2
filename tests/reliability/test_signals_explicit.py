"""Ctrl-C at every bytecode of a section written with the explicit API (issue 28
item 2): ``@signal_safe``, ``with hold(lock):``, ``callout(fn)`` and
``with delivering_deferred_signals():``.

The section under test pairs two counts around a callback, under a lock, the
way the manager stops and starts an endpoint around its callbacks. After each
run: the counts agree (nothing cut the section between them), the lock is free,
and a signal that acted did so in the callback (recorded by the section), in
the wait for the lock, or in the delivering block as it ended; never lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import interrupts
import irqbypass
import irqbypass._signals as signals_module
import irqbypass.signalsafe
import pytest
from rel_support import COUNTERS

pytestmark = pytest.mark.usefixtures("guarded_sigint")

FILES = [__file__, signals_module.__file__]


class Pair:
    """What a section must keep whole: ``stopped`` and ``started`` move together."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopped = self.started = 0
        self.callback_ran = 0
        self.callback_finished = False
        #: what the section learnt of the callback: True (it returned), False (interrupted)
        self.recorded: bool | None = None
        self.interrupted_callback = 0

    def callback(self) -> bool:
        self.callback_ran += 1
        self.callback_finished = True
        return True

    def bookkeeping(self) -> None:
        """The section's own code: a call, so a point where a handler can run."""

    @irqbypass.signalsafe.signal_safe
    def section(self) -> None:
        with irqbypass.signalsafe.hold(self.lock):
            self.stopped += 1
            self.bookkeeping()
            try:
                self.recorded = irqbypass.signalsafe.callout(self.callback)
            except KeyboardInterrupt:
                self.recorded = False
                self.interrupted_callback += 1
            self.bookkeeping()
            self.started += 1

    def operation(self) -> None:
        with irqbypass.signalsafe.delivering_deferred_signals():
            self.section()


def test_a_signal_anywhere_leaves_the_section_whole() -> None:
    in_callback = 0

    def make() -> tuple[Callable[[], object], Callable[[BaseException | None], None]]:
        pair = Pair()

        def check(exc: BaseException | None) -> None:
            assert pair.stopped == pair.started, "the section was cut between its two counts"
            assert pair.lock.acquire(blocking=False), "the lock was left taken"
            pair.lock.release()
            assert pair.stopped in (0, 1)
            if pair.stopped == 0:
                assert exc is not None, "the section never ran, yet nothing was raised"
            if pair.interrupted_callback:
                # the callout passed the signal: the section went on, nothing else raised
                assert exc is None and pair.stopped == 1
                nonlocal in_callback
                in_callback += 1
            assert not signals_module._DEFERRED, "a signal was left waiting"
            if pair.recorded is not None:
                # a callback that returned is never taken for interrupted: the
                # section would undo (or lose track of) what it did
                assert pair.recorded == pair.callback_finished, "a finished callout was lost"

        return pair.operation, check

    result = interrupts.sweep(make, FILES)
    COUNTERS["signals: explicit section arrival points"] += result.points
    assert result.interrupted > 0
    assert in_callback > 0, "no signal passed in the callout: a hung callback would be deaf"
