"""The event loop's contract (irqbypass.plugin.EventLoop): readers, timers, removal,
faults, the watchdog, close, use from other threads, asyncio, signals.

Every wait is for a condition, with a generous hang guard; nothing here
asserts how long something took."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import irqbypass
import irqbypass.plugin
import pytest
from fork_support import in_child
from main_thread import main_thread_joining

GUARD = 60.0  # seconds: a hang guard, never a speed limit

pytestmark = pytest.mark.usefixtures("no_fd_leak")


def until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.005)


@pytest.fixture
def loop() -> Iterator[irqbypass.plugin.EventLoop]:
    own = irqbypass.plugin.EventLoop(name="test-loop", watchdog_seconds=0.2)
    try:
        yield own
    finally:
        own.close()


def test_a_reader_is_called_when_its_eventfd_is_signalled(loop: irqbypass.plugin.EventLoop) -> None:
    got: list[int] = []
    with irqbypass.Eventfd() as token:
        handle = loop.add_reader(token, lambda: got.append(token.read(0)), owner="reader")
        token.write(3)
        until(lambda: sum(got) == 3, "the reader takes the count")
        token.write(2)
        until(lambda: sum(got) == 5, "and the next one")
        handle.cancel()
        assert not handle.active and handle.state == "cancelled"
        token.write(1)
        assert token.read(1.0) == 1, "a cancelled reader reads no more"
    assert threading.current_thread() is threading.main_thread()


def test_callbacks_run_on_the_loop_thread(loop: irqbypass.plugin.EventLoop) -> None:
    seen: list[threading.Thread] = []
    loop.call_later(0.0, lambda: seen.append(threading.current_thread()), owner="t")
    until(lambda: seen, "the timer runs")
    assert seen == [loop.running_thread]
    assert seen[0] is not threading.main_thread()


def test_one_shot_and_periodic_timers(loop: irqbypass.plugin.EventLoop) -> None:
    ticks: list[str] = []
    once = loop.call_later(0.01, lambda: ticks.append("once"), owner="once")
    every = loop.call_every(0.005, lambda: ticks.append("tick"), owner="every")
    until(lambda: ticks.count("tick") >= 5 and "once" in ticks, "both run")
    assert ticks.count("once") == 1 and once.state == "done"
    every.cancel()
    every.cancel()  # idempotent
    stopped = ticks.count("tick")
    time.sleep(0.05)
    assert ticks.count("tick") == stopped, "a cancelled periodic timer does not run again"


def test_timers_run_in_deadline_order(loop: irqbypass.plugin.EventLoop) -> None:
    order: list[int] = []
    gate = threading.Event()
    loop.call_later(0.0, lambda: gate.wait(GUARD), owner="gate")  # holds the loop while we add
    for delay, label in ((0.03, 3), (0.01, 1), (0.02, 2)):
        loop.call_later(delay, lambda label=label: order.append(label), owner="ordered")
    gate.set()
    until(lambda: len(order) == 3, "all three run")
    assert order == [1, 2, 3]


def test_a_callback_may_remove_itself_and_others(loop: irqbypass.plugin.EventLoop) -> None:
    """Removal during a callback: a handle cancelled by an earlier callback of the
    same turn is not called, and a callback may cancel its own handle."""
    calls: list[str] = []
    with irqbypass.Eventfd() as a, irqbypass.Eventfd() as b:
        handles: dict[str, irqbypass.plugin.LoopHandle] = {}

        def on_a() -> None:
            calls.append("a")
            a.read(0)
            handles["b"].cancel()
            handles["a"].cancel()

        def on_b() -> None:
            calls.append("b")
            b.read(0)
            handles["a"].cancel()
            handles["b"].cancel()

        gate = threading.Event()
        loop.call_later(0.0, lambda: gate.wait(GUARD), owner="gate")
        handles["a"] = loop.add_reader(a, on_a, owner="a")
        handles["b"] = loop.add_reader(b, on_b, owner="b")
        a.write(1), b.write(1)  # both ready in the same turn
        gate.set()
        until(lambda: calls, "one of them runs")
        time.sleep(0.05)
        assert len(calls) == 1, f"the other was cancelled by the first: {calls}"
        assert not handles["a"].active and not handles["b"].active

    periodic: list[int] = []

    def count_to_three() -> None:
        periodic.append(1)
        if len(periodic) == 3:
            handle.cancel()

    handle = loop.call_every(0.0, count_to_three, owner="three")
    until(lambda: not handle.active, "it cancels itself")
    time.sleep(0.02)
    assert len(periodic) == 3


def test_a_raising_callback_is_removed_and_reported_and_others_go_on(
    loop: irqbypass.plugin.EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ticks: list[int] = []
    with caplog.at_level(logging.ERROR, logger="irqbypass.loop"):
        good = loop.call_every(0.005, lambda: ticks.append(1), owner="good endpoint")

        def broken() -> None:
            raise ValueError("the device fell over")

        bad = loop.call_every(0.005, broken, owner="bad endpoint")
        until(lambda: bad.state == "failed", "the raising timer is removed")
        seen = len(ticks)
        until(lambda: len(ticks) > seen + 3, "the others go on")
    assert good.active
    assert isinstance(bad.error, ValueError)
    assert bad.problem is not None
    assert "bad endpoint" in bad.problem and "ValueError: the device fell over" in bad.problem
    (fault,) = [f for f in loop.faults if f.owner == "bad endpoint"]
    assert fault.kind == "raised" and fault.callback.endswith("broken")
    assert loop.fault_count == 1
    assert any("bad endpoint" in r.getMessage() for r in caplog.records)
    good.cancel()


def test_a_raising_reader_is_removed(loop: irqbypass.plugin.EventLoop) -> None:
    with irqbypass.Eventfd() as token:

        def broken() -> None:
            raise RuntimeError("bug")

        handle = loop.add_reader(token, broken, owner="reader")
        token.write(1)
        until(lambda: handle.state == "failed", "removed")
        assert loop.handles(owner="reader") == []
        token.write(1)
        assert token.read(0) == 2, "nobody reads it any more"


def test_a_blocking_callback_is_named_by_the_watchdog(
    loop: irqbypass.plugin.EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """The watchdog names a callback that runs too long while it still runs,
    and the other callbacks run again once it returns."""
    release = threading.Event()
    ticks: list[int] = []
    with caplog.at_level(logging.WARNING, logger="irqbypass.loop"):
        loop.call_later(0.0, lambda: release.wait(GUARD), owner="slow endpoint")
        until(lambda: any(f.kind == "blocked" for f in loop.faults), "the watchdog notices")
        (fault,) = [f for f in loop.faults if f.kind == "blocked"]
        assert fault.owner == "slow endpoint"
        assert "must not block" in fault.message
        assert any("slow endpoint" in r.getMessage() for r in caplog.records)
        assert not release.is_set(), "named while it still blocked"
        tick = loop.call_every(0.005, lambda: ticks.append(1), owner="other")
        release.set()
        until(lambda: len(ticks) > 2, "the loop goes on")
        tick.cancel()


def test_a_fault_is_logged_before_it_is_recorded(loop: irqbypass.plugin.EventLoop) -> None:
    """Whoever finds a fault in ``faults`` finds it logged too: the watchdog
    tells from its own thread, and a reader of ``faults`` that then looked for
    the log line missed it now and then (seen once in test_a_blocking_callback_
    is_named_by_the_watchdog, on a loaded host)."""
    recorded_when_logged: list[int] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "slow endpoint" in record.getMessage():
                recorded_when_logged.append(len(loop.faults))

    handler = Seen(logging.WARNING)
    logger = logging.getLogger("irqbypass.loop")
    logger.addHandler(handler)
    release = threading.Event()
    try:
        loop.call_later(0.0, lambda: release.wait(GUARD), owner="slow endpoint")
        until(lambda: loop.faults, "the watchdog notices")
        release.set()
        until(lambda: len(recorded_when_logged) >= 2, "the return is logged too")
    finally:
        release.set()
        logger.removeHandler(handler)
    assert recorded_when_logged[0] == 0, "the fault was recorded before it was logged"


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """What reached threading.excepthook: a thread that died of an exception."""
    seen: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


def test_the_watchdog_survives_a_check_that_raises(
    loop: irqbypass.plugin.EventLoop,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    thread_errors: list[threading.ExceptHookArgs],
) -> None:
    """A watchdog check that raises is logged once and the watchdog goes on:
    it still names a callback that blocks afterwards."""
    checks: list[int] = []
    watch_once = loop._watchdog.check

    def failing() -> None:
        checks.append(1)
        if len(checks) <= 3:
            raise RuntimeError("broken check")
        watch_once()

    monkeypatch.setattr(loop._watchdog, "check", failing)
    release = threading.Event()
    with caplog.at_level(logging.WARNING, logger="irqbypass.loop"):
        loop.start()
        until(lambda: len(checks) > 3, "the watchdog checks again after raising")
        loop.call_later(0.0, lambda: release.wait(GUARD), owner="slow endpoint")
        until(lambda: any(f.kind == "blocked" for f in loop.faults), "the watchdog notices")
        release.set()
    told = [r for r in caplog.records if "a watchdog check raised" in r.getMessage()]
    assert len(told) == 1 and "RuntimeError" in told[0].getMessage()
    assert thread_errors == []


def test_a_patched_time_sleep_does_not_reach_the_watchdog(
    loop: irqbypass.plugin.EventLoop,
    monkeypatch: pytest.MonkeyPatch,
    thread_errors: list[threading.ExceptHookArgs],
) -> None:
    """A test that makes time.sleep raise (tests/core/test_cli_issue12.py)
    killed the watchdog thread: it waits on an Event, never on time.sleep."""
    pause = threading.Event()

    def no_sleep(seconds: float) -> None:
        raise AssertionError("time.sleep called")

    monkeypatch.setattr(time, "sleep", no_sleep)
    release = threading.Event()
    loop.call_later(0.0, lambda: release.wait(GUARD), owner="slow endpoint")
    deadline = time.monotonic() + GUARD
    while not any(f.kind == "blocked" for f in loop.faults):
        assert time.monotonic() < deadline, "gave up waiting: the watchdog notices"
        pause.wait(0.005)
    release.set()
    loop.close()
    assert thread_errors == []


def test_cancel_from_another_thread_waits_for_a_running_callback(
    loop: irqbypass.plugin.EventLoop,
) -> None:
    """What close() relies on: after cancel() returns, the callback neither
    runs nor will run (so the caller may release what it uses)."""
    entered, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow() -> None:
        entered.set()
        release.wait(GUARD)
        finished.append(True)

    handle = loop.call_every(0.0, slow, owner="slow")
    assert entered.wait(GUARD)
    cancelled = threading.Event()
    canceller = threading.Thread(target=lambda: (handle.cancel(), cancelled.set()))
    canceller.start()
    time.sleep(0.05)
    assert not cancelled.is_set(), "cancel returned while the callback still ran"
    release.set()
    canceller.join(GUARD)
    assert cancelled.is_set() and finished == [True]
    time.sleep(0.02)
    assert finished == [True], "never again"


def test_registration_from_many_threads(loop: irqbypass.plugin.EventLoop) -> None:
    counts: list[int] = []
    lock = threading.Lock()
    tokens = [irqbypass.Eventfd() for _ in range(40)]
    try:

        def register(token: irqbypass.Eventfd) -> None:
            def take() -> None:
                value = token.read(0)
                with lock:
                    counts.append(value)

            loop.add_reader(token, take, owner=f"reader {token.fileno()}")
            loop.call_later(0.001, lambda: token.write(1), owner="writer")

        threads = [threading.Thread(target=register, args=(t,)) for t in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
        until(lambda: sum(counts) == len(tokens), "every reader got its interrupt")
        for handle in loop.handles():
            handle.cancel()
    finally:
        for token in tokens:
            token.close()


def test_close_with_callbacks_pending(loop: irqbypass.plugin.EventLoop) -> None:
    ran: list[str] = []
    with irqbypass.Eventfd() as token:
        reader = loop.add_reader(token, lambda: ran.append("reader"), owner="r")
        later = loop.call_later(30.0, lambda: ran.append("later"), owner="t")
        loop.close()
        loop.close()  # idempotent
        token.write(1)
        assert not reader.active and not later.active
        reader.cancel()  # still fine after close
        with pytest.raises(irqbypass.LoopClosedError, match="closed"):
            loop.call_later(0.0, lambda: None, owner="late")
        assert token.read(0) == 1
    assert ran == []
    assert loop.running_thread is not None and not loop.running_thread.is_alive()


def test_a_token_closed_under_its_reader_is_noticed_and_its_number_kept(
    loop: irqbypass.plugin.EventLoop,
) -> None:
    """The loop borrows an Eventfd it watches: closing it drops the reader,
    calls the callback once more (its read raises), and no new eventfd takes
    the number while the loop could still confuse the two."""
    errors: list[BaseException] = []

    def take() -> None:
        try:
            token.read(0)
        except irqbypass.EventfdClosedError as exc:
            errors.append(exc)

    token = irqbypass.Eventfd()
    handle = loop.add_reader(token, take, owner="r")
    token.close()
    until(lambda: errors, "the callback learns of the close")
    assert not handle.active
    assert loop.handles() == []


def test_seconds_no_float_can_hold_are_refused_as_any_bad_seconds() -> None:
    """An int of seconds beyond what a float holds (a hostile configuration
    value a plugin passes on): refused with the loop's own error, as a NaN or
    a negative number is, where the check itself raised OverflowError."""
    huge = 10**400
    with pytest.raises(irqbypass.InvalidEndpointError, match="watchdog_seconds"):
        irqbypass.plugin.EventLoop(watchdog_seconds=huge)
    own = irqbypass.plugin.EventLoop()
    try:
        for register in (
            lambda: own.call_later(huge, lambda: None, owner="x"),
            lambda: own.call_every(huge, lambda: None, owner="x"),
            lambda: own.call_every(1.0, lambda: None, owner="x", delay=huge),
        ):
            with pytest.raises(irqbypass.InvalidEndpointError, match="seconds"):
                register()
        assert own.handles() == []
    finally:
        own.close()


@pytest.mark.parametrize("failing", ["watchdog", "loop"])
def test_a_thread_that_cannot_start_leaves_no_registration_behind(
    monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The process at its thread limit (ulimit -u, a container's pids.max):
    the loop's first registration cannot start the loop's threads. It raised
    Python's RuntimeError and left the reader registered (its token borrowed)
    although the caller was told it failed; with the second thread refused,
    the loop then ran for good without a watchdog. Now the registration is
    taken off again, the error is the loop's (EAGAIN, saying what to raise),
    and the next registration starts what is missing. (Root ignores ulimit -u,
    so the limit is a start that fails, as Thread.start does at the limit.)"""
    irqbypass_loop = sys.modules["irqbypass._loop"]
    real = irqbypass_loop._start_thread
    refused: list[str] = []

    def at_the_limit(target: Callable[[], None], name: str) -> threading.Thread:
        if name.endswith("-watchdog") == (failing == "watchdog") and not refused:
            refused.append(name)
            raise RuntimeError("can't start new thread")
        return real(target, name)

    monkeypatch.setattr(irqbypass_loop, "_start_thread", at_the_limit)
    own = irqbypass.plugin.EventLoop(name="limited")
    try:
        with irqbypass.Eventfd() as token:
            with pytest.raises(irqbypass.IrqBypassError, match="cannot start its thread") as caught:
                own.add_reader(token, lambda: None, owner="first")
            assert caught.value.errno == errno.EAGAIN and "pids.max" in str(caught.value)
            assert refused and own.handles() == [], "the failed registration was left behind"
            with pytest.raises(irqbypass.IrqBypassError, match="cannot start its thread"):
                refused.clear()
                own.call_later(0.0, lambda: None, owner="second")
            assert own.handles() == []
            got: list[int] = []
            own.call_later(0.0, lambda: got.append(1), owner="third")  # the limit is gone
            until(lambda: got, "the loop runs")
            assert own._watchdog_thread is not None and own._watchdog_thread.is_alive()
    finally:
        own.close()


