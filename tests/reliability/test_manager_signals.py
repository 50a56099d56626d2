"""Ctrl-C anywhere in a registration leaves the manager consistent and usable.

CPython runs the SIGINT handler between two bytecodes of the main thread; these
tests land signals everywhere in the manager's work (a storm from another
thread, and signals raised at exact places from inside tokens and callbacks)
and check, after each interrupt, what semantics.md promises: the lock is free,
every endpoint that was stopped was started again, and the registered sets and
the pairing links agree.
"""

from __future__ import annotations

import ast
import inspect
import os
import random
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import irqbypass
import irqbypass.signalsafe
import pytest
import rel_support
from irqbypass import _manager as manager_module
from irqbypass import _signals as signals

STORM_SIGNALS = int(os.environ.get("IRQBYPASS_STORM_SIGNALS", "2000"))


@pytest.fixture(autouse=True)
def _default_sigint() -> Iterator[None]:
    """Each test starts with Python's own SIGINT handler, SIGINT unblocked, and
    leaves them as they were. (A shell that starts a job in the background hands
    it SIGINT ignored; some runners hand it SIGINT blocked.)"""
    before = signal.getsignal(signal.SIGINT)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals._DEFERRED.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signals._DEFERRED.clear()


def interrupt_main_thread() -> None:
    """SIGINT to the main thread itself: a signal sent to the process may be
    taken by another thread, and then a main thread blocked in a wait is not
    woken (its wait would never see EINTR)."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


class Balanced(irqbypass.Producer):
    """Counts its callbacks; ``stopped`` must be 0 whenever the manager is idle."""

    def __init__(self, token: Any, name: str = "p") -> None:
        super().__init__(token=token, name=name)
        self.stopped = 0
        self.links = 0

    def stop(self) -> None:
        self.stopped += 1

    def start(self) -> None:
        self.stopped -= 1

    def add_consumer(self, consumer: irqbypass.Consumer) -> None:
        self.links += 1

    def del_consumer(self, consumer: irqbypass.Consumer) -> None:
        self.links -= 1


class BalancedConsumer(irqbypass.Consumer):
    def __init__(self, token: Any, name: str = "c") -> None:
        super().__init__(token=token, name=name)
        self.stopped = 0
        self.links = 0

    def stop(self) -> None:
        self.stopped += 1

    def start(self) -> None:
        self.stopped -= 1

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self.links += 1

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self.links -= 1


def lock_is_free(mgr: irqbypass.Manager) -> bool:
    """Another thread can take the manager's lock (the main thread's RLock
    would let the main thread in even if it leaked)."""
    got: list[bool] = []

    def probe() -> None:
        ok = mgr._lock.acquire(blocking=False)
        if ok:
            mgr._lock.release()
        got.append(ok)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return got == [True] and not mgr._running


def check_consistent(mgr: irqbypass.Manager, ends: list[tuple[Balanced, BalancedConsumer]]) -> None:
    assert lock_is_free(mgr), "the manager's lock or running flag leaked"
    for p, c in ends:
        assert p.stopped == 0 and c.stopped == 0, f"{p.name}/{c.name} left stopped"
        both = mgr.is_registered(p) and mgr.is_registered(c)
        assert (p.consumer is c) == both, f"{p.name}: links disagree with the index"
        assert (c.producer is p) == both
        assert p.links == c.links == (1 if both else 0), f"{p.name}: add/del unbalanced"
        if not mgr.is_registered(p):
            assert mgr.find_producer(p.token) is None
        if not mgr.is_registered(c):
            assert mgr.find_consumer(c.token) is None


def test_a_signal_storm_never_leaves_the_manager_inconsistent() -> None:
    """Thousands of SIGINTs at random moments while pairs come and go.

    With the lock taken before ``try:`` this leaked the lock; with the callbacks
    not all guarded, it left endpoints stopped or pairings unrecorded.
    """
    mgr = irqbypass.Manager()
    assert isinstance(signal.getsignal(signal.SIGINT), signals._Guard)
    ends = [(Balanced(("t", i), f"p{i}"), BalancedConsumer(("t", i), f"c{i}")) for i in range(8)]
    # the main thread acknowledges each interrupt by counting it, inside the
    # try; an Event would not do: its Python-level Condition.__enter__ can be
    # cut by the very signal, leaving its lock held
    acknowledged = [-1]  # -1: the main thread has not reached its try yet
    swallowed = 0
    rng = random.Random(1234)

    def storm() -> None:
        nonlocal swallowed
        while acknowledged[0] < 0:
            time.sleep(0.0001)
        for sent in range(1, STORM_SIGNALS + 1):
            spin = rng.randrange(3000)
            while spin:
                spin -= 1
            interrupt_main_thread()
            deadline = time.monotonic() + 30  # a hang guard: the signal never arrived
            while acknowledged[0] < sent and time.monotonic() < deadline:
                time.sleep(0.0001)
            if acknowledged[0] < sent:
                swallowed += 1
                acknowledged[0] = sent

    thread = threading.Thread(target=storm, daemon=True)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL to the sender quickly: more signals a second
    interrupts = operations = 0
    acknowledge = False
    thread.start()
    while thread.is_alive() or acknowledge:  # no signal is on its way here
        try:
            while True:
                if acknowledged[0] < 0:
                    acknowledged[0] = 0
                if acknowledge:  # only from inside the try may the next signal come
                    acknowledge = False
                    acknowledged[0] += 1
                if interrupts >= STORM_SIGNALS:
                    break
                p, c = ends[operations % len(ends)]
                try:
                    op = operations % 4
                    if op == 0:
                        mgr.register_producer(p)
                    elif op == 1:
                        mgr.register_consumer(c)
                    elif op == 2:
                        mgr.unregister_producer(p)
                    else:
                        mgr.unregister_consumer(c)
                except irqbypass.BusyError:
                    pass
                operations += 1
        except KeyboardInterrupt:
            interrupts += 1
            check_consistent(mgr, ends)
            acknowledge = True
    thread.join()
    sys.setswitchinterval(switch)
    check_consistent(mgr, ends)
    rel_support.COUNTERS["signals: storm signals sent"] += STORM_SIGNALS
    rel_support.COUNTERS["signals: storm operations"] += operations
    assert swallowed == 0
    assert interrupts == STORM_SIGNALS


class SignallingToken:
    """A token whose hash raises SIGINT the n-th time the manager takes it:
    the signal lands inside the manager's own bookkeeping (a dict lookup,
    store or delete)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0
        self.armed = False

    def __hash__(self) -> int:
        if self.armed:
            self.calls += 1
            if self.calls == self.at:
                signal.raise_signal(signal.SIGINT)
        return 42

    def __eq__(self, other: object) -> bool:
        return self is other


