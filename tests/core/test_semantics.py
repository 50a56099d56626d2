"""One test (or more) per rule of semantics.md, on the fast path and the wrapped path.

The expected callback sequences are the kernel's (virt/lib/irqbypass.c
__connect/__disconnect); any deviation is a bug.
"""

from __future__ import annotations

import errno
import re
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import pytest
from recorders import (
    CONNECT,
    DISCONNECT,
    BareProducer,
    Boom,
    MinimalConsumer,
    RecordingConsumer,
    RecordingProducer,
)


class PassThrough:
    """A wrapper on every lifecycle hook that changes nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def _wrap(self, hook: str, side: str) -> Generator[None, None, None]:
        self.seen.append((hook, side))
        yield

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.seen.append(("add", side))
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.seen.append(("del", side))
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.seen.append(("stop", side))
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.seen.append(("start", side))
        return (yield)


@pytest.fixture(params=["fast", "wrapped"])
def mgr(request: pytest.FixtureRequest) -> Iterator[irqbypass.Manager]:
    """A manager on the fast path (no plugin) and one whose every hook is wrapped."""
    manager = irqbypass.Manager()
    if request.param == "wrapped":
        with manager.plugins.registered(PassThrough(), name="pass-through"):
            assert set(manager.plugins.wrapped) == {"add", "del", "stop", "start"}
            yield manager
    else:
        assert manager.plugins.wrapped == {}
        yield manager


@pytest.fixture
def log() -> list[str]:
    return []


# -- Endpoints ---------------------------------------------------------------


def test_links_are_none_while_unpaired(log: list[str]) -> None:
    p = RecordingProducer(log, token="t")
    c = RecordingConsumer(log, token="t")
    assert p.consumer is None and c.producer is None


def test_links_point_at_partner_once_paired(mgr: irqbypass.Manager, log: list[str]) -> None:
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    mgr.register_producer(p)
    assert p.consumer is None
    mgr.register_consumer(c)
    assert p.consumer is c and c.producer is p
    mgr.unregister_producer(p)
    assert p.consumer is None and c.producer is None


def test_links_set_only_after_both_starts(mgr: irqbypass.Manager) -> None:
    """The kernel sets prod->consumer / cons->producer after the starts."""
    seen: list[object] = []

    class Watching(RecordingProducer):
        def start(self) -> None:
            seen.append(self.consumer)

    p, c = Watching([], token="t"), RecordingConsumer([], token="t")
    mgr.register_consumer(c)
    mgr.register_producer(p)
    assert seen == [None] and p.consumer is c


def test_any_hashable_token_and_eventfd_tokens(mgr: irqbypass.Manager, log: list[str]) -> None:
    for token in (0, "x", (1, 2), frozenset({3})):
        p, c = RecordingProducer(log, token=token), RecordingConsumer(log, token=token)
        mgr.register_producer(p)
        mgr.register_consumer(c)
        assert p.consumer is c
    with irqbypass.Eventfd() as efd, efd.dup() as twin:
        p, c = RecordingProducer(log, token=efd), RecordingConsumer(log, token=twin)
        mgr.register_producer(p)
        mgr.register_consumer(c)
        assert p.consumer is c, "two fds of one eventfd are one token"


# -- Registering, rule 1: token None -> EINVAL, nothing changes --------------


def test_token_none_refused_at_construction() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError) as info:
        RecordingProducer([], token=None)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    with pytest.raises(irqbypass.InvalidEndpointError):
        RecordingConsumer([], token=None)  # type: ignore[arg-type]


def test_token_none_refused_at_registration(mgr: irqbypass.Manager, log: list[str]) -> None:
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    p._token = None  # type: ignore[assignment]  # bypass the constructor's check
    c._token = None  # type: ignore[assignment]
    for register in (mgr.register_producer, mgr.register_consumer):
        with pytest.raises(irqbypass.InvalidEndpointError) as info:
            register(p if register == mgr.register_producer else c)  # type: ignore[operator]
        assert info.value.errno == errno.EINVAL
    assert len(mgr) == 0 and log == []


def test_unhashable_token_refused() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError) as info:
        RecordingProducer([], token=["a"])  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL


# -- rule 2: a consumer without add_producer / del_producer -> EINVAL ---------


def test_consumer_without_required_callbacks_refused_at_construction() -> None:
    class NoDel(irqbypass.Consumer):
        def add_producer(self, producer: irqbypass.Producer) -> None: ...

    with pytest.raises(irqbypass.InvalidEndpointError, match="del_producer") as info:
        NoDel(token="t")
    assert info.value.errno == errno.EINVAL
    assert str(info.value) == (
        "NoDel lacks the required consumer callback(s) del_producer; define them as methods"
    )
    with pytest.raises(irqbypass.InvalidEndpointError, match="del_producer"):
        NoDel(token=None)  # told before what is wrong with the token


def test_a_producer_requires_no_callback() -> None:
    class Bare(irqbypass.Producer):
        pass

    assert Bare(token="t").consumer is None


def test_consumer_without_required_callbacks_refused_at_registration(
    mgr: irqbypass.Manager, log: list[str]
) -> None:
    p = RecordingProducer(log, token="t")
    mgr.register_producer(p)
    c = RecordingConsumer(log, token="t")
    c.add_producer = None  # type: ignore[method-assign,assignment]
    with pytest.raises(irqbypass.InvalidEndpointError) as info:
        mgr.register_consumer(c)
    assert info.value.errno == errno.EINVAL
    assert mgr.consumers() == [] and log == [] and p.consumer is None


# -- rule 3: one per token per side; the same object twice -> EBUSY ----------


@pytest.mark.parametrize("side", ["producer", "consumer"])
def test_second_endpoint_with_taken_token_is_busy(
    mgr: irqbypass.Manager, log: list[str], side: str
) -> None:
    cls = RecordingProducer if side == "producer" else RecordingConsumer
    register = getattr(mgr, f"register_{side}")
    first, second = cls(log, token="t", name="a"), cls(log, token="t", name="b")
    register(first)
    with pytest.raises(irqbypass.exceptions.TokenInUseError) as info:
        register(second)
    assert info.value.errno == errno.EBUSY
    assert isinstance(info.value, irqbypass.BusyError)
    assert getattr(mgr, f"{side}s")() == [first]


@pytest.mark.parametrize("side", ["producer", "consumer"])
def test_same_object_twice_is_busy(mgr: irqbypass.Manager, log: list[str], side: str) -> None:
    cls = RecordingProducer if side == "producer" else RecordingConsumer
    register = getattr(mgr, f"register_{side}")
    endpoint = cls(log, token="t")
    register(endpoint)
    with pytest.raises(irqbypass.exceptions.AlreadyRegisteredError) as info:
        register(endpoint)
    assert info.value.errno == errno.EBUSY
    assert log == []


def test_busy_registration_while_paired_calls_nothing(
    mgr: irqbypass.Manager, log: list[str]
) -> None:
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    mgr.register_producer(p)
    mgr.register_consumer(c)
    log.clear()
    with pytest.raises(irqbypass.exceptions.TokenInUseError):
        mgr.register_consumer(RecordingConsumer(log, token="t", name="c2"))
    assert log == [] and p.consumer is c


# -- rule 4: connect in the kernel's order -----------------------------------


def test_connect_order_producer_first(mgr: irqbypass.Manager, log: list[str]) -> None:
    mgr.register_producer(RecordingProducer(log, token="t"))
    assert log == []
    mgr.register_consumer(RecordingConsumer(log, token="t"))
    assert log == CONNECT


def test_connect_order_consumer_first(mgr: irqbypass.Manager, log: list[str]) -> None:
    mgr.register_consumer(RecordingConsumer(log, token="t"))
    assert log == []
    mgr.register_producer(RecordingProducer(log, token="t"))
    assert log == CONNECT


def test_optional_callbacks_absent_are_skipped(mgr: irqbypass.Manager, log: list[str]) -> None:
    p = BareProducer(token="t")
    c = MinimalConsumer(log, token="t")
    mgr.register_producer(p)
    mgr.register_consumer(c)
    assert log == ["c.add_producer"] and p.consumer is c
    mgr.unregister_consumer(c)
    assert log == ["c.add_producer", "c.del_producer"] and p.consumer is None


def test_different_tokens_do_not_pair(mgr: irqbypass.Manager, log: list[str]) -> None:
    p, c = RecordingProducer(log, token="a"), RecordingConsumer(log, token="b")
    mgr.register_producer(p)
    mgr.register_consumer(c)
    assert log == [] and p.consumer is None and mgr.pairs() == []


def test_consumer_add_failure_rolls_back_producer(mgr: irqbypass.Manager, log: list[str]) -> None:
    p = RecordingProducer(log, token="t")
    c = RecordingConsumer(log, token="t", fail="add_producer")
    mgr.register_producer(p)
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_consumer(c)
    assert log == [
        "p.stop",
        "c.stop",
        "p.add_consumer",
        "c.add_producer",
        "p.del_consumer",
        "c.start",
        "p.start",
    ]
    # rule 5: the one being registered is not; the partner stays, unpaired
    assert isinstance(info.value.__cause__, Boom)
    assert mgr.consumers() == [] and mgr.producers() == [p]
    assert p.consumer is None and c.producer is None


def test_producer_add_failure_skips_consumer_add(mgr: irqbypass.Manager, log: list[str]) -> None:
    c = RecordingConsumer(log, token="t")
    p = RecordingProducer(log, token="t", fail="add_consumer")
    mgr.register_consumer(c)
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_producer(p)
    assert log == ["p.stop", "c.stop", "p.add_consumer", "c.start", "p.start"]
    assert isinstance(info.value.__cause__, Boom)
    assert mgr.producers() == [] and mgr.consumers() == [c] and c.producer is None


def test_connect_error_carries_errno_of_cause(mgr: irqbypass.Manager) -> None:
    class Refusing(RecordingConsumer):
        def add_producer(self, producer: irqbypass.Producer) -> None:
            raise OSError(errno.ENOSPC, "no posted-interrupt slots")

    mgr.register_producer(RecordingProducer([], token="t"))
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_consumer(Refusing([], token="t"))
    assert info.value.errno == errno.ENOSPC
    assert "no posted-interrupt slots" in str(info.value)


def test_failed_endpoint_can_register_again_after_fix(
    mgr: irqbypass.Manager, log: list[str]
) -> None:
    p = RecordingProducer(log, token="t")
    c = RecordingConsumer(log, token="t", fail="add_producer")
    mgr.register_producer(p)
    with pytest.raises(irqbypass.exceptions.ConnectError):
        mgr.register_consumer(c)
    c.fail = ""
    mgr.register_consumer(c)
    assert p.consumer is c


# -- Unregistering -----------------------------------------------------------


def test_disconnect_order(mgr: irqbypass.Manager, log: list[str]) -> None:
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    mgr.register_producer(p)
    mgr.register_consumer(c)
    log.clear()
    assert mgr.unregister_consumer(c) is True
    assert log == DISCONNECT
    log.clear()
    mgr.register_consumer(c)
    log.clear()
    assert mgr.unregister_producer(p) is True
    assert log == DISCONNECT


def test_unregister_is_by_identity_not_token(mgr: irqbypass.Manager, log: list[str]) -> None:
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    mgr.register_producer(p)
    mgr.register_consumer(c)
    log.clear()
    impostor_p = RecordingProducer(log, token="t", name="p2")
    impostor_c = RecordingConsumer(log, token="t", name="c2")
    assert mgr.unregister_producer(impostor_p) is False
    assert mgr.unregister_consumer(impostor_c) is False
    assert log == [] and p.consumer is c and len(mgr) == 2


def test_unregister_unknown_changes_nothing(mgr: irqbypass.Manager, log: list[str]) -> None:
    assert mgr.unregister_producer(RecordingProducer(log, token="t")) is False
    assert mgr.unregister_consumer(RecordingConsumer(log, token="t")) is False
    assert log == [] and len(mgr) == 0


def test_unregister_frees_token(mgr: irqbypass.Manager, log: list[str]) -> None:
    p = RecordingProducer(log, token="t")
    mgr.register_producer(p)
    mgr.unregister_producer(p)
    p2 = RecordingProducer(log, token="t", name="p2")
    mgr.register_producer(p2)
    assert mgr.producers() == [p2]


@pytest.mark.parametrize("leaving", ["producer", "consumer"])
@pytest.mark.parametrize("closed", ["producer", "consumer"])
def test_a_paired_endpoint_is_disconnected_though_a_token_was_closed(
    mgr: irqbypass.Manager, log: list[str], closed: str, leaving: str
) -> None:
    """Rule 2 (the kernel disconnects through ``producer->consumer``): a pair on
    two fds of one eventfd, one of them closed while registered, is still
    disconnected when either end leaves. The partner was looked up by token, and
    a closed Eventfd equals only itself, so the endpoint left without a stop,
    del or start, both links still naming each other; a new producer on the
    eventfd then connected to a consumer that had never seen the del."""
    with irqbypass.Eventfd() as efd, efd.dup() as twin:
        p, c = RecordingProducer(log, token=efd), RecordingConsumer(log, token=twin)
        mgr.register_producer(p)
        mgr.register_consumer(c)
        (efd if closed == "producer" else twin).close()
        log.clear()
        if leaving == "producer":
            assert mgr.unregister_producer(p) is True
        else:
            assert mgr.unregister_consumer(c) is True
        assert log == DISCONNECT
        assert p.consumer is None and c.producer is None and mgr.pairs() == []
        stays = c if leaving == "producer" else p
        assert mgr.is_registered(stays) and len(mgr) == 1


def test_unregister_unpaired_calls_nothing(mgr: irqbypass.Manager, log: list[str]) -> None:
    p = RecordingProducer(log, token="t")
    mgr.register_producer(p)
    assert mgr.unregister_producer(p) is True
    assert log == []


# -- void callbacks that raise: the kernel's sequence, then a report ---------

VOID_FAILURES = [
    ("producer", "stop"),
    ("consumer", "stop"),
    ("consumer", "start"),
    ("producer", "start"),
]


@pytest.mark.parametrize(("side", "step"), VOID_FAILURES)
def test_stop_start_failure_in_connect_still_pairs(
    mgr: irqbypass.Manager, log: list[str], side: str, step: str
) -> None:
    p = RecordingProducer(log, token="t", fail=step if side == "producer" else "")
    c = RecordingConsumer(log, token="t", fail=step if side == "consumer" else "")
    mgr.register_producer(p)
    with pytest.raises(irqbypass.exceptions.CallbackError) as info:
        mgr.register_consumer(c)
    assert log == CONNECT, "the sequence runs on exactly as the kernel's"
    assert p.consumer is c and mgr.consumers() == [c]
    assert isinstance(info.value.__cause__, Boom) and info.value.errors == (info.value.__cause__,)
    assert "was registered and paired" in str(info.value)


@pytest.mark.parametrize(
    ("side", "step"), [*VOID_FAILURES, ("consumer", "del_producer"), ("producer", "del_consumer")]
)
def test_failure_in_disconnect_still_unregisters(
    mgr: irqbypass.Manager, log: list[str], side: str, step: str
) -> None:
    p, c = RecordingProducer(log, token="t"), RecordingConsumer(log, token="t")
    mgr.register_producer(p)
    mgr.register_consumer(c)
    log.clear()
    (p if side == "producer" else c).fail = step
    with pytest.raises(irqbypass.exceptions.CallbackError) as info:
        mgr.unregister_producer(p)
    assert log == DISCONNECT
    assert mgr.producers() == [] and mgr.consumers() == [c]
    assert p.consumer is None and c.producer is None
    assert "was unregistered" in str(info.value)


def test_rollback_and_start_failures_are_all_reported(
    mgr: irqbypass.Manager, log: list[str]
) -> None:
    p = RecordingProducer(log, token="t", fail="del_consumer")
    c = RecordingConsumer(log, token="t", fail="add_producer")
    mgr.register_producer(p)
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_consumer(c)
    assert [str(e) for e in info.value.errors] == [
        "c.add_producer failed",
        "p.del_consumer failed",
    ]
    assert str(info.value.__cause__) == "c.add_producer failed"
    assert "c.start" in log and "p.start" in log


def test_keyboard_interrupt_passes_through_after_restart(
    mgr: irqbypass.Manager, log: list[str]
) -> None:
    class Interrupted(RecordingConsumer):
        def add_producer(self, producer: irqbypass.Producer) -> None:
            self.log.append("c.add_producer")
            raise KeyboardInterrupt

    p = RecordingProducer(log, token="t")
    mgr.register_producer(p)
    with pytest.raises(KeyboardInterrupt):
        mgr.register_consumer(Interrupted(log, token="t"))
    assert log[-3:] == ["p.del_consumer", "c.start", "p.start"]
    assert mgr.consumers() == [] and p.consumer is None


# -- Concurrency and cost -----------------------------------------------------


def test_reentrant_call_gets_clear_error(mgr: irqbypass.Manager, log: list[str]) -> None:
    errors: list[BaseException] = []

    class Reentering(RecordingConsumer):
        def add_producer(self, producer: irqbypass.Producer) -> None:
            try:
                mgr.register_producer(RecordingProducer([], token="other"))
            except irqbypass.ReentrantCallError as exc:
                errors.append(exc)
                raise

    mgr.register_producer(RecordingProducer(log, token="t"))
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        mgr.register_consumer(Reentering(log, token="t"))
    assert isinstance(info.value.__cause__, irqbypass.ReentrantCallError)
    assert errors and errors[0].errno == errno.EDEADLK
    assert "deadlock" in str(errors[0])
    # the manager is usable afterwards
    mgr.register_consumer(RecordingConsumer(log, token="t", name="c2"))


def test_other_thread_waits_for_the_lock(mgr: irqbypass.Manager) -> None:
    """A second thread serializes behind a callback; it is not refused."""
    inside, release, done = threading.Event(), threading.Event(), threading.Event()

    class Slow(RecordingConsumer):
        def add_producer(self, producer: irqbypass.Producer) -> None:
            inside.set()
            release.wait(30)

    def other() -> None:
        mgr.register_producer(RecordingProducer([], token="u"))
        done.set()

    mgr.register_producer(RecordingProducer([], token="t"))
    worker = threading.Thread(target=mgr.register_consumer, args=(Slow([], token="t"),))
    worker.start()
    inside.wait(30)
    second = threading.Thread(target=other)
    second.start()
    assert not done.wait(0.2), "the second thread must wait while a callback runs"
    release.set()
    worker.join(30)
    second.join(30)
    assert done.is_set() and len(mgr.producers()) == 2


def test_lookup_is_a_dict_not_a_walk() -> None:
    """O(1): finding a partner compares no token but the one looked up."""
    compared: list[int] = []

    class CountingToken:
        def __init__(self, value: int) -> None:
            self.value = value

        def __hash__(self) -> int:
            return hash(self.value)

        def __eq__(self, other: object) -> bool:
            compared.append(self.value)
            return isinstance(other, CountingToken) and other.value == self.value

    mgr = irqbypass.Manager()
    for i in range(2000):
        mgr.register_producer(BareProducer(token=CountingToken(i)))
    compared.clear()
    mgr.register_consumer(MinimalConsumer([], token=CountingToken(1999)))
    assert len(compared) <= 4, f"{len(compared)} token comparisons for one registration"


def test_only_endpoints_can_register(mgr: irqbypass.Manager) -> None:
    class Duck:
        token = "t"
        name = "duck"

        def add_producer(self, producer: object) -> None: ...

        def del_producer(self, producer: object) -> None: ...

    for register in (mgr.register_producer, mgr.register_consumer):
        with pytest.raises(irqbypass.InvalidEndpointError, match="subclass") as info:
            register(Duck())  # type: ignore[arg-type]
        assert info.value.errno == errno.EINVAL
    assert len(mgr) == 0


class _FailingConsumer(RecordingConsumer):
    """A recording consumer whose callback ``fail`` raises OSError(ENODEV,
    "<callback> boom"), semantics.md's example error."""

    def _step(self, what: str) -> None:
        self.log.append(f"{self.name}.{what}")
        if what == self.fail:
            raise OSError(errno.ENODEV, f"{what} boom")


