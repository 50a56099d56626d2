"""Shared pieces of the reliability suite.

- Recording endpoints whose optional callbacks are chosen per object and whose
  callbacks fail on demand (an exception class per callback name).
- A wrapper plugin that logs every lifecycle hook it sees and can veto adds.
- :class:`Model`: semantics.md written out a second time, independently of
  ``core/irqbypass/manager.py``, to predict the exact callback log, the error
  (class, cause, ``.errors``) and the resulting state of every manager call.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import irqbypass
import irqbypass._manager
import irqbypass.exceptions
import irqbypass.plugin

#: name -> count, printed at the end of the session (see conftest.py)
COUNTERS: collections.Counter[str] = collections.Counter()

PRODUCER_OPTIONAL = ("add_consumer", "del_consumer", "stop", "start")
CONSUMER_OPTIONAL = ("stop", "start")
CONSUMER_REQUIRED = ("add_producer", "del_producer")
STEP = {
    "add_consumer": "add",
    "add_producer": "add",
    "del_consumer": "del",
    "del_producer": "del",
    "stop": "stop",
    "start": "start",
}


class Boom(Exception):
    """What a callback told to fail raises."""


class Veto(Exception):
    """What the vetoing wrapper raises from ``irqbypass_add`` (and the vetoing
    pairer from ``irqbypass_pair``)."""


#: a callback told to "fail" with this calls back into its manager (``reenter``)
#: and lets what that raised propagate: semantics.md says it is refused at once
REENTER = irqbypass.ReentrantCallError
#: what such a call back in raises (the manager's own words)
REENTERED = str(irqbypass._manager._reentered())


Probe = Callable[[Any, str], None]


class _Recording:
    """The part both sides share: log the call, run the probe, fail if told."""

    name: str
    log: list[str]
    fails: dict[str, type[BaseException]]
    probe: Probe | None
    reenter: Callable[[], object] | None
    added: int
    deleted: int

    def _setup(
        self,
        log: list[str],
        defined: frozenset[str],
        fails: Mapping[str, type[BaseException]] | None,
        veto: bool,
    ) -> None:
        self.log = log
        self.defined = defined
        self.fails = dict(fails or {})
        self.veto = veto
        self.probe = None
        self.reenter = None  # the call back into the manager, for a REENTER failure
        self.added = 0  # adds that returned normally
        self.deleted = 0  # dels called (whatever they did)
        self.stops = 0
        self.starts = 0

    def _call(self, callback: str) -> None:
        self.log.append(f"{self.name}.{callback}")
        step = STEP[callback]
        if step == "stop":
            self.stops += 1
        elif step == "start":
            self.starts += 1
        elif step == "del":
            self.deleted += 1
        if self.probe is not None:
            self.probe(self, callback)
        failure = self.fails.get(callback)
        if failure is REENTER and self.reenter is not None:
            self.reenter()  # raises ReentrantCallError, which propagates
            raise AssertionError(f"{self.name}.{callback}: calling back in was not refused")
        if failure is not None:
            raise failure(f"{self.name}.{callback} failed")
        if step == "add":
            self.added += 1


class RProducer(_Recording, irqbypass.Producer):
    """A producer defining exactly the optional callbacks in ``defined``."""

    def __init__(
        self,
        log: list[str],
        *,
        token: Hashable,
        name: str,
        defined: frozenset[str] = frozenset(PRODUCER_OPTIONAL),
        fails: Mapping[str, type[BaseException]] | None = None,
        veto: bool = False,
    ) -> None:
        super().__init__(token=token, name=name)
        self._setup(log, frozenset(defined), fails, veto)
        for callback in defined:
            setattr(self, callback, _bind(self, callback))


class RConsumer(_Recording, irqbypass.Consumer):
    """A consumer with the two required callbacks and the optional ones in ``defined``."""

    def __init__(
        self,
        log: list[str],
        *,
        token: Hashable,
        name: str,
        defined: frozenset[str] = frozenset(CONSUMER_OPTIONAL),
        fails: Mapping[str, type[BaseException]] | None = None,
        veto: bool = False,
    ) -> None:
        super().__init__(token=token, name=name)
        self._setup(log, frozenset(defined) | frozenset(CONSUMER_REQUIRED), fails, veto)
        for callback in defined:
            setattr(self, callback, _bind(self, callback))

    def add_producer(self, producer: irqbypass.Producer) -> None:  # type: ignore[override]
        self._call("add_producer")

    def del_producer(self, producer: irqbypass.Producer) -> None:  # type: ignore[override]
        self._call("del_producer")


def _bind(endpoint: _Recording, callback: str) -> Callable[..., None]:
    if STEP[callback] in ("add", "del"):

        def with_partner(partner: Any) -> None:
            endpoint._call(callback)

        return with_partner

    def without() -> None:
        endpoint._call(callback)

    return without


class Wrapper:
    """A plugin wrapping all four lifecycle hooks: logs ``W <step> <name>``
    before the call; with ``veto``, refuses the add of endpoints whose
    ``veto`` attribute is true (before the endpoint's callback runs)."""

    def __init__(self, log: list[str], *, veto: bool = False) -> None:
        self.log = log
        self.veto = veto

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.log.append(f"W add {endpoint.name}")
        if self.veto and getattr(endpoint, "veto", False):
            raise Veto(f"veto {endpoint.name}")
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.log.append(f"W del {endpoint.name}")
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.log.append(f"W stop {endpoint.name}")
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.log.append(f"W start {endpoint.name}")
        return (yield)


class Pairer:
    """A plugin implementing ``irqbypass_pair``: logs ``P pair <producer>
    <consumer>`` and refuses (Veto) a pair where either endpoint's ``veto`` is
    true. ``probe`` (if set) is called first, with the pair."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.probe: Callable[[Any, Any], None] | None = None

    @irqbypass.plugin.hookimpl
    def irqbypass_pair(self, producer: Any, consumer: Any) -> None:
        self.log.append(f"P pair {producer.name} {consumer.name}")
        if self.probe is not None:
            self.probe(producer, consumer)
        if producer.veto or consumer.veto:
            raise Veto(f"veto pair {producer.name} {consumer.name}")


def make_manager(mode: str, log: list[str]) -> irqbypass.Manager:
    """``fast``: no plugin; ``pass``: a pass-through wrapper; ``veto``: one that
    vetoes adds; ``pair``: a pass-through wrapper and a :class:`Pairer`."""
    mgr = irqbypass.Manager()
    if mode != "fast":
        mgr.plugins.register(Wrapper(log, veto=mode == "veto"), name=f"wrapper-{mode}")
    if mode == "pair":
        mgr.plugins.register(Pairer(log), name="pairer")
    return mgr


def pairer(mgr: irqbypass.Manager) -> Pairer | None:
    """The manager's :class:`Pairer`, if it has one."""
    plugin = mgr.plugins.pm.get_plugin("pairer")
    return plugin if isinstance(plugin, Pairer) else None


# -- the model ---------------------------------------------------------------

Exc = tuple[type[BaseException], str]


@dataclass
class Expected:
    """What one manager call must do."""

    log: list[str] = field(default_factory=list)
    #: the class the call raises (None: it returns)
    raises: type[BaseException] | None = None
    #: for ConnectError/CallbackError: (class, message) of ``__cause__``
    cause: Exc | None = None
    #: for ConnectError/CallbackError: every callback exception, in order
    errors: list[Exc] = field(default_factory=list)
    #: the message of a passed-through KeyboardInterrupt-like exception
    message: str | None = None
    #: for a passed-through interrupt: what its note must name (endpoint and callback)
    note: str | None = None
    returns: Any = None
    #: the pair the call connects or disconnects, and which (None: it does neither)
    pair: tuple[Any, Any] | None = None
    connect: bool = False


class Model:
    """semantics.md as a plain state machine over (producers, consumers) by token."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.producers: dict[Hashable, Any] = {}
        self.consumers: dict[Hashable, Any] = {}

    # what a callback position does under this mode: log it, and fail?
    def _invoke(self, ep: Any, callback: str, out: Expected) -> Exc | None:
        if callback not in ep.defined:
            return None  # absent: no call, no hook
        step = STEP[callback]
        if self.mode != "fast":
            out.log.append(f"W {step} {ep.name}")
            if self.mode == "veto" and step == "add" and ep.veto:
                return (Veto, f"veto {ep.name}")
        out.log.append(f"{ep.name}.{callback}")
        failure = ep.fails.get(callback)
        if failure is REENTER:
            return (REENTER, REENTERED)
        return (failure, f"{ep.name}.{callback} failed") if failure is not None else None

    @staticmethod
    def _note(ep: Any, callback: str) -> str:
        """What the note of an interrupt raised by ``ep.callback()`` names."""
        if callback == "pair":
            return f"the pairing of {ep.side} {ep.name!r}"
        return f"{ep.side} {ep.name!r}.{callback}()"

    def _connect(self, p: Any, c: Any, out: Expected) -> tuple[Exc | None, list[Exc]]:
        failures: list[Exc] = []
        if self.mode == "pair":  # irqbypass_pair: once, before any callback
            out.log.append(f"P pair {p.name} {c.name}")
            if p.veto or c.veto:
                return (Veto, f"veto pair {p.name} {c.name}"), failures

        def void(ep: Any, callback: str) -> None:
            exc = self._invoke(ep, callback, out)
            if exc is not None:
                failures.append(exc)

        void(p, "stop")
        void(c, "stop")
        failure = self._invoke(p, "add_consumer", out)
        if failure is None:
            failure = self._invoke(c, "add_producer", out)
            if failure is not None:
                void(p, "del_consumer")
        void(c, "start")
        void(p, "start")
        return failure, failures

    def _disconnect(self, p: Any, c: Any, out: Expected) -> list[Exc]:
        failures: list[Exc] = []
        for ep, callback in (
            (p, "stop"),
            (c, "stop"),
            (c, "del_producer"),
            (p, "del_consumer"),
            (c, "start"),
            (p, "start"),
        ):
            exc = self._invoke(ep, callback, out)
            if exc is not None:
                failures.append(exc)
        return failures

    @staticmethod
    def _report(out: Expected, decisive: Exc | None, failures: list[Exc]) -> None:
        everything = ([decisive] if decisive else []) + failures
        for cls, message in everything:
            if not issubclass(cls, Exception):  # KeyboardInterrupt passes through
                out.raises, out.message = cls, message
                name, callback = message.removesuffix(" failed").split(".")
                out.note = f"{name!r}.{callback}()"
                return
        if decisive is not None:
            out.raises, out.cause, out.errors = (
                irqbypass.exceptions.ConnectError,
                decisive,
                everything,
            )
        elif failures:
            out.raises, out.cause, out.errors = (
                irqbypass.exceptions.CallbackError,
                failures[0],
                failures,
            )

    def register(self, ep: Any, side: str) -> Expected:
        out = Expected()
        mine, theirs = (
            (self.producers, self.consumers)
            if side == "producer"
            else (self.consumers, self.producers)
        )
        if ep.side != side:
            out.raises = irqbypass.InvalidEndpointError
            return out
        held = mine.get(ep.token)
        if held is not None:
            out.raises = (
                irqbypass.exceptions.AlreadyRegisteredError
                if held is ep
                else irqbypass.exceptions.TokenInUseError
            )
            return out
        partner = theirs.get(ep.token)
        if partner is None:
            mine[ep.token] = ep
            return out
        p, c = (ep, partner) if side == "producer" else (partner, ep)
        out.pair, out.connect = (p, c), True
        failure, failures = self._connect(p, c, out)
        if failure is None:
            mine[ep.token] = ep
        self._report(out, failure, failures)
        return out

    def unregister(self, ep: Any, side: str) -> Expected:
        out = Expected(returns=False)
        mine, theirs = (
            (self.producers, self.consumers)
            if side == "producer"
            else (self.consumers, self.producers)
        )
        if mine.get(ep.token) is not ep:
            return out
        out.returns = True
        partner = theirs.get(ep.token)
        failures: list[Exc] = []
        if partner is not None:
            p, c = (ep, partner) if side == "producer" else (partner, ep)
            out.pair = (p, c)
            failures = self._disconnect(p, c, out)
        del mine[ep.token]
        self._report(out, None, failures)
        return out

    # -- checking ----------------------------------------------------------

    def check_state(self, mgr: irqbypass.Manager, everyone: list[Any]) -> None:
        """Registered sets, lookups and the pairing links of every endpoint."""
        assert {id(p) for p in mgr.producers()} == {id(p) for p in self.producers.values()}
        assert {id(c) for c in mgr.consumers()} == {id(c) for c in self.consumers.values()}
        assert len(mgr) == len(self.producers) + len(self.consumers)
        expected_pairs = {
            (id(p), id(self.consumers[t])) for t, p in self.producers.items() if t in self.consumers
        }
        assert {(id(p), id(c)) for p, c in mgr.pairs()} == expected_pairs
        for ep in everyone:
            registered = (self.producers if ep.side == "producer" else self.consumers).get(
                ep.token
            ) is ep
            assert mgr.is_registered(ep) is registered, ep
            if ep.side == "producer":
                want = self.consumers.get(ep.token) if registered else None
                assert ep.consumer is want, (ep, ep.consumer, want)
                if registered:
                    assert mgr.find_producer(ep.token) is ep
            else:
                want = self.producers.get(ep.token) if registered else None
                assert ep.producer is want, (ep, ep.producer, want)
                if registered:
                    assert mgr.find_consumer(ep.token) is ep
            # every stopped endpoint was started again
            if {"stop", "start"} <= ep.defined:
                assert ep.stops == ep.starts, (ep, ep.stops, ep.starts)


def run_and_check(
    call: Callable[[], Any], expected: Expected, log: list[str], mark: int
) -> BaseException | None:
    """Run one manager call and compare it with the model's prediction."""
    raised: BaseException | None = None
    result: Any = None
    COUNTERS["callbacks predicted and checked"] += sum(
        1 for entry in expected.log if not entry.startswith("W ")
    )
    try:
        result = call()
    except BaseException as exc:  # KeyboardInterrupt included, on purpose
        raised = exc
    assert log[mark:] == expected.log, (log[mark:], expected.log)
    if expected.raises is None:
        assert raised is None, f"unexpected {raised!r}"
        assert result == expected.returns
        return None
    assert type(raised) is expected.raises, (raised, expected.raises)
    assert isinstance(raised, BaseException)
    if expected.message is not None:
        assert str(raised) == expected.message
    if expected.note is not None:  # an interrupt let through names what it interrupted
        notes = getattr(raised, "__notes__", [])
        assert any(
            n.startswith("irqbypass: interrupted in ") and expected.note in n for n in notes
        ), (notes, expected.note)
    if expected.cause is not None:
        assert isinstance(raised, irqbypass.CallbackFailure)
        cause = raised.__cause__
        assert (type(cause), str(cause)) == expected.cause
        assert [(type(e), str(e)) for e in raised.errors] == expected.errors
        assert raised.errors[0] is cause
        # Boom and Veto carry no errno; a refused call back in is EDEADLK
        assert raised.errno == getattr(expected.cause[0], "errno", None)
        assert str(expected.cause[1]) in str(raised)  # the message names the failure
    if isinstance(raised, irqbypass.IrqBypassError):
        assert str(raised)  # every error says what was wrong
    return raised