def test_a_token_closed_as_its_loop_closes_closes_without_an_error() -> None:
    """A token closed in one thread while its reader's loop closes in another
    (a VMM's shutdown): the reader, dropped, lets its callback find out on the
    loop, unless the loop is closed. Closed between that check and the call,
    the token's close() raised the loop's LoopClosedError, and no other
    borrower of the token was told of the close."""
    own = irqbypass.plugin.EventLoop(name="closing-too")
    token = irqbypass.Eventfd()
    own.add_reader(token, lambda: None, owner="reader")
    paused, resume = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def between(frame: Any, event: str, arg: object) -> None:
        # the reader has checked that the loop is open, and calls call_later
        if event == "call" and frame.f_code.co_name == "call_later" and not paused.is_set():
            paused.set()
            resume.wait(GUARD)

    def closes_the_token() -> None:
        sys.setprofile(between)
        try:
            token.close()
        except BaseException as exc:
            errors.append(exc)
        finally:
            sys.setprofile(None)

    closer = threading.Thread(target=closes_the_token)
    closer.start()
    try:
        assert paused.wait(GUARD), "the token's close reached its reader"
        own.close()
    finally:
        resume.set()
        closer.join(GUARD)
        own.close()
    assert errors == [] and token.closed
    assert own.handles() == []


