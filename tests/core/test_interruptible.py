"""irqbypass.signalsafe.interruptible: a wait inside a signal-safe section that Ctrl-C
ends at once (issue 20: a section waited for a back-end's reply, so Ctrl-C
took effect only after the timeout)."""

from __future__ import annotations

import signal
import threading

import irqbypass
import irqbypass.signalsafe
import pytest

GUARD = 60.0


# SIGINT raises KeyboardInterrupt, guarded as a Manager guards it (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("guarded_sigint")


def interrupt_main_when(waiting: threading.Event) -> threading.Thread:
    main = threading.main_thread().ident
    assert main is not None

    def run() -> None:
        if waiting.wait(GUARD):
            signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_signal_passes_a_wait_inside_a_section() -> None:
    waiting = threading.Event()
    never = threading.Event()
    steps: list[str] = []

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        steps.append("before")
        waiting.set()
        irqbypass.signalsafe.interruptible(never.wait, GUARD)  # a peer that never answers
        steps.append("after")  # not reached: the wait raised

    thread = interrupt_main_when(waiting)
    with pytest.raises(KeyboardInterrupt):
        section()
    thread.join(GUARD)
    assert steps == ["before"] and not never.is_set()


def test_a_signal_deferred_earlier_is_delivered_as_the_wait_starts() -> None:
    never = threading.Event()
    steps: list[str] = []

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        signal.raise_signal(signal.SIGINT)  # lands in the section: deferred
        steps.append("deferred")
        irqbypass.signalsafe.interruptible(never.wait, GUARD)
        steps.append("after")

    with pytest.raises(KeyboardInterrupt):
        section()
    assert steps == ["deferred"]


def test_outside_a_wait_the_section_still_defers() -> None:
    steps: list[str] = []

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        signal.raise_signal(signal.SIGINT)
        steps.append("finished")

    try:
        section()
        steps.append("returned")
    finally:
        with pytest.raises(KeyboardInterrupt):
            irqbypass.signalsafe.deliver_deferred_signals()
    assert steps == ["finished", "returned"]


def test_interruptible_returns_what_the_call_returns() -> None:
    assert irqbypass.signalsafe.interruptible(max, 3, 7) == 7
