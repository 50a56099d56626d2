"""Model-based testing: random register/unregister sequences against semantics.md.

A hypothesis RuleBasedStateMachine drives one Manager with producers and
consumers on a small pool of tokens, each with a random subset of the optional
callbacks and random failing callbacks (Boom, now and then a KeyboardInterrupt,
or a call back into the manager, which it must refuse); every call is predicted
by ``rel_support.Model`` (the contract written out independently) down to the
exact callback log, the error class, its ``__cause__`` and ``.errors``, an
interrupt's note, and the state is compared after every step. Inside every
callback (and every ``irqbypass_pair``) the manager is looked at too: while a
pair connects or disconnects, both endpoints are registered and found by their
token, and the links are unset while connecting and still set while
disconnecting. Four managers: the fast path (no plugin), a pass-through wrapper
plugin, a wrapper that vetoes the adds of some endpoints, and a pass-through
wrapper with an ``irqbypass_pair`` plugin that refuses some pairs.

``IRQBYPASS_MACHINE_EXAMPLES`` (default 150) and ``IRQBYPASS_MACHINE_STEPS``
(default 50) scale the run.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import hypothesis.strategies as st
import irqbypass
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from rel_support import (
    CONSUMER_OPTIONAL,
    COUNTERS,
    PRODUCER_OPTIONAL,
    REENTER,
    Boom,
    Expected,
    Model,
    RConsumer,
    RProducer,
    make_manager,
    pairer,
    run_and_check,
)

EXAMPLES = int(os.environ.get("IRQBYPASS_MACHINE_EXAMPLES", "150"))
STEPS = int(os.environ.get("IRQBYPASS_MACHINE_STEPS", "50"))
TOKENS = (0, "t1")
MAX_ENDPOINTS = 6  # per side


def failures(callbacks: tuple[str, ...]) -> st.SearchStrategy[dict[str, type[BaseException]]]:
    """Which callbacks fail, and how (mostly Exception, sometimes an interrupt
    or a call back into the manager)."""
    kinds: st.SearchStrategy[type[BaseException]] = st.sampled_from(
        [Boom, Boom, Boom, KeyboardInterrupt, REENTER]
    )
    return st.dictionaries(st.sampled_from(callbacks), kinds, max_size=3)


class ManagerMachine(RuleBasedStateMachine):
    MODE = "fast"

    producers = Bundle("producers")
    consumers = Bundle("consumers")

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.mgr = make_manager(self.MODE, self.log)
        self.model = Model(self.MODE)
        self.everyone: list[Any] = []
        self.count = {"producer": 0, "consumer": 0}
        #: what the running call connects or disconnects (the model's word)
        self.expected: Expected | None = None
        #: what the looks from inside the callbacks found wrong
        self.inside: list[str] = []
        if (plugin := pairer(self.mgr)) is not None:
            plugin.probe = lambda p, c: self._look_inside(p, "pair")
        COUNTERS[f"machine.{self.MODE}.runs"] += 1

    def _op(self, what: str) -> None:
        COUNTERS[f"machine.{self.MODE}.operations"] += 1
        COUNTERS[f"machine.{what}"] += 1

    def _outcome(self, raised: BaseException | None) -> None:
        name = "ok" if raised is None else type(raised).__name__
        COUNTERS[f"machine.outcome.{name}"] += 1

    def _adopt(self, ep: Any) -> None:
        """A new endpoint: looked at from inside its callbacks; a REENTER
        failure unregisters the endpoint itself from inside its callback."""
        self.everyone.append(ep)
        ep.probe = self._look_inside
        if ep.side == "producer":
            ep.reenter = functools.partial(self.mgr.unregister_producer, ep)
        else:
            ep.reenter = functools.partial(self.mgr.unregister_consumer, ep)

    def _look_inside(self, ep: Any, callback: str) -> None:
        """semantics.md from inside a callback: the pair being connected is in
        its sides' indexes (entered first, erased only after a failed connect)
        and unlinked (linked after the starts); one being disconnected is still
        registered and linked (unlinked, then removed, after the sequence)."""
        COUNTERS["machine.looks from inside callbacks"] += 1
        expected = self.expected
        if expected is None or expected.pair is None:
            self.inside.append(f"{ep.name}.{callback} ran, but the model expects no callback")
            return
        p, c = expected.pair
        linked = (None, None) if expected.connect else (c, p)
        seen = {
            "registered": (self.mgr.is_registered(p), self.mgr.is_registered(c)),
            "found": (self.mgr.find_producer(p.token) is p, self.mgr.find_consumer(c.token) is c),
            "links": (p.consumer, c.producer),
        }
        want = {"registered": (True, True), "found": (True, True), "links": linked}
        if seen != want:
            self.inside.append(f"inside {ep.name}.{callback}: {seen} != {want}")

    def _run(self, call: Any, expected: Expected) -> BaseException | None:
        """Run one manager call against the model's prediction, looking inside."""
        self.expected, self.inside = expected, []
        try:
            raised = run_and_check(call, expected, self.log, len(self.log))
        finally:
            self.expected = None
        assert self.inside == [], self.inside
        return raised

    # -- making endpoints ----------------------------------------------------

    @precondition(lambda self: self.count["producer"] < MAX_ENDPOINTS)
    @rule(
        target=producers,
        token=st.sampled_from(TOKENS),
        defined=st.frozensets(st.sampled_from(PRODUCER_OPTIONAL)),
        fails=failures(PRODUCER_OPTIONAL),
        veto=st.booleans(),
    )
    def new_producer(
        self,
        token: Any,
        defined: frozenset[str],
        fails: dict[str, type[BaseException]],
        veto: bool,
    ) -> RProducer:
        self.count["producer"] += 1
        p = RProducer(
            self.log,
            token=token,
            name=f"p{self.count['producer']}",
            defined=defined,
            fails=fails,
            veto=veto,
        )
        self._adopt(p)
        return p

    @precondition(lambda self: self.count["consumer"] < MAX_ENDPOINTS)
    @rule(
        target=consumers,
        token=st.sampled_from(TOKENS),
        defined=st.frozensets(st.sampled_from(CONSUMER_OPTIONAL)),
        fails=failures(("add_producer", "del_producer", "stop", "start")),
        veto=st.booleans(),
    )
    def new_consumer(
        self,
        token: Any,
        defined: frozenset[str],
        fails: dict[str, type[BaseException]],
        veto: bool,
    ) -> RConsumer:
        self.count["consumer"] += 1
        c = RConsumer(
            self.log,
            token=token,
            name=f"c{self.count['consumer']}",
            defined=defined,
            fails=fails,
            veto=veto,
        )
        self._adopt(c)
        return c

    @rule(p=producers, fails=failures(PRODUCER_OPTIONAL))
    def refail_producer(self, p: RProducer, fails: dict[str, type[BaseException]]) -> None:
        p.fails = fails

    @rule(c=consumers, fails=failures(("add_producer", "del_producer", "stop", "start")))
    def refail_consumer(self, c: RConsumer, fails: dict[str, type[BaseException]]) -> None:
        c.fails = fails

    # -- the manager's operations ---------------------------------------------

    @rule(p=producers)
    def register_producer(self, p: RProducer) -> None:
        self._op("register_producer")
        expected = self.model.register(p, "producer")
        raised = self._run(lambda: self.mgr.register_producer(p), expected)
        self._outcome(raised)

    @rule(c=consumers, wrong_side=st.integers(0, 9))
    def register_consumer(self, c: RConsumer, wrong_side: int) -> None:
        if wrong_side == 0:
            self._consumer_as_producer(c)
            return
        self._op("register_consumer")
        expected = self.model.register(c, "consumer")
        raised = self._run(lambda: self.mgr.register_consumer(c), expected)
        self._outcome(raised)

    @rule(p=producers)
    def unregister_producer(self, p: RProducer) -> None:
        self._op("unregister_producer")
        expected = self.model.unregister(p, "producer")
        raised = self._run(lambda: self.mgr.unregister_producer(p), expected)
        self._outcome(raised)

    @rule(c=consumers)
    def unregister_consumer(self, c: RConsumer) -> None:
        self._op("unregister_consumer")
        expected = self.model.unregister(c, "consumer")
        raised = self._run(lambda: self.mgr.unregister_consumer(c), expected)
        self._outcome(raised)

    def _consumer_as_producer(self, c: RConsumer) -> None:
        """The wrong side is refused (EINVAL) and changes nothing."""
        self._op("wrong_side")
        expected = self.model.register(c, "producer")
        raised = self._run(
            lambda: self.mgr.register_producer(c),  # type: ignore[arg-type]
            expected,
        )
        self._outcome(raised)
        assert isinstance(raised, irqbypass.InvalidEndpointError)

    @invariant()
    def consistent(self) -> None:
        self.model.check_state(self.mgr, self.everyone)

    def teardown(self) -> None:
        """Unregister everything without failures: every successful add was
        matched by exactly one del, and nothing is left paired."""
        for ep in self.everyone:
            ep.fails = {}
        for ep in self.everyone:
            side = ep.side
            expected = self.model.unregister(ep, side)
            unregister = (
                self.mgr.unregister_producer if side == "producer" else self.mgr.unregister_consumer
            )
            self._run(functools.partial(unregister, ep), expected)
        self.model.check_state(self.mgr, self.everyone)
        assert len(self.mgr) == 0
        for ep in self.everyone:
            if ep.side == "consumer" or {"add_consumer", "del_consumer"} <= ep.defined:
                assert ep.added == ep.deleted, (ep, ep.added, ep.deleted)


class WrappedMachine(ManagerMachine):
    MODE = "pass"


class VetoMachine(ManagerMachine):
    MODE = "veto"


class PairMachine(ManagerMachine):
    MODE = "pair"


_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestFastPath = ManagerMachine.TestCase
TestFastPath.settings = _SETTINGS
TestWrappedPath = WrappedMachine.TestCase
TestWrappedPath.settings = _SETTINGS
TestVetoWrapper = VetoMachine.TestCase
TestVetoWrapper.settings = _SETTINGS
TestPairHook = PairMachine.TestCase
TestPairHook.settings = _SETTINGS