@pytest.mark.parametrize("seconds", [float("inf"), 1e12], ids=["inf", "1e12"])
def test_a_watchdog_that_never_fires_still_watches(
    seconds: float, caplog: pytest.LogCaptureFixture
) -> None:
    """``watchdog_seconds=inf`` (no callback is ever too long) or any number
    whose quarter is beyond what a wait takes: the watchdog's first wait raised
    OverflowError, it logged an error and stopped. It now waits as long as a
    wait can, and goes on."""
    own = irqbypass.plugin.EventLoop(name="patient", watchdog_seconds=seconds)
    try:
        own.start()
        thread = own._watchdog_thread
        assert thread is not None and thread.ident is not None

        def waiting() -> bool:
            frame = sys._current_frames().get(thread.ident)  # type: ignore[arg-type]
            while frame is not None and frame.f_code.co_name != "wait":
                frame = frame.f_back
            return frame is not None

        until(lambda: not thread.is_alive() or waiting(), "the watchdog waits, or is gone")
        assert thread.is_alive(), "the watchdog stopped"
    finally:
        own.close()
    assert "cannot wait" not in caplog.text


@pytest.mark.usefixtures("guarded_sigint")
def test_a_close_cut_by_ctrl_c_is_finished_by_the_next_close() -> None:
    """close() waits for a callback that runs; a Ctrl-C in that wait (the VMM's
    shutdown, pressed twice) ended the close before its readers were cancelled
    and its fds released, and every later close() returned at once (the loop
    was marked closed): the epoll fd and the wakeup eventfd stayed open for
    good. The next close() now finishes the work."""
    own = irqbypass.plugin.EventLoop(name="cut-close")
    numbers = [own._epoll.fileno(), own._wakeup]
    inside, leave = threading.Event(), threading.Event()
    own.call_later(0.0, lambda: (inside.set(), leave.wait(GUARD)), owner="slow")
    assert inside.wait(GUARD), "the callback runs"
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_the_join() -> None:
        until(main_thread_joining, "close() waits for the callback")
        signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_the_join, daemon=True)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            own.close()
    finally:
        leave.set()
        interrupter.join(GUARD)
    own.close()  # the shutdown goes on
    assert [n for n in numbers if os.path.exists(f"/proc/self/fd/{n}")] == []
    assert own.handles() == []


