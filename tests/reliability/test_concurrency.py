"""Threads against one manager: serialization, invariants, no deadlock, reentrancy.

Workers are daemon threads joined with a generous timeout: a hang fails the
test (it names the stuck threads) instead of hanging the suite. The timeout is
a hang guard, not a speed assertion. ``IRQBYPASS_STRESS_OPS`` (default 300)
sets the operations per thread.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import irqbypass
import irqbypass.exceptions
import pytest
from rel_support import COUNTERS, Boom, RConsumer, RProducer, make_manager

OPS_PER_THREAD = int(os.environ.get("IRQBYPASS_STRESS_OPS", "300"))
HANG_GUARD_SECONDS = 120.0
TOKENS = range(4)


def run_workers(targets: list[Callable[[], None]]) -> None:
    """Run each target in a daemon thread; fail (never hang) if one is stuck."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [
        threading.Thread(target=guarded(t), name=f"worker-{i}", daemon=True)
        for i, t in enumerate(targets)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"deadlock or hang: {stuck} still running after {HANG_GUARD_SECONDS}s"
    if errors:
        raise errors[0]


class Serialization:
    """A probe for every callback: records when two callbacks of one manager
    overlap (they must not: one lock serializes every change)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inside = 0
        self.max_inside = 0
        self.calls = 0

    def __call__(self, endpoint: Any, callback: str) -> None:
        with self._lock:
            self.inside += 1
            self.calls += 1
            self.max_inside = max(self.max_inside, self.inside)
        time.sleep(0)  # let another thread run while "in" the callback
        with self._lock:
            self.inside -= 1


@pytest.mark.parametrize("mode", ["fast", "pass"])
@pytest.mark.parametrize("threads", [2, 4, 8])
def test_random_operations_from_threads(threads: int, mode: str) -> None:
    log: list[str] = []
    mgr = make_manager(mode, log)
    probe = Serialization()
    endpoints: list[Any] = []
    for token in TOKENS:
        for k in range(2):
            # one endpoint of each pair fails now and then, in a void callback
            p_fails = {"start": Boom} if k == 1 else {}
            c_fails = {"stop": Boom} if (k == 1 and token % 2) else {}
            endpoints.append(RProducer(log, token=token, name=f"p{token}.{k}", fails=p_fails))
            endpoints.append(RConsumer(log, token=token, name=f"c{token}.{k}", fails=c_fails))
    for ep in endpoints:
        ep.probe = probe
    outcomes: dict[str, int] = {}
    outcome_lock = threading.Lock()

    def worker(seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            for _ in range(OPS_PER_THREAD):
                ep = rng.choice(endpoints)
                register = rng.random() < 0.55
                try:
                    if ep.side == "producer":
                        (mgr.register_producer if register else mgr.unregister_producer)(ep)
                    else:
                        (mgr.register_consumer if register else mgr.unregister_consumer)(ep)
                    name = "ok"
                except (irqbypass.BusyError, irqbypass.exceptions.CallbackError) as exc:
                    name = type(exc).__name__
                with outcome_lock:
                    outcomes[name] = outcomes.get(name, 0) + 1

        return run

    run_workers([worker(1000 * threads + i) for i in range(threads)])
    COUNTERS["concurrency operations"] += threads * OPS_PER_THREAD
    COUNTERS["concurrency callbacks"] += probe.calls
    assert sum(outcomes.values()) == threads * OPS_PER_THREAD
    assert probe.max_inside == 1, "two callbacks ran at once: the lock did not serialize"

    # one endpoint per token per side, lookups agree, links symmetric
    producers, consumers = mgr.producers(), mgr.consumers()
    assert len({p.token for p in producers}) == len(producers)
    assert len({c.token for c in consumers}) == len(consumers)
    for p in producers:
        assert mgr.find_producer(p.token) is p
        partner = mgr.find_consumer(p.token)
        assert p.consumer is partner
        if partner is not None:
            assert partner.producer is p
    for ep in endpoints:
        if not mgr.is_registered(ep):
            assert (ep.consumer if ep.side == "producer" else ep.producer) is None
    assert {(p.token) for p, _ in mgr.pairs()} == (
        {p.token for p in producers} & {c.token for c in consumers}
    )

    # unregister everything: every add matched by a del, every stop by a start
    for ep in endpoints:
        ep.fails.clear()
    for ep in endpoints:
        (mgr.unregister_producer if ep.side == "producer" else mgr.unregister_consumer)(ep)
    assert len(mgr) == 0
    for ep in endpoints:
        assert ep.added == ep.deleted, ep
        assert ep.stops == ep.starts, ep
        assert (ep.consumer if ep.side == "producer" else ep.producer) is None


# -- reentrancy ---------------------------------------------------------------

REENTRANT_POSITIONS = [
    ("p", "stop"),
    ("c", "stop"),
    ("p", "add_consumer"),
    ("c", "add_producer"),
    ("c", "start"),
    ("p", "start"),
    ("c", "del_producer"),
    ("p", "del_consumer"),
]


@pytest.mark.parametrize("mode", ["fast", "pass"])
@pytest.mark.parametrize(("who", "callback"), REENTRANT_POSITIONS)
def test_reentrant_call_is_refused(who: str, callback: str, mode: str) -> None:
    """Every kind of manager call from inside any callback: ReentrantCallError
    (EDEADLK), never a deadlock; read-only lookups work; the outer operation
    completes as usual."""
    log: list[str] = []
    mgr = make_manager(mode, log)
    p, c = RProducer(log, token="t", name="p"), RConsumer(log, token="t", name="c")
    other_p = RProducer(log, token="o", name="op")
    other_c = RConsumer(log, token="o", name="oc")
    mgr.register_producer(other_p)
    seen: list[str] = []

    def probe(endpoint: Any, name: str) -> None:
        if endpoint.name != who or name != callback:
            return
        for attempt in (
            lambda: mgr.register_producer(other_p),
            lambda: mgr.register_consumer(other_c),
            lambda: mgr.unregister_producer(other_p),
            lambda: mgr.unregister_consumer(other_c),  # not registered: still refused
        ):
            try:
                attempt()
            except irqbypass.ReentrantCallError as exc:
                assert exc.errno == 35  # EDEADLK
                seen.append("refused")
            else:
                seen.append("allowed")
        assert mgr.find_producer("o") is other_p
        assert other_p in mgr.producers()

    p.probe = c.probe = probe
    run_workers([lambda: (mgr.register_producer(p), mgr.register_consumer(c))[0]])
    run_workers([lambda: mgr.unregister_consumer(c)])
    # stop and start run in the connect and again in the disconnect
    assert seen == ["refused"] * 4 * (2 if callback in ("stop", "start") else 1)
    assert set(map(id, mgr.producers())) == {id(other_p), id(p)}
    assert p.consumer is None and c.producer is None and other_p.consumer is None
    assert p.stops == p.starts == 2 and c.stops == c.starts == 2
    COUNTERS["reentrancy cases"] += 1


def test_reentrant_error_from_add_fails_the_connect() -> None:
    """A callback that lets ReentrantCallError escape from add: a ConnectError
    caused by it, and the manager stays usable."""
    log: list[str] = []
    mgr = irqbypass.Manager()
    p, c = RProducer(log, token="t", name="p"), RConsumer(log, token="t", name="c")
    intruder = RProducer(log, token="x", name="x")

    def probe(endpoint: Any, name: str) -> None:
        if name == "add_producer":
            mgr.register_producer(intruder)

    c.probe = probe
    mgr.register_producer(p)
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_consumer(c)
    assert isinstance(info.value.__cause__, irqbypass.ReentrantCallError)
    assert not mgr.is_registered(c) and not mgr.is_registered(intruder)
    c.probe = None
    mgr.register_consumer(c)
    assert p.consumer is c


def test_callback_may_use_another_manager() -> None:
    """The refusal is per manager: a callback may register with another one."""
    log: list[str] = []
    first, second = irqbypass.Manager(), irqbypass.Manager()
    p, c = RProducer(log, token="t", name="p"), RConsumer(log, token="t", name="c")
    elsewhere = RProducer(log, token="t", name="elsewhere")
    c.probe = lambda ep, name: (
        second.register_producer(elsewhere) if name == "add_producer" else None
    )
    first.register_producer(p)
    first.register_consumer(c)
    assert second.is_registered(elsewhere) and p.consumer is c


@pytest.mark.parametrize("mode", ["fast", "pass"])
def test_call_from_another_thread_waits_for_the_lock(mode: str) -> None:
    """A callback hands work to a second thread that calls the same manager:
    that call waits until the first operation released the lock (it is
    serialized, not refused and not deadlocked), then runs in full."""
    log: list[str] = []
    mgr = make_manager(mode, log)
    p, c = RProducer(log, token="t", name="p"), RConsumer(log, token="t", name="c")
    p2, c2 = RProducer(log, token="u", name="p2"), RConsumer(log, token="u", name="c2")
    mgr.register_consumer(c2)
    entered, done = threading.Event(), threading.Event()
    observed: dict[str, Any] = {}
    helper: list[threading.Thread] = []

    def second() -> None:
        entered.set()
        try:
            mgr.register_producer(p2)  # connects to c2: a full callback sequence
            observed["result"] = "ok"
        except BaseException as exc:
            observed["result"] = exc
        done.set()

    def probe(endpoint: Any, name: str) -> None:
        if endpoint is c and name == "add_producer":
            t = threading.Thread(target=second, name="second", daemon=True)
            helper.append(t)
            t.start()
            assert entered.wait(HANG_GUARD_SECONDS), "the second thread never started"
            # it must not get through while this callback holds the manager's lock
            observed["finished_while_held"] = done.wait(0.2)

    c.probe = probe
    mgr.register_producer(p)
    run_workers([lambda: mgr.register_consumer(c)])
    (t,) = helper
    t.join(HANG_GUARD_SECONDS)
    assert not t.is_alive(), "the second thread deadlocked"
    assert observed == {"finished_while_held": False, "result": "ok"}
    # serialized: the whole first connect, then the whole second one
    first = ["p.stop", "c.stop", "p.add_consumer", "c.add_producer", "c.start", "p.start"]
    again = ["p2.stop", "c2.stop", "p2.add_consumer", "c2.add_producer", "c2.start", "p2.start"]
    assert [e for e in log if not e.startswith("W ")] == first + again
    assert p.consumer is c and p2.consumer is c2