#: how often the four operations of a pair's life hash the token
HASHES_PER_LIFE = 12


@pytest.mark.parametrize("at", range(1, HASHES_PER_LIFE + 1))
def test_a_signal_in_the_bookkeeping_waits_until_the_state_is_consistent(at: int) -> None:
    """Before the guard, the KeyboardInterrupt escaped from the token's hash,
    e.g. between "connected" and "recorded": a pairing the manager did not know
    of, or an endpoint neither registered nor refused."""
    mgr = irqbypass.Manager()
    token = SignallingToken(at)
    p, c = Balanced(token), BalancedConsumer(token)
    steps = [
        lambda: mgr.register_producer(p),
        lambda: mgr.register_consumer(c),
        lambda: mgr.unregister_consumer(c),
        lambda: mgr.unregister_producer(p),
    ]
    outcomes = []
    for number, step in enumerate(steps, 1):
        token.armed = True
        try:
            step()
            outcomes.append("ok")
        except KeyboardInterrupt:
            outcomes.append("interrupted")
        finally:
            token.armed = False
        check_consistent(mgr, [(p, c)])
        if number == 2:  # every operation completed, interrupted or not
            assert p.consumer is c, outcomes
    assert not mgr.is_registered(p) and not mgr.is_registered(c), outcomes
    assert token.calls == HASHES_PER_LIFE
    assert outcomes.count("interrupted") == 1, outcomes
    rel_support.COUNTERS["signals: bookkeeping positions"] += 1


class HangingStop(Balanced):
    """A stop() that never returns until interrupted: the hang a Ctrl-C must
    escape. It polls rather than blocks in one wait: CPython notices a signal
    that arrives just as a thread enters a blocking wait only when the wait
    ends, a race of the interpreter's own that this test is not about."""

    def __init__(self, token: Any) -> None:
        super().__init__(token, name="hangs")
        self.entered = threading.Event()

    def stop(self) -> None:
        self.stopped += 1
        self.entered.set()
        deadline = time.monotonic() + 120  # a hang guard: a lost signal fails the test
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("stop() was never interrupted")