def test_bad_arguments_are_refused() -> None:
    own = irqbypass.plugin.EventLoop()
    try:
        with pytest.raises(irqbypass.InvalidEndpointError, match="owner"):
            own.call_later(0.0, lambda: None, owner="")
        with pytest.raises(irqbypass.InvalidEndpointError, match="not callable"):
            own.call_later(0.0, 3, owner="x")  # type: ignore[arg-type]
        with pytest.raises(irqbypass.InvalidEndpointError, match="seconds"):
            own.call_every(float("nan"), lambda: None, owner="x")
        with pytest.raises(irqbypass.InvalidEndpointError, match="seconds"):
            own.call_later(-1.0, lambda: None, owner="x")
        with pytest.raises(irqbypass.InvalidEndpointError, match="fd"):
            own.add_reader("nope", lambda: None, owner="x")  # type: ignore[arg-type]
        with irqbypass.Eventfd() as token:
            first = own.add_reader(token, lambda: None, owner="one")
            with pytest.raises(irqbypass.InvalidEndpointError, match="already has a reader"):
                own.add_reader(token.fileno(), lambda: None, owner="two")
            first.cancel()
        assert own.running_thread is not None, "a registration started the thread"
    finally:
        own.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


_REAL_EPOLL = select.epoll


class _RefusingEpoll:
    """A real epoll set whose registrations fail, as ENOMEM would make them."""

    def __init__(self) -> None:
        self._epoll = _REAL_EPOLL()

    def register(self, fd: object, eventmask: int = 0) -> None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    def close(self) -> None:
        self._epoll.close()

    def __enter__(self) -> _RefusingEpoll:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.mark.parametrize("failing", ["eventfd", "register"])
