"""Signal safety you can see (issue 28 item 2): a section is marked where it is
defined (``@signal_safe``), a signal passes only inside ``callout(fn, ...)``,
``interruptible(fn, ...)`` and the wait of ``with hold(lock):``, and what waited
is delivered as ``with delivering_deferred_signals():`` ends."""

from __future__ import annotations

import signal
import threading

import irqbypass
import irqbypass.plugin
import irqbypass.signalsafe
import pytest
from irqbypass import _signals as signals

GUARD = 60.0

# SIGINT raises KeyboardInterrupt, guarded as a Manager guards it (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("guarded_sigint")


def test_a_signal_in_a_section_waits_for_the_delivering_block() -> None:
    steps: list[str] = []

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        signal.raise_signal(signal.SIGINT)  # lands in the section: deferred
        steps.append("finished")

    with pytest.raises(KeyboardInterrupt), irqbypass.signalsafe.delivering_deferred_signals():
        section()
        steps.append("block")
    assert steps == ["finished", "block"]
    with irqbypass.signalsafe.delivering_deferred_signals():
        steps.append("nothing waits any more")  # delivered once, not twice


def test_what_the_delivered_signal_raises_replaces_the_block_s_error() -> None:
    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        signal.raise_signal(signal.SIGINT)
        raise irqbypass.IrqBypassError("the section failed")

    with (
        pytest.raises(KeyboardInterrupt) as caught,
        irqbypass.signalsafe.delivering_deferred_signals(),
    ):
        section()
    assert isinstance(caught.value.__context__, irqbypass.IrqBypassError)


def test_a_signal_passes_inside_a_callout_and_nowhere_else_in_the_section() -> None:
    steps: list[str] = []

    def plugin_code() -> None:
        steps.append("callback")
        signal.raise_signal(signal.SIGINT)  # in the callout: raised here
        steps.append("not reached")

    def own_helper() -> None:  # called directly: part of the section
        signal.raise_signal(signal.SIGINT)
        steps.append("helper")

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        try:
            irqbypass.signalsafe.callout(plugin_code)
        except KeyboardInterrupt:
            steps.append("caught")
        own_helper()
        steps.append("section done")

    with pytest.raises(KeyboardInterrupt), irqbypass.signalsafe.delivering_deferred_signals():
        section()
    assert steps == ["callback", "caught", "helper", "section done"]


def test_a_callout_passes_its_arguments_and_its_result() -> None:
    @irqbypass.signalsafe.signal_safe
    def section() -> int:
        return irqbypass.signalsafe.callout(max, 3, 7)

    assert section() == 7


def test_a_signal_deferred_earlier_stays_deferred_through_a_callout() -> None:
    """Unlike interruptible() (a wait), a callout does not deliver what waited:
    the callback would be blamed for a Ctrl-C that landed in the bookkeeping."""
    steps: list[str] = []

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        signal.raise_signal(signal.SIGINT)  # deferred
        irqbypass.signalsafe.callout(steps.append, "callback ran")
        steps.append("section done")

    with pytest.raises(KeyboardInterrupt), irqbypass.signalsafe.delivering_deferred_signals():
        section()
    assert steps == ["callback ran", "section done"]


def test_currently_signal_safe_names_the_innermost_mark() -> None:
    seen: dict[str, bool] = {}

    @irqbypass.signalsafe.signal_safe
    def inner_section() -> None:
        seen["section inside a callout"] = irqbypass.signalsafe.currently_signal_safe()

    def plugin_code() -> None:
        seen["callout"] = irqbypass.signalsafe.currently_signal_safe()
        inner_section()

    def helper() -> None:
        seen["helper of a section"] = irqbypass.signalsafe.currently_signal_safe()

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        seen["section"] = irqbypass.signalsafe.currently_signal_safe()
        helper()
        irqbypass.signalsafe.callout(plugin_code)
        irqbypass.signalsafe.interruptible(
            lambda: seen.update(wait=irqbypass.signalsafe.currently_signal_safe())
        )

    seen["outside"] = irqbypass.signalsafe.currently_signal_safe()
    section()
    assert seen == {
        "outside": False,
        "section": True,
        "helper of a section": True,
        "callout": False,
        "section inside a callout": True,
        "wait": False,
    }


def test_hold_takes_a_free_lock_and_gives_it_back_on_every_path() -> None:
    lock = threading.Lock()

    @irqbypass.signalsafe.signal_safe
    def section(fail: bool) -> None:
        with irqbypass.signalsafe.hold(lock):
            assert lock.locked()
            if fail:
                raise irqbypass.IrqBypassError("inside the block")

    section(False)
    assert not lock.locked()
    with pytest.raises(irqbypass.IrqBypassError):
        section(True)
    assert not lock.locked()