def _message_of(fail: str) -> str:
    """The message of what semantics.md's example with a failing ``fail`` raises."""
    mgr = irqbypass.Manager()
    producer, consumer = (
        BareProducer(token="t", name="p"),
        _FailingConsumer([], token="t", fail=fail),
    )
    mgr.register_producer(producer)
    try:
        mgr.register_consumer(consumer)
        if fail == "del_producer":
            mgr.unregister_producer(producer)
    except irqbypass.CallbackFailure as exc:
        return str(exc)
    raise AssertionError(f"a failing {fail} raised nothing")


def test_the_messages_semantics_md_shows_are_the_real_ones() -> None:
    """docs/semantics.md quotes a ConnectError and two CallbackErrors (up to its
    "..."): each is the start of what the manager says. Before, two had drifted
    ("'p' stays registered" for "producer 'p' ...", "The state is" for "The
    registration state is")."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "semantics.md").read_text()
    shown = [" ".join(b.split()) for b in re.findall(r"```text\n(.*?)```", page, re.S)]
    assert len(shown) == 3, "docs/semantics.md's three example messages"
    for fail, text in zip(("add_producer", "start", "del_producer"), shown, strict=True):
        real = " ".join(_message_of(fail).split())
        if text.endswith("..."):
            assert real.startswith(text.removesuffix("...").rstrip()), (text, real)
        else:
            assert real == text
