"""Fault injection at every callback position of connect and disconnect.

Each position fails in turn, raised by the endpoint's callback itself or by a
wrapper plugin refusing the hook (for ``add``, a veto), with an Exception or a
KeyboardInterrupt, with either side registering last. Expected sequences and
states are written out here by hand from semantics.md (not derived from the
model of test_state_machine.py), and after every failure the manager must still
work: the same endpoints pair, unpair and re-register cleanly.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import pytest
from rel_support import COUNTERS, Boom, RConsumer, RProducer, Wrapper

CONNECT = ["p.stop", "c.stop", "p.add_consumer", "c.add_producer", "c.start", "p.start"]
DISCONNECT = ["p.stop", "c.stop", "c.del_producer", "p.del_consumer", "c.start", "p.start"]

CONNECT_POSITIONS = [
    "p.stop",
    "c.stop",
    "p.add_consumer",
    "c.add_producer",
    "c.add_producer+p.del_consumer",  # the rollback fails too
    "c.start",
    "p.start",
]
DISCONNECT_POSITIONS = DISCONNECT


class FailingHook:
    """A wrapper plugin that raises instead of calling through, for one
    endpoint's one step: for ``add`` that is a veto."""

    def __init__(self, step: str, name: str, exc: type[BaseException]) -> None:
        self.step, self.name, self.exc = step, name, exc

    def _maybe_fail(self, step: str, endpoint: Any) -> None:
        if step == self.step and endpoint.name == self.name:
            raise self.exc(f"hook {step} {endpoint.name} refused")

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self._maybe_fail("add", endpoint)
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self._maybe_fail("del", endpoint)
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self._maybe_fail("stop", endpoint)
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self._maybe_fail("start", endpoint)
        return (yield)


STEP_OF = {
    "stop": "stop",
    "start": "start",
    "add_consumer": "add",
    "add_producer": "add",
    "del_consumer": "del",
    "del_producer": "del",
}


def setup(
    position: str, how: str, exc: type[BaseException], path: str
) -> tuple[irqbypass.Manager, list[str], RProducer, RConsumer, list[str]]:
    """The manager and the pair; ``position`` is made to fail. Returns the
    callback log entries (``who.callback``) that fail, in order."""
    log: list[str] = []
    p = RProducer(log, token="t", name="p")
    c = RConsumer(log, token="t", name="c")
    mgr = irqbypass.Manager()
    failing = position.split("+")
    if how == "endpoint":
        for entry in failing:
            who, callback = entry.split(".")
            (p if who == "p" else c).fails[callback] = exc
        if path == "wrapped":
            mgr.plugins.register(Wrapper([]), name="pass-through")
    else:
        (entry,) = failing
        who, callback = entry.split(".")
        mgr.plugins.register(FailingHook(STEP_OF[callback], who, exc), name="failing-hook")
    return mgr, log, p, c, failing


def check_error(
    raised: BaseException | None, exc: type[BaseException], cls: type, causes: list[str], how: str
) -> None:
    """The error the caller got: ``cls`` with ``causes`` (or the interrupt itself)."""

    def message(entry: str) -> str:
        who, callback = entry.split(".")
        return f"hook {STEP_OF[callback]} {who} refused" if how == "hook" else f"{entry} failed"

    assert raised is not None, "the failure was not reported"
    if exc is KeyboardInterrupt:
        assert type(raised) is KeyboardInterrupt
        assert str(raised) == message(causes[0])
        return
    assert type(raised) is cls, raised
    assert isinstance(raised, irqbypass.CallbackFailure)
    assert isinstance(raised.__cause__, Boom)
    assert str(raised.__cause__) == message(causes[0])
    assert [str(e) for e in raised.errors] == [message(e) for e in causes]
    assert all(type(e) is Boom for e in raised.errors)
    assert message(causes[0]) in str(raised)


def call(fn: Any, *args: Any) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as exc:  # KeyboardInterrupt included, on purpose
        return exc
    return None


def check_still_works(
    mgr: irqbypass.Manager, p: RProducer, c: RConsumer, *, balanced: bool = True
) -> None:
    """Failures cleared: the manager still pairs and unpairs these two.
    ``balanced``: every stop had its start and every add its del (not so when a
    hook refused to call through to a stop or a del)."""
    p.fails.clear()
    c.fails.clear()
    if mgr.plugins.pm.has_plugin("failing-hook"):
        mgr.plugins.unregister(name="failing-hook")
    for ep in (p, c):
        if not mgr.is_registered(ep):
            (mgr.register_producer if ep is p else mgr.register_consumer)(ep)  # type: ignore[operator]
    assert p.consumer is c and c.producer is p
    assert mgr.unregister_producer(p) is True
    assert mgr.unregister_consumer(c) is True
    assert len(mgr) == 0 and p.consumer is None and c.producer is None
    if balanced:
        assert p.stops == p.starts and c.stops == c.starts
        assert p.added == p.deleted and c.added == c.deleted


EXCS = [pytest.param(Boom, id="exception"), pytest.param(KeyboardInterrupt, id="interrupt")]
HOWS = [
    pytest.param("endpoint", "fast", id="callback-fast"),
    pytest.param("endpoint", "wrapped", id="callback-wrapped"),
    pytest.param("hook", "wrapped", id="hook-refuses"),
]


CONNECT_CASES = [
    pytest.param(position, *how.values, id=f"{position}-{how.id}")
    for position in CONNECT_POSITIONS
    for how in HOWS
    if not (how.values[0] == "hook" and "+" in position)  # one refusing hook per case
]