def test_a_loop_that_cannot_be_made_leaks_no_fd(
    monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The epoll set and the wakeup eventfd are both closed when a later step
    of the constructor fails (EMFILE on the eventfd, ENOMEM on the register)."""
    if failing == "eventfd":

        def no_eventfd(*args: object) -> int:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "eventfd", no_eventfd)
    else:
        monkeypatch.setattr(select, "epoll", _RefusingEpoll)
    before = _open_fds()
    with pytest.raises(OSError) as caught:
        irqbypass.plugin.EventLoop()
    assert caught.value.errno in (errno.EMFILE, errno.ENOMEM)
    assert _open_fds() == before


def test_the_loop_threads_block_signals(loop: irqbypass.plugin.EventLoop) -> None:
    """Ctrl-C always reaches the main thread: the loop's threads block every
    asynchronous signal, so the kernel never picks them for SIGINT."""
    masks: list[set[signal.Signals]] = []
    loop.call_later(
        0.0, lambda: masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, [])), owner="m"
    )
    until(lambda: masks, "the timer runs")
    assert {signal.SIGINT, signal.SIGTERM} <= masks[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_the_process_loop_is_one_loop() -> None:
    assert irqbypass.event_loop() is irqbypass.event_loop()
    before = threading.active_count()
    seen: list[int] = []
    handles = [
        irqbypass.event_loop().call_later(0.0, lambda: seen.append(1), owner=f"t{i}")
        for i in range(200)
    ]
    until(lambda: len(seen) == 200, "all ran")
    assert threading.active_count() == before, "no thread per timer"
    for handle in handles:
        handle.cancel()


def test_the_loop_runs_inside_asyncio_with_no_thread() -> None:
    """Embedding: attached to an asyncio loop, the same readers and timers run
    on asyncio's thread, and the loop starts no thread of its own."""
    own = irqbypass.plugin.EventLoop(name="asyncio-loop")
    seen: list[tuple[str, threading.Thread]] = []

    async def main() -> None:
        own.attach(asyncio.get_running_loop())
        with irqbypass.Eventfd() as token:
            own.add_reader(
                token, lambda: seen.append(("read", threading.current_thread())), owner="r"
            )
            own.call_later(0.01, lambda: token.write(1), owner="w")
            ticks = own.call_every(
                0.005, lambda: seen.append(("tick", threading.current_thread())), owner="t"
            )
            while not any(kind == "read" for kind, _ in seen):
                await asyncio.sleep(0.005)
            # registration from another thread wakes asyncio through the loop's epoll fd
            done = threading.Event()
            threading.Thread(
                target=lambda: own.call_later(0.0, done.set, owner="other thread")
            ).start()
            while not done.is_set():
                await asyncio.sleep(0.005)
            ticks.cancel()
            for handle in own.handles():
                handle.cancel()
        own.detach()

    try:
        asyncio.run(asyncio.wait_for(main(), GUARD))
    finally:
        own.close()
    assert own.running_thread is None, "no thread of its own"
    assert {thread for _, thread in seen} == {threading.main_thread()}


def test_a_registration_that_ran_before_the_detach_starts_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timer registered from another thread under asyncio, which asyncio ran
    and the program detached after, before that registration reached its own
    "start the loop's thread if nothing runs it" step: the loop starts no
    thread, for nothing is left to run (before: one started, so about one run
    in 16 of this file failed test_the_loop_runs_inside_asyncio_with_no_thread,
    whose other thread lost the race on a loaded host)."""
    own = irqbypass.plugin.EventLoop(name="asyncio-loop")
    detached = threading.Event()
    real = own._ensure_running

    def late(asking: Any = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            assert detached.wait(GUARD), "the main thread never detached"
        real(asking)

    monkeypatch.setattr(own, "_ensure_running", late)

    async def main() -> None:
        own.attach(asyncio.get_running_loop())
        done = threading.Event()
        other = threading.Thread(target=lambda: own.call_later(0.0, done.set, owner="other"))
        other.start()
        while not done.is_set():  # asyncio ran it: the other thread is still in call_later
            await asyncio.sleep(0.005)
        own.detach()
        detached.set()
        await asyncio.to_thread(other.join)

    try:
        asyncio.run(asyncio.wait_for(main(), GUARD))
        assert own.running_thread is None, "a thread started for a timer that had run"
    finally:
        own.close()


async def _a_reader_at(number: int) -> None:
    """An asyncio reader of a pipe put at ``number`` runs when the pipe is written
    (with a hang guard): asyncio watches that number afresh."""
    host = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    try:
        os.dup2(read_end, number)
        got = asyncio.Event()
        host.add_reader(number, got.set)
        try:
            os.write(write_end, b"x")
            await asyncio.wait_for(got.wait(), GUARD)
        finally:
            host.remove_reader(number)
    finally:
        for fd in {read_end, write_end, number}:
            os.close(fd)


def test_closing_an_attached_loop_leaves_asyncio_no_stale_reader() -> None:
    """A loop closed while attached takes its epoll fd out of asyncio first:
    asyncio kept it, the number was reused by the VMM's next file, and
    asyncio, taking that reader for the one it had, never watched it."""

    async def main() -> None:
        own = irqbypass.plugin.EventLoop(name="closed-attached")
        own.attach(asyncio.get_running_loop())
        number = own._epoll.fileno()
        own.close()  # from asyncio's thread, while attached
        await _a_reader_at(number)

    asyncio.run(main())


def test_closing_an_attached_loop_from_another_thread_leaves_no_stale_reader() -> None:
    """The same from another thread: asyncio's thread takes the epoll fd out of
    its watch before the fd is closed, so no reused number is left unwatched."""

    async def main() -> None:
        own = irqbypass.plugin.EventLoop(name="closed-elsewhere")
        own.attach(asyncio.get_running_loop())
        number = own._epoll.fileno()
        closer = threading.Thread(target=own.close)
        closer.start()
        while closer.is_alive() or os.path.exists(f"/proc/self/fd/{number}"):
            await asyncio.sleep(0.005)  # asyncio's thread runs what close() handed it
        closer.join()
        await _a_reader_at(number)

    asyncio.run(asyncio.wait_for(main(), GUARD))


def test_closing_an_attached_loop_from_another_thread_releases_its_fds_as_asyncio_stops() -> None:
    """A close from another thread, asyncio stopping right after (a VMM's
    shutdown: a thread closes what it owns, the loop is stopped and closed):
    the fds are released by the close itself. Handed to asyncio's thread to
    do, the work waited behind the stop and was dropped with the loop: both
    fds stayed open for good."""
    host = asyncio.new_event_loop()
    own = irqbypass.plugin.EventLoop(name="closed-as-asyncio-stops")
    numbers: list[int] = []

    def shutdown() -> None:
        own.attach(host)
        numbers.extend((own._epoll.fileno(), own._wakeup))
        closer = threading.Thread(target=own.close)
        closer.start()
        closer.join(GUARD)
        host.stop()

    try:
        host.call_soon(shutdown)
        host.run_forever()
    finally:
        host.close()
    assert own.closed and numbers
    still = [n for n in numbers if os.path.exists(f"/proc/self/fd/{n}")]
    assert still == [], "the loop's fds were left open"


def _interrupted_under_asyncio(
    own: irqbypass.plugin.EventLoop,
    host: asyncio.AbstractEventLoop,
    register: Callable[[], object],
) -> None:
    """Attach ``own`` to ``host``, ``register()`` what the Ctrl-C will land in,
    and run ``host`` until that KeyboardInterrupt reaches its caller (a hang
    guard ends the run otherwise, and the test fails)."""

    async def main() -> None:
        own.attach(asyncio.get_running_loop())
        register()
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:  # a hang guard: the interrupt ends it
            await asyncio.sleep(0.005)

    with pytest.raises(KeyboardInterrupt):
        host.run_until_complete(main())


def _run_until(host: asyncio.AbstractEventLoop, condition: Callable[[], bool]) -> None:
    """Run ``host`` turn by turn until ``condition()`` holds (or the hang guard)."""
    deadline = time.monotonic() + GUARD
    while not condition() and time.monotonic() < deadline:
        host.run_until_complete(asyncio.sleep(0.005))


@pytest.mark.usefixtures("guarded_sigint")
def test_a_ctrl_c_in_a_callback_run_by_asyncio_reaches_the_vmm() -> None:
    """Attached to asyncio, the callbacks run on the VMM's (main) thread,
    where a Ctrl-C lands. One landing in a callback was taken for the
    callback's fault: the reader was removed (its endpoint then deaf) and the
    KeyboardInterrupt swallowed, so the VMM went on running. The interrupt now
    reaches asyncio's caller, and the reader stays."""
    own = irqbypass.plugin.EventLoop(name="interrupted-under-asyncio")
    host = asyncio.new_event_loop()
    ran: list[int] = []
    handles: list[irqbypass.plugin.LoopHandle] = []
    with irqbypass.Eventfd() as token:

        def callback() -> None:
            ran.append(token.read(0))
            if len(ran) == 1:
                signal.raise_signal(signal.SIGINT)  # the Ctrl-C lands here

        def register() -> None:
            handles.append(own.add_reader(token, callback, owner="reader"))
            token.write(1)

        try:
            _interrupted_under_asyncio(own, host, register)
            assert ran == [1] and handles[0].active, "the interrupted reader was removed"
            assert own.fault_count == 0
            token.write(2)  # the reader still serves, on the next turn
            _run_until(host, lambda: len(ran) >= 2)
            assert ran == [1, 2]
        finally:
            own.close()
            host.close()


@pytest.mark.usefixtures("guarded_sigint")
def test_a_ctrl_c_in_a_timer_run_by_asyncio_loses_no_other_timer() -> None:
    """Two timers due in one turn under asyncio, a Ctrl-C landing in the first:
    the interrupt reaches asyncio's caller, and the second, taken off the heap
    as due, still runs on a later turn (and the first, periodic, goes on)."""
    own = irqbypass.plugin.EventLoop(name="timers-under-asyncio")
    host = asyncio.new_event_loop()
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        if ran.count("first") == 1:
            signal.raise_signal(signal.SIGINT)

    def register() -> None:
        own.call_every(0.01, first, owner="first")
        own.call_later(0.0, lambda: ran.append("second"), owner="second")

    try:
        _interrupted_under_asyncio(own, host, register)
        _run_until(host, lambda: "second" in ran and ran.count("first") > 1)
        assert "second" in ran and ran.count("first") > 1, ran
        assert own.fault_count == 0
    finally:
        own.close()
        host.close()


def test_attach_after_the_thread_started_is_refused() -> None:
    own = irqbypass.plugin.EventLoop()
    try:
        own.start()

        async def main() -> None:
            with pytest.raises(irqbypass.LoopClosedError, match="before any endpoint"):
                own.attach(asyncio.get_running_loop())

        asyncio.run(main())
    finally:
        own.close()


def test_a_forked_child_gets_a_loop_of_its_own() -> None:
    irqbypass.event_loop().start()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            got: list[int] = []
            irqbypass.event_loop().call_later(0.0, lambda: got.append(1), owner="child")
            deadline = time.monotonic() + GUARD
            while not got and time.monotonic() < deadline:
                time.sleep(0.005)
            status = 0 if got else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_closes_what_the_parents_loop_watched_whatever_it_was_doing() -> None:
    """fork() while the process's loop was busy: its thread running a reader's
    callback, and its lock taken (the loop takes it around every callback; any
    thread takes it to add or cancel). The child, which has no such thread,
    closes the endpoints it inherited: cancelling that reader and closing its
    token must return. Before, the child waited for ever on the lock no
    thread of its own would release, and then for the callback to return."""
    loop = irqbypass.event_loop()
    inside, leave, fork_done = threading.Event(), threading.Event(), threading.Event()
    token = irqbypass.Eventfd()

    def busy() -> None:
        inside.set()
        leave.wait(GUARD)

    handle = loop.add_reader(token, busy, owner="busy")
    try:
        token.write(1)
        assert inside.wait(GUARD), "the callback runs"

        def holds_the_lock() -> None:
            with loop._lock:  # as the loop's thread, between two callbacks
                fork_done.wait(GUARD)

        holder = threading.Thread(target=holds_the_lock, daemon=True)
        holder.start()
        until(lambda: loop._lock.locked(), "the lock is taken")

        def child() -> int:
            handle.cancel()  # what the endpoint's close() does
            token.close()
            return 0 if handle.state == "cancelled" and token.closed else 3

        try:
            status = in_child(child)
        finally:
            fork_done.set()
            leave.set()
            holder.join(GUARD)
        assert status == 0, "the child hung (-1) or failed"
    finally:
        handle.cancel()
        token.close()


def test_a_forked_child_never_closes_a_number_the_parents_loop_had_again() -> None:
    """In the child, the parent's loop is dropped and its fds closed once: the
    loop object, freed or closed later, does not close them again, by then the
    numbers of the child's own files (a pipe put at those very numbers)."""
    loop = irqbypass.plugin.EventLoop()
    numbers = {loop._epoll.fileno(), loop._wakeup}
    irqbypass_loop = sys.modules["irqbypass._loop"]
    previous = irqbypass_loop._default
    irqbypass_loop._default = loop  # the process's loop, as the child inherits it
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                for number, end in zip(sorted(numbers), os.pipe(), strict=True):
                    os.dup2(end, number)  # the child's own files, at the numbers the loop had
                closed = loop.closed  # it takes no handle in the child
                loop.close()
                del loop
                gc.collect()
                still = {fd for fd in numbers if os.path.exists(f"/proc/self/fd/{fd}")}
                status = 3 if still != numbers else 4 * (not closed)
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        irqbypass_loop._default = previous
        loop.close()


def test_on_loop_thread_is_true_only_where_the_loop_turns() -> None:
    """irqbypass.plugin.on_loop_thread: in a callback of the loop's own thread,
    and under asyncio in asyncio's thread, True; in the main thread beside the
    loop's own thread, and in another thread beside asyncio, False."""
    own = irqbypass.plugin.EventLoop(name="which-thread")
    try:
        seen: list[bool] = []
        own.call_later(0.0, lambda: seen.append(irqbypass.plugin.on_loop_thread(own)), owner="t")
        deadline = time.monotonic() + GUARD
        while not seen and time.monotonic() < deadline:
            time.sleep(0.005)
        assert seen == [True]
        assert not irqbypass.plugin.on_loop_thread(own)
    finally:
        own.close()

    attached = irqbypass.plugin.EventLoop(name="which-thread-asyncio")
    elsewhere: list[bool] = []

    async def main() -> None:
        attached.attach(asyncio.get_running_loop())
        here = irqbypass.plugin.on_loop_thread(attached)
        await asyncio.to_thread(lambda: elsewhere.append(irqbypass.plugin.on_loop_thread(attached)))
        attached.detach()
        assert here

    try:
        asyncio.run(asyncio.wait_for(main(), GUARD))
    finally:
        attached.close()
    assert elsewhere == [False]
