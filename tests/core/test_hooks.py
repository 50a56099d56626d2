"""The pluggy lifecycle hooks: wrappers see every call, can veto, and the fast
path (no plugin) behaves exactly as the wrapped path."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import pytest
from irqbypass import _hookspecs as hookspecs
from recorders import CONNECT, DISCONNECT, Boom, RecordingConsumer, RecordingProducer

ROOT = Path(__file__).resolve().parents[2]


class Tracer:
    """Wraps every lifecycle hook and records what it saw, before and after."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def _trace(self, step: str, endpoint: Any) -> Generator[None, None, None]:
        self.log.append(f"trace {endpoint.name}.{step}")
        try:
            yield
        except BaseException as exc:
            self.log.append(f"trace {endpoint.name}.{step} raised {exc}")
            raise

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        yield from self._trace("add", endpoint)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        yield from self._trace("del", endpoint)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        yield from self._trace("stop", endpoint)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        yield from self._trace("start", endpoint)


def _pair_life(mgr: irqbypass.Manager, log: list[str]) -> None:
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    mgr.register_producer(p)
    mgr.register_consumer(c)
    mgr.unregister_consumer(c)
    mgr.unregister_producer(p)


def test_wrapper_sees_every_callback_of_connect_and_disconnect() -> None:
    log: list[str] = []
    mgr = irqbypass.Manager()
    with mgr.plugins.registered(Tracer(log)):
        _pair_life(mgr, log)
    traced = [entry for entry in log if entry.startswith("trace")]
    calls = [entry for entry in log if not entry.startswith("trace")]
    assert calls == CONNECT + DISCONNECT
    assert len(traced) == len(calls) == 12
    # each trace comes right before its call
    for i, entry in enumerate(log):
        if entry.startswith("trace"):
            assert log[i + 1].split(".")[0] == entry.split()[1].split(".")[0]


def test_wrapper_veto_is_a_failed_connect() -> None:
    class Veto:
        @irqbypass.plugin.hookimpl(wrapper=True)
        def irqbypass_add(
            self, endpoint: Any, partner: Any, side: str
        ) -> Generator[None, None, None]:
            if side == "consumer":
                raise PermissionError("audit: pairing not allowed")
            return (yield)

    log: list[str] = []
    mgr = irqbypass.Manager()
    mgr.plugins.register(Veto(), name="veto")
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    mgr.register_producer(p)
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_consumer(c)
    assert isinstance(info.value.__cause__, PermissionError)
    # the consumer's add never ran; the producer's half was rolled back
    assert log == ["p.stop", "c.stop", "p.add_consumer", "p.del_consumer", "c.start", "p.start"]
    assert mgr.consumers() == [] and p.consumer is None


def test_plain_hookimpl_observes_and_counts_as_plugged_in() -> None:
    seen: list[str] = []

    class Observer:
        @irqbypass.plugin.hookimpl
        def irqbypass_stop(self, endpoint: Any, side: str) -> None:
            seen.append(side)

    log: list[str] = []
    mgr = irqbypass.Manager()
    with mgr.plugins.registered(Observer()):
        assert set(mgr.plugins.wrapped) == {"stop"}
        _pair_life(mgr, log)
    assert seen == ["producer", "consumer"] * 2
    assert log == CONNECT + DISCONNECT
    assert mgr.plugins.wrapped == {}, "unregistering restores the fast path"


def test_hooks_are_not_called_for_absent_callbacks() -> None:
    log: list[str] = []

    class Bare(irqbypass.Producer):
        pass

    mgr = irqbypass.Manager()
    with mgr.plugins.registered(Tracer(log)):
        p = Bare(token="t", name="p")
        c = RecordingConsumer(log, token="t")
        mgr.register_producer(p)
        mgr.register_consumer(c)
    assert log == [
        "trace c.stop",
        "c.stop",
        "trace c.add",
        "c.add_producer",
        "trace c.start",
        "c.start",
    ]


Scenario = Callable[[irqbypass.Manager, list[str]], None]


def _fail_consumer_add(mgr: irqbypass.Manager, log: list[str]) -> None:
    mgr.register_producer(RecordingProducer(log, token="t"))
    mgr.register_consumer(RecordingConsumer(log, token="t", fail="add_producer"))


def _fail_producer_add(mgr: irqbypass.Manager, log: list[str]) -> None:
    mgr.register_consumer(RecordingConsumer(log, token="t"))
    mgr.register_producer(RecordingProducer(log, token="t", fail="add_consumer"))


def _fail_start(mgr: irqbypass.Manager, log: list[str]) -> None:
    mgr.register_producer(RecordingProducer(log, token="t", fail="start"))
    mgr.register_consumer(RecordingConsumer(log, token="t"))


def _fail_del(mgr: irqbypass.Manager, log: list[str]) -> None:
    c = RecordingConsumer(log, token="t", fail="del_producer")
    mgr.register_producer(RecordingProducer(log, token="t"))
    mgr.register_consumer(c)
    mgr.unregister_consumer(c)


def _busy(mgr: irqbypass.Manager, log: list[str]) -> None:
    mgr.register_producer(RecordingProducer(log, token="t"))
    mgr.register_producer(RecordingProducer(log, token="t", name="p2"))


@pytest.mark.parametrize(
    "scenario",
    [_pair_life, _fail_consumer_add, _fail_producer_add, _fail_start, _fail_del, _busy],
)
def test_fast_path_and_wrapped_path_behave_alike(scenario: Scenario) -> None:
    def run(wrapped: bool) -> tuple[list[str], str, list[str], list[str]]:
        log: list[str] = []
        mgr = irqbypass.Manager()
        if wrapped:
            mgr.plugins.register(Tracer([]), name="tracer")
            assert len(mgr.plugins.wrapped) == 4
        error = ""
        try:
            scenario(mgr, log)
        except irqbypass.IrqBypassError as exc:
            error = f"{type(exc).__name__}: {exc} <- {exc.__cause__!r} errno={exc.errno}"
        return (
            log,
            error,
            [p.name for p in mgr.producers()],
            [c.name for c in mgr.consumers()],
        )

    assert run(wrapped=False) == run(wrapped=True)


def test_failure_inside_wrapped_call_reaches_wrapper() -> None:
    log: list[str] = []
    mgr = irqbypass.Manager()
    mgr.plugins.register(Tracer(log), name="tracer")
    mgr.register_producer(RecordingProducer(log, token="t"))
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_consumer(RecordingConsumer(log, token="t", fail="add_producer"))
    assert "trace c.add raised c.add_producer failed" in log
    assert isinstance(info.value.__cause__, Boom)


# -- every hook has a test and a docs heading (the llm/datasette rule) --------


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("irqbypass_"))


def test_hookspecs_are_the_documented_set() -> None:
    assert _hook_names() == [
        "irqbypass_add",
        "irqbypass_configure",
        "irqbypass_del",
        "irqbypass_pair",
        "irqbypass_register_kinds",
        "irqbypass_start",
        "irqbypass_stop",
    ]


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_has_a_test(hook: str) -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    uses = tests.count(f"def {hook}(")
    assert uses >= 1, f"no test implements {hook}"


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_has_a_docs_heading(hook: str) -> None:
    guide = ROOT / "docs" / "plugin-guide.md"
    if not guide.exists():
        pytest.fail("docs/plugin-guide.md is missing")
    headings = re.findall(r"^#+\s+`?([\w]+)`?\s*$", guide.read_text(), flags=re.M)
    assert hook in headings, f"docs/plugin-guide.md has no heading for {hook}"
