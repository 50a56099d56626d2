"""Hostile objects at the Manager's API: whatever it is given, it does what the
docs say or raises an IrqBypassError with a clear message, and never leaves a
half-connected pair."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import pytest
import rel_support


class P(irqbypass.Producer):
    def __init__(self, token: Any, name: str = "p") -> None:
        super().__init__(token=token, name=name)
        self.calls: list[str] = []

    def add_consumer(self, consumer: irqbypass.Consumer) -> None:
        self.calls.append("add")

    def del_consumer(self, consumer: irqbypass.Consumer) -> None:
        self.calls.append("del")


class C(irqbypass.Consumer):
    def __init__(self, token: Any, name: str = "c") -> None:
        super().__init__(token=token, name=name)

    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass


def idle(mgr: irqbypass.Manager) -> bool:
    return len(mgr) == 0 and not mgr.pairs() and not mgr._running


NOT_ENDPOINTS = [None, 42, "dev0", object(), [1], {"token": 1}, P, irqbypass.Producer]


@pytest.mark.parametrize("thing", NOT_ENDPOINTS, ids=repr)
def test_registering_a_non_endpoint_is_einval(thing: Any) -> None:
    mgr = irqbypass.Manager()
    for register in (mgr.register_producer, mgr.register_consumer):
        with pytest.raises(irqbypass.InvalidEndpointError) as caught:
            register(thing)
        assert caught.value.errno == 22
        assert "subclass irqbypass." in str(caught.value)
    for unregister in (mgr.unregister_producer, mgr.unregister_consumer):
        assert unregister(thing) is False
    assert not mgr.is_registered(thing)
    assert idle(mgr)
    rel_support.COUNTERS["hostile manager: non-endpoints"] += 1


def test_an_endpoint_whose_init_skipped_super_is_einval_with_the_fix() -> None:
    class Lazy(P):
        def __init__(self) -> None:  # forgets super().__init__
            pass

    mgr = irqbypass.Manager()
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"super\(\).__init__"):
        mgr.register_producer(Lazy())
    assert idle(mgr)


class FlakyHash:
    """Hashable at construction, raising later (a mutable, stateful token)."""

    def __init__(self) -> None:
        self.broken = False

    def __hash__(self) -> int:
        if self.broken:
            raise ValueError("hash of a broken token")
        return 7

    def __eq__(self, other: object) -> bool:
        return self is other


class RaisingEq:
    """Collides with every other RaisingEq, and cannot be compared."""

    def __hash__(self) -> int:
        return 99

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")


def test_a_token_whose_hash_starts_raising_is_einval_and_changes_nothing() -> None:
    mgr = irqbypass.Manager()
    token = FlakyHash()
    p = P(token)
    token.broken = True
    with pytest.raises(irqbypass.InvalidEndpointError, match="cannot be used as a key") as caught:
        mgr.register_producer(p)
    assert isinstance(caught.value.__cause__, ValueError)
    assert idle(mgr)
    assert mgr.unregister_producer(p) is False
    assert mgr.find_producer(token) is None


def test_a_token_whose_eq_raises_on_collision_is_einval_and_changes_nothing() -> None:
    mgr = irqbypass.Manager()
    first, second = P(RaisingEq(), "first"), P(RaisingEq(), "second")
    mgr.register_producer(first)
    with pytest.raises(irqbypass.InvalidEndpointError, match="no comparing me"):
        mgr.register_producer(second)
    assert mgr.producers() == [first]
    # and a consumer that collides while being inserted leaves nothing behind
    c = C(RaisingEq())
    with pytest.raises(irqbypass.InvalidEndpointError):
        mgr.register_consumer(c)
    assert mgr.consumers() == [] and not mgr.pairs() and first.calls == []
    assert mgr.unregister_producer(first) is True
    assert idle(mgr)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


def test_an_exception_that_cannot_be_printed_still_gives_a_message() -> None:
    class Fails(P):
        def add_consumer(self, consumer: irqbypass.Consumer) -> None:
            raise Unprintable()

    mgr = irqbypass.Manager()
    mgr.register_consumer(C("t"))
    with pytest.raises(irqbypass.exceptions.ConnectError) as caught:
        mgr.register_producer(Fails("t"))
    assert "Unprintable: <unprintable>" in str(caught.value)
    assert isinstance(caught.value.__cause__, Unprintable)
    assert len(mgr) == 1 and not mgr.pairs()


def test_names_with_control_characters_or_that_raise_are_escaped_in_messages() -> None:
    class BadName(P):
        @property  # type: ignore[override]
        def name(self) -> str:
            raise RuntimeError("no name")

        @name.setter
        def name(self, value: str) -> None:
            pass

    mgr = irqbypass.Manager()
    evil = P("t", name="dev\x1b[2J\n\x00" + "x" * 500)
    mgr.register_producer(evil)
    with pytest.raises(irqbypass.exceptions.TokenInUseError) as caught:
        mgr.register_producer(P("t", name="other"))
    text = str(caught.value)
    assert "\x1b" not in text and "\n" not in text and "\x00" not in text
    assert "\\x1b[2J\\n\\x00" in text and len(text) < 400
    bad = BadName("u")
    mgr.register_producer(bad)
    with pytest.raises(
        irqbypass.exceptions.AlreadyRegisteredError, match="producer 'BadName' is already"
    ):
        mgr.register_producer(bad)


def test_unhashable_lookups_answer_none_not_typeerror() -> None:
    mgr = irqbypass.Manager()
    assert mgr.find_producer([1, 2]) is None  # type: ignore[arg-type]
    assert mgr.find_consumer({}) is None  # type: ignore[arg-type]
    assert mgr.find_producer(RaisingEq()) is None


class Vetoer:
    """A wrapper plugin that refuses every add before the method runs."""

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        raise PermissionError("policy forbids this pair")
        yield  # pragma: no cover


class Passer:
    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        return (yield)


def test_a_plugin_veto_names_the_plugin_not_the_endpoint() -> None:
    """Issue 12, defect 4: the veto was reported as "producer 'dev0'.add_consumer()
    raised PermissionError" although add_consumer was never called."""
    mgr = irqbypass.Manager()
    mgr.plugins.register(Passer(), name="passer")
    mgr.plugins.register(Vetoer(), name="vetoer")
    p = P("t", name="dev0")
    mgr.register_producer(p)
    with pytest.raises(irqbypass.exceptions.ConnectError) as caught:
        mgr.register_consumer(C("t"))
    text = str(caught.value)
    assert "plugin 'vetoer' raised PermissionError: policy forbids this pair" in text
    assert "irqbypass_add hook around producer 'dev0'.add_consumer()" in text
    assert "passer" not in text
    assert p.calls == []  # the method never ran
    assert isinstance(caught.value.__cause__, PermissionError)