def test_one_ctrl_c_escapes_a_hanging_callback_and_names_it() -> None:
    mgr = irqbypass.Manager()
    p, c = HangingStop("t"), BalancedConsumer("t")
    mgr.register_consumer(c)

    def interrupt_when_hung() -> None:
        p.entered.wait()
        interrupt_main_thread()

    threading.Thread(target=interrupt_when_hung, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as caught:
        mgr.register_producer(p)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "producer 'hangs'.stop()" in notes
    assert "registered and paired" in notes
    # the sequence ran on: both started again, both registered and paired
    check_consistent(mgr, [(p, c)])
    assert p.consumer is c


def test_a_signal_in_a_callback_interrupts_the_callback_not_the_sequence() -> None:
    class InterruptingAdd(BalancedConsumer):
        def add_producer(self, producer: irqbypass.Producer) -> None:
            signal.raise_signal(signal.SIGINT)
            self.links += 1  # not reached

    mgr = irqbypass.Manager()
    p, c = Balanced("t"), InterruptingAdd("t")
    mgr.register_producer(p)
    with pytest.raises(KeyboardInterrupt) as caught:
        mgr.register_consumer(c)
    assert "consumer 'c'.add_producer()" in "\n".join(caught.value.__notes__)
    # a failed add: rolled back, the consumer not registered, both restarted
    check_consistent(mgr, [(p, c)])
    assert mgr.is_registered(p) and not mgr.is_registered(c)


def test_signals_outside_the_manager_are_passed_on_unchanged() -> None:
    irqbypass.Manager()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):
            pass
    assert not signals._DEFERRED


def test_the_guard_wraps_a_handler_of_the_vmm_own_and_leaves_sig_dfl_alone() -> None:
    seen: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert irqbypass.signalsafe.guard_signals() == [signal.SIGINT]
        irqbypass.Manager()  # a VMM's own handler is not replaced by the manager
        guard = signal.getsignal(signal.SIGINT)
        assert isinstance(guard, signals._Guard)
        assert irqbypass.signalsafe.guard_signals() == [signal.SIGINT]  # idempotent
        assert signal.getsignal(signal.SIGINT) is guard
        signal.raise_signal(signal.SIGINT)
        assert seen == [signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def test_a_manager_made_in_another_thread_installs_nothing() -> None:
    thread = threading.Thread(target=irqbypass.Manager)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_every_callback_is_called_on_a_call_out_line() -> None:
    """The guard passes signals only inside the callbacks: a callback called
    where signals wait would be un-interruptible (a hang no Ctrl-C escapes), a
    wait for the lock inside a section would leave a thread blocked on it deaf
    to Ctrl-C, and any other call-out would let a signal cut the bookkeeping.
    The connect and disconnect sequences are sections whose every call is a
    call-out (``calling_out``): each calls the callbacks and nothing else; the
    irqbypass_pair hook goes through ``callout``; the bodies around them have
    no call-out at all, and take the lock themselves: a free one at once, a
    contended one through ``hold`` (a Ctrl-C ends that wait: the next test)."""
    manager = manager_module.Manager
    # connect: stop, stop, add, add, the rollback's del, start, start; disconnect: stop,
    # stop, del, del (the rollback's), start, start: eight calls in all
    sequence = manager_module._sequence
    assert signals._SAFE[sequence.__code__] is signals._CALLING_OUT
    tree = ast.parse(textwrap.dedent(inspect.getsource(sequence)))
    called = [ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert sorted(called) == sorted(["fn"] * 6 + ["c.add_producer", "c.del_producer"]), called
    assert "callout(functools.partial(hook, " in inspect.getsource(manager._veto)
    for body in (manager._register, manager._unregister, manager._veto):
        assert signals._SAFE[body.__code__] is signals._SECTION, body
    for public in (
        manager.register_producer,
        manager.register_consumer,
        manager.unregister_producer,
        manager.unregister_consumer,
    ):
        assert public.__code__ not in signals._SAFE, public
        assert "_lock" not in inspect.getsource(public), public
    for body in (manager._register, manager._unregister):
        source = inspect.getsource(body)
        assert "if not (got := self._lock.acquire(False)) or self._running:" in source, body
        assert "self._wait_or_refuse(got)" in source, body
        assert "self._lock.release()" in source, body
    assert "hold(self._lock).__enter__()" in inspect.getsource(manager._wait_or_refuse)


def test_a_ctrl_c_while_waiting_for_the_lock_gets_through() -> None:
    mgr = irqbypass.Manager()
    held = threading.Event()
    release = threading.Event()

    class Slow(Balanced):
        def stop(self) -> None:
            super().stop()
            held.set()
            release.wait()

    p, c = Slow("a"), BalancedConsumer("a")
    mgr.register_consumer(c)
    worker = threading.Thread(target=mgr.register_producer, args=(p,))
    worker.start()
    held.wait()

    def interrupt() -> None:
        interrupt_main_thread()

    timer = threading.Timer(0.05, interrupt)
    timer.start()
    other = Balanced("b")
    try:
        with pytest.raises(KeyboardInterrupt):
            mgr.register_producer(other)  # blocks on the lock the worker holds
        assert not mgr.is_registered(other)
    finally:
        release.set()
        worker.join()
        timer.join()
    check_consistent(mgr, [(p, c)])