def test_a_signal_inside_a_held_block_waits_for_the_section() -> None:
    lock = threading.RLock()
    steps: list[str] = []

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        with irqbypass.signalsafe.hold(lock):
            signal.raise_signal(signal.SIGINT)
            steps.append("block done")
        steps.append("section done")

    with pytest.raises(KeyboardInterrupt), irqbypass.signalsafe.delivering_deferred_signals():
        section()
    assert steps == ["block done", "section done"]
    assert lock.acquire(blocking=False)  # given back (an RLock: mine again)
    lock.release()


def test_ctrl_c_ends_a_section_s_wait_for_a_contended_lock() -> None:
    """A plain ``with lock:`` in a section waits deaf to Ctrl-C while another
    thread holds the lock; ``with hold(lock):`` is ended by it, and the lock is
    not left taken."""
    lock = threading.Lock()
    taken, waiting, release = threading.Event(), threading.Event(), threading.Event()
    steps: list[str] = []
    main = threading.main_thread().ident
    assert main is not None

    def holder() -> None:
        with lock:
            taken.set()
            if waiting.wait(GUARD):
                signal.pthread_kill(main, signal.SIGINT)  # while the section waits
            release.wait(GUARD)

    other = threading.Thread(target=holder, daemon=True)
    other.start()
    taken.wait(GUARD)

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        waiting.set()
        with irqbypass.signalsafe.hold(lock):
            steps.append("never: the other thread holds it")

    try:
        with pytest.raises(KeyboardInterrupt):
            section()
    finally:
        release.set()
        other.join(GUARD)
    assert steps == []
    assert lock.acquire(blocking=False), "the interrupted wait left the lock taken"
    lock.release()


def held_by_another_thread(lock: threading.Lock, wakeups: int) -> threading.Thread:
    """A thread that holds ``lock`` for ``wakeups`` of a waiting hold's steps
    (started; returned once it holds the lock)."""
    taken = threading.Event()

    def holder() -> None:
        with lock:
            taken.set()
            threading.Event().wait(wakeups * signals.HOLD_WAKE_SECONDS)

    other = threading.Thread(target=holder)
    other.start()
    taken.wait(GUARD)
    return other


def test_hold_waits_for_a_lock_the_holder_gives_back() -> None:
    lock = threading.Lock()
    other = held_by_another_thread(lock, 2)

    @irqbypass.signalsafe.signal_safe
    def section() -> bool:
        with irqbypass.signalsafe.hold(lock):
            return lock.locked()

    assert section()
    other.join(GUARD)
    assert not lock.locked()


def test_the_deferred_signals_are_not_public_state() -> None:
    assert not hasattr(signals, "DEFERRED")
    assert "DEFERRED" not in dir(irqbypass)


def test_an_uninterrupted_method_runs_to_its_end_and_then_raises() -> None:
    steps: list[str] = []

    class Resource:
        @irqbypass.plugin.uninterrupted
        def close(self, how: str) -> str:
            signal.raise_signal(signal.SIGINT)  # lands in it: waits for its end
            steps.append(f"closed {how}")
            return how

    with pytest.raises(KeyboardInterrupt):
        Resource().close("whole")
    assert steps == ["closed whole"]
    assert Resource.close.__name__ == "close"  # the method's own name and doc


def test_an_uninterrupted_method_inside_a_section_leaves_delivery_to_it() -> None:
    steps: list[str] = []

    @irqbypass.plugin.uninterrupted
    def part() -> None:
        signal.raise_signal(signal.SIGINT)
        steps.append("part")

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        part()
        steps.append("rest of the section")  # not cut by the part's delivery

    with pytest.raises(KeyboardInterrupt), irqbypass.signalsafe.delivering_deferred_signals():
        section()
    assert steps == ["part", "rest of the section"]


def test_a_signal_deferred_before_a_contended_wait_waits_for_the_section() -> None:
    """Only a Ctrl-C that arrives during the wait ends it: one that landed
    earlier in the section (say in a close) must not cut it at its lock."""
    lock = threading.Lock()
    steps: list[str] = []
    other = held_by_another_thread(lock, 3)

    @irqbypass.signalsafe.signal_safe
    def section() -> None:
        signal.raise_signal(signal.SIGINT)  # deferred before the wait
        with irqbypass.signalsafe.hold(lock):
            steps.append("held")
        steps.append("section done")

    try:
        with pytest.raises(KeyboardInterrupt), irqbypass.signalsafe.delivering_deferred_signals():
            section()
    finally:
        other.join(GUARD)
    assert steps == ["held", "section done"]