@pytest.mark.parametrize("exc", EXCS)
@pytest.mark.parametrize("last", ["producer", "consumer"])
@pytest.mark.parametrize(("position", "how", "path"), CONNECT_CASES)
def test_connect_fault(
    position: str, how: str, path: str, last: str, exc: type[BaseException]
) -> None:
    COUNTERS["fault injection cases"] += 1
    mgr, log, p, c, failing = setup(position, how, exc, path)
    first, second = (c, p) if last == "producer" else (p, c)
    register = {p: mgr.register_producer, c: mgr.register_consumer}
    register[first](first)  # type: ignore[operator]
    assert log == []
    raised = call(register[second], second)

    add_failed = failing[0] in ("p.add_consumer", "c.add_producer")
    # the expected log, by hand
    if failing[0] == "p.add_consumer":
        expected = ["p.stop", "c.stop", "p.add_consumer", "c.start", "p.start"]
    elif failing[0] == "c.add_producer":
        expected = ["p.stop", "c.stop", "p.add_consumer", "c.add_producer", "p.del_consumer"]
        expected += ["c.start", "p.start"]
    else:
        expected = list(CONNECT)
    if how == "hook":
        expected.remove(failing[0])  # the hook refused before the callback ran
    assert log == expected

    if add_failed:
        check_error(raised, exc, irqbypass.exceptions.ConnectError, failing, how)
        # the endpoint being registered is not registered; its partner is, unpaired
        assert not mgr.is_registered(second)  # type: ignore[arg-type]
        assert mgr.is_registered(first)  # type: ignore[arg-type]
        assert p.consumer is None and c.producer is None
        assert mgr.pairs() == []
        if exc is not KeyboardInterrupt:
            text = str(raised)
            assert "was not registered" in text and "stays registered, unpaired" in text
    else:
        check_error(raised, exc, irqbypass.exceptions.CallbackError, failing, how)
        assert mgr.is_registered(p) and mgr.is_registered(c)
        assert p.consumer is c and c.producer is p
        assert mgr.pairs() == [(p, c)]
    # every stopped endpoint was started again, and the token bookkeeping holds
    if how == "endpoint":
        assert p.stops == p.starts == 1 and c.stops == c.starts == 1
    assert len(mgr) == (1 if add_failed else 2)
    check_still_works(mgr, p, c, balanced=how == "endpoint")


@pytest.mark.parametrize("exc", EXCS)
@pytest.mark.parametrize(("how", "path"), HOWS)
@pytest.mark.parametrize("leaving", ["producer", "consumer"])
@pytest.mark.parametrize("position", DISCONNECT_POSITIONS)
def test_disconnect_fault(
    position: str, leaving: str, how: str, path: str, exc: type[BaseException]
) -> None:
    COUNTERS["fault injection cases"] += 1
    mgr, log, p, c, failing = setup(position, how, exc, path)
    # the failures are armed for the disconnect only
    saved_p, saved_c = dict(p.fails), dict(c.fails)
    p.fails.clear()
    c.fails.clear()
    hook = mgr.plugins.pm.get_plugin("failing-hook")
    if hook is not None:
        hook.step, armed_step = "none", hook.step
    mgr.register_producer(p)
    mgr.register_consumer(c)
    del log[:]
    p.fails.update(saved_p)
    c.fails.update(saved_c)
    if hook is not None:
        hook.step = armed_step

    gone, stays = (p, c) if leaving == "producer" else (c, p)
    unregister = mgr.unregister_producer if gone is p else mgr.unregister_consumer
    raised = call(unregister, gone)

    expected = list(DISCONNECT)
    if how == "hook":
        expected.remove(failing[0])
    assert log == expected
    check_error(raised, exc, irqbypass.exceptions.CallbackError, failing, how)
    if exc is not KeyboardInterrupt:
        assert "was unregistered and disconnected" in str(raised)
    # unregistered, disconnected; the partner stays registered, unpaired
    assert not mgr.is_registered(gone)  # type: ignore[arg-type]
    assert mgr.is_registered(stays)  # type: ignore[arg-type]
    assert p.consumer is None and c.producer is None
    assert mgr.pairs() == [] and len(mgr) == 1
    if how == "endpoint":
        assert p.stops == p.starts == 2 and c.stops == c.starts == 2
    # the token is free again on that side: unregistering twice changes nothing
    mark = len(log)
    assert unregister(gone) is False  # type: ignore[arg-type]
    assert log[mark:] == []
    check_still_works(mgr, p, c, balanced=how == "endpoint")


@pytest.mark.parametrize("exc", EXCS)
def test_every_position_failing_at_once(exc: type[BaseException]) -> None:
    """All six callbacks of a disconnect raise: all six still run, in order,
    and every failure is reported (or the first interrupt passes through)."""
    COUNTERS["fault injection cases"] += 1
    log: list[str] = []
    p = RProducer(log, token="t", name="p")
    c = RConsumer(log, token="t", name="c")
    mgr = irqbypass.Manager()
    mgr.register_producer(p)
    mgr.register_consumer(c)
    del log[:]
    for entry in DISCONNECT:
        who, callback = entry.split(".")
        (p if who == "p" else c).fails[callback] = exc
    raised = call(mgr.unregister_consumer, c)
    assert log == DISCONNECT
    if exc is KeyboardInterrupt:
        assert type(raised) is KeyboardInterrupt and str(raised) == "p.stop failed"
    else:
        assert isinstance(raised, irqbypass.exceptions.CallbackError)
        assert [str(e) for e in raised.errors] == [f"{e} failed" for e in DISCONNECT]
        assert raised.__cause__ is raised.errors[0]
    assert len(mgr) == 1 and mgr.is_registered(p) and p.consumer is None