def test_an_endpoint_failure_under_a_wrapper_still_names_the_endpoint() -> None:
    class Fails(P):
        def add_consumer(self, consumer: irqbypass.Consumer) -> None:
            raise OSError(16, "device busy")

    mgr = irqbypass.Manager()
    mgr.plugins.register(Passer(), name="passer")
    mgr.register_consumer(C("t"))
    with pytest.raises(irqbypass.exceptions.ConnectError) as caught:
        mgr.register_producer(Fails("t", name="dev0"))
    assert "producer 'dev0'.add_consumer() raised OSError" in str(caught.value)
    assert "plugin" not in str(caught.value)


class Counts:
    """Counts its stops and starts."""

    stops = starts = 0

    def stop(self) -> None:
        self.stops += 1

    def start(self) -> None:
        self.starts += 1


class Counting(Counts, P):
    pass


class CountingC(Counts, C):
    pass


def _unreadable(cls: type, callback: str) -> type:
    """``cls`` whose ``callback`` raises when read (a property, as a plugin's
    lazy attribute or ``__getattr__`` may)."""

    def read(self: object) -> None:
        raise RuntimeError(f"reading {callback} broke")

    return type(f"Unreadable{cls.__name__}", (cls,), {callback: property(read)})


@pytest.mark.parametrize("wrapped", [False, True], ids=["fast path", "wrapped"])
@pytest.mark.parametrize(
    ("side", "callback"),
    [
        ("producer", "stop"),
        ("producer", "start"),
        ("producer", "del_consumer"),
        ("consumer", "stop"),
        ("consumer", "start"),
    ],
)
def test_a_callback_that_raises_when_read_fails_as_that_callback(
    side: str, callback: str, wrapped: bool
) -> None:
    """A callback whose attribute raises when read is that callback failing:
    the sequence goes on, every other endpoint stopped is started again, the
    pair is made (and unmade), and a CallbackError names the callback. Before,
    the read escaped the sequence as itself, half-way: on the fast path the
    producer was left stopped and the consumer registered unpaired, its token
    held; wrapped, the endpoint was left in the index, never connected."""
    mgr = irqbypass.Manager()
    if wrapped:
        mgr.plugins.register(Passer(), name="passer")
    p = (_unreadable(Counting, callback) if side == "producer" else Counting)("t")
    c = (_unreadable(CountingC, callback) if side == "consumer" else CountingC)("t")
    well = c if side == "producer" else p
    told: list[str] = []
    mgr.register_producer(p)
    try:
        mgr.register_consumer(c)
    except irqbypass.exceptions.CallbackError as exc:
        told.append(str(exc))
    assert mgr.is_registered(c) and p.consumer is c and c.producer is p
    assert (well.stops, well.starts) == (1, 1), "the other endpoint was left stopped"
    try:
        assert mgr.unregister_consumer(c)
    except irqbypass.exceptions.CallbackError as exc:
        told.append(str(exc))
    assert not mgr.is_registered(c) and p.consumer is None and c.producer is None
    assert (well.stops, well.starts) == (2, 2)
    named = f"{side} '{p.name if side == 'producer' else c.name}'.{callback}() raised RuntimeError"
    assert told and all(named in t and f"reading {callback} broke" in t for t in told), told
    assert mgr.unregister_producer(p) and idle(mgr)


@pytest.mark.parametrize(
    "plugins",
    [42, "irqbypass-mock", irqbypass.load_plugins, object()],
    ids=["int", "str", "load_plugins", "object"],
)
def test_a_manager_refuses_plugins_that_are_no_plugin_host(plugins: Any) -> None:
    """``Manager(irqbypass.load_plugins)`` (the function, not its host) was
    taken: the first pairing then failed with a raw AttributeError half-way,
    the consumer left registered and unpaired. Now the constructor refuses it,
    as it refuses a guard_sigint that is no bool, saying what to pass."""
    with pytest.raises(irqbypass.IrqBypassError, match=r"irqbypass\.PluginHost") as caught:
        irqbypass.Manager(plugins)
    assert "load_plugins()" in str(caught.value)
