"""A running topology changes in place (issue 18): attach, detach, reconcile,
shared and VMM-owned tokens, counts kept across re-opens.

Every test records each endpoint's callbacks and asserts that the pairs a
change does not name saw none: no stop, no start, no add, no del, no close.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._config import parse_config
from irqbypass._topology import Topology, differences

pytestmark = pytest.mark.usefixtures("no_fd_leak")


class Recorder:
    """Kinds ``rec-src`` and ``rec-sink`` whose endpoints journal every call
    (``open p0``, ``stop c1``...) and fail on demand; ``rec-src`` counts the
    ``fire`` calls as ``fired``, ``rec-sink`` counts ``deliver`` as ``delivered``."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.fail: set[str] = set()
        #: each failure happens once (a new device that fails, the old one reopens)
        self.once = False

    def act(self, what: str) -> None:
        self.log.append(what)
        if what in self.fail:
            if self.once:
                self.fail.discard(what)
            raise irqbypass.DeviceError(f"{what} failed", errno=5)

    def of(self, name: str) -> list[str]:
        return [e for e in self.log if e.split()[1] == name]

    def make(self, spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
        rec = self
        opts = spec.options_reader()
        level = opts.get_int("level", 0)
        opts.finish()

        class Journal:
            """What both ends journal alike."""

            name: str

            def open(self) -> None:
                rec.act(f"open {self.name}")

            def close(self) -> None:
                rec.act(f"close {self.name}")

            def stop(self) -> None:
                rec.act(f"stop {self.name}")

            def start(self) -> None:
                rec.act(f"start {self.name}")

        class Source(Journal, irqbypass.Producer):
            fired = 0

            def add_consumer(self, consumer: Any) -> None:
                rec.act(f"add {self.name}")

            def del_consumer(self, consumer: Any) -> None:
                rec.act(f"del {self.name}")

            def stats(self) -> dict[str, int]:
                return {"fired": self.fired, "level": level}

        class Sink(Journal, irqbypass.Consumer):
            delivered = 0

            def add_producer(self, producer: Any) -> None:
                rec.act(f"add {self.name}")

            def del_producer(self, producer: Any) -> None:
                rec.act(f"del {self.name}")

            def stats(self) -> dict[str, int]:
                return {"delivered": self.delivered}

        cls = Source if spec.side == "producer" else Sink
        return cls(token=spec.token, name=spec.name)

    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        register.producer("rec-src", self.make)
        register.consumer("rec-sink", self.make)
        register.consumer("rec-absent", self.make, availability=lambda: "no such device here")


def pair(n: int, *, token: str | None = None, level: int = 0, sink: str = "rec-sink") -> str:
    token = token or f"t{n}"
    options = f"options = {{ level = {level} }}\n" if level else ""
    return (
        f'[[producers]]\nname = "p{n}"\nkind = "rec-src"\ntoken = "{token}"\n{options}'
        f'[[consumers]]\nname = "c{n}"\nkind = "{sink}"\ntoken = "{token}"\n'
    )


def pairs(*ns: int) -> str:
    return "".join(pair(n) for n in ns)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def host(rec: Recorder) -> Iterator[irqbypass.PluginHost]:
    plugins = irqbypass.PluginHost()
    with plugins.registered(rec, name="rec"):
        yield plugins


@pytest.fixture
def topo(host: irqbypass.PluginHost, rec: Recorder) -> Iterator[Topology]:
    topology = Topology(parse_config(pairs(0, 1, 2), file="live.toml"), host)
    topology.apply()
    rec.log.clear()
    yield topology
    # whatever the test did, the ledger's indexes agree (a failed change included)
    assert topology._ledger.violations() == []
    topology.teardown()
    assert topology._ledger.violations() == []


def untouched(rec: Recorder, *names: str) -> None:
    for name in names:
        assert rec.of(name) == [], f"{name} was touched: {rec.of(name)}"


def paired(topology: Topology) -> dict[str, bool]:
    return {row.token: row.paired for row in topology.status()}


# -- attach and detach ---------------------------------------------------------


def test_attach_pairs_new_entries_and_touches_no_other_pair(topo: Topology, rec: Recorder) -> None:
    topo.attach(parse_config(pair(7), file="plug.toml"))
    assert paired(topo) == {"t0": True, "t1": True, "t2": True, "t7": True}
    assert rec.log == ["open c7", "open p7", "stop p7", "stop c7", "add p7", "add c7",
                       "start c7", "start p7"]  # fmt: skip
    untouched(rec, "p0", "c0", "p1", "c1", "p2", "c2")
    assert len(topo.manager.pairs()) == 4


def test_attach_of_a_consumer_pairs_with_a_running_lonely_producer(
    host: irqbypass.PluginHost, rec: Recorder
) -> None:
    text = pairs(0) + '[[producers]]\nname = "p9"\nkind = "rec-src"\ntoken = "t9"\n'
    with Topology(parse_config(text, file="live.toml"), host) as topology:
        rec.log.clear()
        topology.attach(parse_config(pair(9).split("[[consumers]]")[0].replace(
            "producers", "consumers").replace('"p9"', '"c9"').replace("rec-src", "rec-sink"),
            file="plug.toml"))  # fmt: skip
        assert paired(topology)["t9"]
        untouched(rec, "p0", "c0")
        topology.detach(["c9"])
        assert not paired(topology)["t9"] and "close c9" in rec.log
        assert topology.entry("p9") is not None and topology.entry("p9").opened  # type: ignore[union-attr]


def test_attach_failing_halfway_undoes_itself_and_nothing_else(
    topo: Topology, rec: Recorder
) -> None:
    rec.fail = {"open p8"}
    tokens_before = dict(topo.tokens)
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.attach(parse_config(pair(7) + pair(8), file="plug.toml"))
    message = str(info.value)
    assert "attaching to live.toml: open of producer 'p8' (kind rec-src) failed" in message
    assert "open p8 failed" in message and info.value.errno == 5
    assert {p.config.name for p in topo.placed} == {"p0", "c0", "p1", "c1", "p2", "c2"}
    assert topo.tokens == tokens_before and len(topo.manager) == 6
    opened = [e.split()[1] for e in rec.log if e.startswith("open") and e != "open p8"]
    closed = [e.split()[1] for e in rec.log if e.startswith("close")]
    assert sorted(opened) == sorted(closed) == ["c7", "c8", "p7"]
    untouched(rec, "p0", "c0", "p1", "c1", "p2", "c2")


def test_attach_refuses_a_name_or_a_token_side_already_there(topo: Topology, rec: Recorder) -> None:
    with pytest.raises(irqbypass.TopologyError, match="an entry named 'p1' is already"):
        topo.attach(parse_config(pair(1, token="new"), file="plug.toml"))
    with pytest.raises(irqbypass.TopologyError, match="token 't2' is already used by producer"):
        topo.attach(parse_config(pair(5, token="t2"), file="plug.toml"))
    assert rec.log == []


def optional(text: str) -> str:
    return text.replace('kind = "rec-absent"', 'kind = "rec-absent"\noptional = true')


@pytest.mark.parametrize("how", ["attach", "change"])
def test_attach_leaves_out_what_is_left_out_as_change_does(
    host: irqbypass.PluginHost, rec: Recorder, how: str
) -> None:
    """A pair left out (an optional kind unavailable here) stays out whatever
    is plugged: an attach opened the producer plugged onto a token whose
    consumer was left out (the ledger then said the token was both left out
    and running), and an attached optional pair that cannot work here was
    left out without being listed in ``skipped``. Now an attach leaves out
    and lists what a change does."""
    text = pair(0) + optional('[[consumers]]\nname = "c3"\nkind = "rec-absent"\ntoken = "t3"\n')
    with Topology(parse_config(text, file="live.toml"), host) as topology:
        rec.log.clear()
        plug = getattr(topology, how)
        plugged = parse_config('[[producers]]\nname = "p3"\nkind = "rec-src"\ntoken = "t3"\n')
        plug(plugged) if how == "attach" else plug(add=plugged)
        assert "open p3" not in rec.log, "the producer of a pair left out was opened"
        assert topology.entry("p3") is None and "p3" in topology._ledger.entries
        assert [t for t, _ in topology.skipped] == ["t3"]
        pair5 = parse_config(optional(pair(5, sink="rec-absent")), file="plug.toml")
        plug(pair5) if how == "attach" else plug(add=pair5)
        assert topology.skipped == [
            ("t3", "consumer 'c3' (kind rec-absent): no such device here"),
            ("t5", "consumer 'c5' (kind rec-absent): no such device here"),
        ]
        assert topology._ledger.violations() == []
        untouched(rec, "p0", "c0")
        topology.detach(["p5", "c5"])
        assert [t for t, _ in topology.skipped] == ["t3"]
        assert topology._ledger.violations() == []


@pytest.mark.parametrize("how", ["detach", "change"])
def test_detaching_the_unavailable_end_of_a_pair_left_out_brings_up_the_rest(
    host: irqbypass.PluginHost, rec: Recorder, how: str
) -> None:
    """Found by tests/reliability/test_reload_machine.py (make fuzz, seed 780):
    detaching the optional end whose kind is unavailable kept its token left out
    for an entry no longer there, the producer remaining on it never opened,
    and a reload of a file naming exactly the running entries changed nothing,
    where applying that file opens it. A detach now looks at such a token again,
    as a change removing that end always did."""
    text = pair(0) + optional(pair(3, sink="rec-absent"))
    with Topology(parse_config(text, file="live.toml"), host) as topology:
        assert [t for t, _ in topology.skipped] == ["t3"] and topology.entry("p3") is None
        rec.log.clear()
        topology.detach(["c3"]) if how == "detach" else topology.change(remove=["c3"])
        assert topology.skipped == [] and rec.of("p3") == ["open p3"]
        assert topology.entry("p3") is not None and topology._ledger.violations() == []
        untouched(rec, "p0", "c0")
        rec.log.clear()
        changes = topology.reconcile(parse_config(pair(0) + pair(3).split("[[consumers]]")[0]))
        assert not changes and rec.log == []
        # the available end detached instead: the pair stays out, for its other end
        topology.attach(parse_config(optional(pair(4, sink="rec-absent"))))
        topology.detach(["p4"])
        assert topology.skipped == [("t4", "consumer 'c4' (kind rec-absent): no such device here")]
        assert "open c4" not in rec.log and topology._ledger.violations() == []


def test_attach_with_an_unknown_kind_names_the_fragment_and_its_line(
    topo: Topology, rec: Recorder
) -> None:
    with pytest.raises(irqbypass.ConfigError) as info:
        topo.attach(parse_config(pair(5, sink="rec-snik"), file="plug.toml"))
    assert info.value.file == "plug.toml" and info.value.key == "consumers[0].kind"
    assert info.value.line == 7 and "did you mean 'rec-sink'" in str(info.value)
    assert rec.log == [] and len(topo.placed) == 6


def test_detach_unpairs_and_closes_only_the_named_entries(topo: Topology, rec: Recorder) -> None:
    topo.detach(["p1", "c1"])
    assert paired(topo) == {"t0": True, "t2": True}
    assert rec.log == ["stop p1", "stop c1", "del c1", "del p1", "start c1", "start p1",
                       "close p1", "close c1"]  # fmt: skip
    untouched(rec, "p0", "c0", "p2", "c2")
    assert "t1" not in topo.tokens and len(topo.manager) == 4


def test_detach_of_an_unknown_name_changes_nothing(topo: Topology, rec: Recorder) -> None:
    with pytest.raises(irqbypass.TopologyError, match="no entry named 'p9'"):
        topo.detach(["p0", "p9"])
    assert rec.log == [] and len(topo.manager) == 6


def test_detach_attempts_every_step_and_reports(topo: Topology, rec: Recorder) -> None:
    rec.fail = {"close p1"}
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.detach(["p1", "c1"])
    assert "detaching from live.toml: close of producer 'p1'" in str(info.value)
    assert "close c1" in rec.log and "t1" not in topo.tokens


def test_a_ctrl_c_in_a_detached_close_still_detaches_the_rest(
    topo: Topology, rec: Recorder
) -> None:
    class Interrupting(Recorder):
        pass

    rec.fail = set()
    original = rec.act

    def act(what: str) -> None:
        original(what)
        if what == "close p1":
            raise KeyboardInterrupt

    rec.act = act  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt) as caught:
        topo.detach(["p1", "c1"])
    assert "close c1" in rec.log and "t1" not in topo.tokens
    assert "close of producer 'p1'" in "\n".join(getattr(caught.value, "__notes__", []))
    untouched(rec, "p0", "c0", "p2", "c2")


# -- tokens ----------------------------------------------------------------------


def test_two_topologies_on_one_manager_and_one_token_table_pair_across_files(
    host: irqbypass.PluginHost, rec: Recorder
) -> None:
    manager = irqbypass.Manager(host)
    table = irqbypass.TokenTable()
    producers = '[[producers]]\nname = "vec0"\nkind = "rec-src"\ntoken = "shared"\n'
    consumers = '[[consumers]]\nname = "irqfd0"\nkind = "rec-sink"\ntoken = "shared"\n'
    device = Topology(parse_config(producers, file="device.toml"), host, manager, tokens=table)
    vm = Topology(parse_config(consumers, file="vm.toml"), host, manager, tokens=table)
    with device, vm:
        assert device.tokens["shared"] is vm.tokens["shared"]
        assert manager.pairs() == [(device.entry("vec0").endpoint, vm.entry("irqfd0").endpoint)]  # type: ignore[union-attr]
        assert table.users("shared") == 2
        # the first topology's teardown leaves the other's end running, unpaired
    assert "shared" not in table and len(manager) == 0


def test_a_second_producer_on_a_shared_token_is_refused_and_undone(
    host: irqbypass.PluginHost, rec: Recorder
) -> None:
    manager = irqbypass.Manager(host)
    table = irqbypass.TokenTable()
    text = '[[producers]]\nname = "vec0"\nkind = "rec-src"\ntoken = "shared"\n'
    with Topology(parse_config(text, file="a.toml"), host, manager, tokens=table):
        other = Topology(
            parse_config(text.replace("vec0", "vec1"), file="b.toml"), host, manager, tokens=table
        )
        with pytest.raises(irqbypass.TopologyError, match="already held by producer 'vec0'"):
            other.apply()
        assert table.users("shared") == 1 and "close vec1" in rec.log


def test_a_vmm_owned_eventfd_is_used_by_name_and_never_closed(
    host: irqbypass.PluginHost, rec: Recorder
) -> None:
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        own = irqbypass.Eventfd()
        topology = Topology(
            parse_config(pair(0, token="vm-msi0") + pair(1, token="vm-msi1"), file="t.toml"),
            host,
            tokens={"vm-msi0": fd, "vm-msi1": own},
        )
        with topology:
            assert topology.tokens["vm-msi0"] == irqbypass.Eventfd.from_fd(fd)
            assert topology.tokens["vm-msi1"] is own
        assert not own.closed
        os.fstat(fd)  # still open: the VMM owns it
        own.close()
    finally:
        os.close(fd)


def test_a_provided_token_is_refused_twice_and_withdrawn_only_when_unused(
    host: irqbypass.PluginHost,
) -> None:
    table = irqbypass.TokenTable()
    with irqbypass.Eventfd() as mine:
        table.provide("x", mine)
        with pytest.raises(irqbypass.TopologyError, match="already in the table"):
            table.provide("x", mine)
        topology = Topology(parse_config(pair(0, token="x"), file="t.toml"), host, tokens=table)
        with topology, pytest.raises(irqbypass.TopologyError, match="still used by 2 endpoint"):
            table.withdraw("x")
        assert table.withdraw("x") is mine and "x" not in table
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"is not an irqbypass\.Eventfd"):
        table.provide("y", "fd 3")  # type: ignore[arg-type]


def test_one_eventfd_is_provided_under_one_name(host: irqbypass.PluginHost) -> None:
    """One eventfd is one token: provided under two names (the VMM's fd and a
    dup of it, or the same fd twice), the manager paired a producer of one
    name with a consumer of the other, while the topology, its status and its
    plans took them for two one-ended tokens (status said both unpaired; a
    change of one end ran callbacks on the other). The second name is refused,
    naming the first."""
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    copy = os.dup(fd)
    try:
        table = irqbypass.TokenTable({"a": fd})
        for again in (fd, copy, irqbypass.Eventfd.from_fd(copy)):
            with pytest.raises(irqbypass.TopologyError, match="already the table's token 'a'"):
                table.provide("b", again)
            assert "b" not in table
        text = pair(0, token="a").split("[[consumers]]")[0] + '[[consumers]]\nname = "c"\n'
        with pytest.raises(irqbypass.TopologyError, match="already the table's token 'a'"):
            Topology(parse_config(text + 'kind = "rec-sink"\ntoken = "b"\n'), host,
                     tokens={"a": fd, "b": copy})  # fmt: skip
        assert table.withdraw("a") == irqbypass.Eventfd.from_fd(fd)
        table.provide("b", copy)  # withdrawn: the eventfd may take another name
    finally:
        os.close(copy)
        os.close(fd)


# -- reconcile ---------------------------------------------------------------------


def test_reconcile_adds_removes_and_changes_only_what_differs(
    topo: Topology, rec: Recorder
) -> None:
    new = pair(0) + pair(2, level=3) + pair(4)  # 1 removed, 2 changed, 4 added
    changes = topo.reconcile(parse_config(new, file="live.toml"))
    assert changes.added == ("p4", "c4") and changes.removed == ("p1", "c1")
    assert changes.changed == ("p2",) and changes.why == {"p2": ("options",)}
    assert changes.describe() == ("added 'p4', 'c4'; removed 'p1', 'c1'; changed 'p2' (options)")
    untouched(rec, "p0", "c0")
    assert rec.of("c2") == ["stop c2", "del c2", "start c2", "stop c2", "add c2", "start c2"]
    assert rec.of("p2")[:1] == ["stop p2"] and "close p2" in rec.of("p2")
    assert paired(topo) == {"t0": True, "t2": True, "t4": True}
    assert topo.entry("p2").endpoint.stats()["level"] == 3  # type: ignore[union-attr]
    assert topo.config.file == "live.toml" and len(topo.manager) == 6


def test_reconcile_with_nothing_changed_calls_nothing(topo: Topology, rec: Recorder) -> None:
    # the same entries in another order are the same entries
    changes = topo.reconcile(parse_config(pairs(2, 0, 1), file="live.toml"))
    assert not changes and changes.describe() == "nothing changed"
    assert rec.log == []
    assert topo.entry("p2").config.index == 0  # type: ignore[union-attr]


def test_reconcile_treats_true_and_1_as_different_options(topo: Topology) -> None:
    text = pairs(0, 1, 2).replace('name = "p0"\n', 'name = "p0"\noptions = { level = 1 }\n')
    topo.reconcile(parse_config(text, file="live.toml"))
    flipped = text.replace("level = 1", "level = true")
    with pytest.raises(irqbypass.ConfigError, match="level"):
        topo.reconcile(parse_config(flipped, file="live.toml"))  # seen, so refused
    assert topo.entry("p0").endpoint.stats()["level"] == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("failing", ["open p4", "open c2", "add c2", "open p2"])
def test_a_failing_reconcile_leaves_the_running_topology_as_it_was(
    topo: Topology, rec: Recorder, failing: str
) -> None:
    before = {p.config.name: p.config for p in topo.placed}
    tokens = dict(topo.tokens)
    rec.fail, rec.once = {failing}, True
    new = pair(0) + pair(2, level=3).replace("rec-sink", "rec-sink") + pair(4)
    new = new.replace('name = "c2"\nkind = "rec-sink"', 'name = "c2"\nkind = "rec-sink"\nirq = 5')
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.reconcile(parse_config(new, file="live2.toml"))
    name = failing.split()[1]
    assert f"'{name}'" in str(info.value) and f"{failing} failed" in str(info.value)
    assert str(info.value).startswith("reloading live.toml as live2.toml: ")
    untouched(rec, "p0", "c0")
    after = {p.config.name: p.config for p in topo.placed}
    assert after == before and topo.config.file == "live.toml"
    assert paired(topo) == {"t0": True, "t1": True, "t2": True}
    assert set(topo.tokens) == set(tokens) and len(topo.manager) == 6
    if failing == "open p4":  # a pure addition fails first: nothing else was touched
        untouched(rec, "p1", "c1", "p2", "c2")
    # the next reload, with the fault gone, does the change
    topo.reconcile(parse_config(new, file="live2.toml"))
    assert paired(topo) == {"t0": True, "t2": True, "t4": True}


def test_a_reconcile_that_names_an_unknown_kind_changes_nothing(
    topo: Topology, rec: Recorder
) -> None:
    bad = pairs(0, 1) + pair(2, sink="rec-snik")
    with pytest.raises(irqbypass.ConfigError) as info:
        topo.reconcile(parse_config(bad, file="live.toml"))
    assert info.value.key == "consumers[2].kind" and "did you mean 'rec-sink'" in str(info.value)
    assert rec.log == [] and len(topo.manager) == 6


def test_reconcile_moves_a_token_and_skips_an_unavailable_optional_pair(
    topo: Topology, rec: Recorder
) -> None:
    text = (
        pair(0)
        + pair(1, token="moved")
        + pair(2, sink="rec-absent").replace(
            'kind = "rec-absent"', 'kind = "rec-absent"\noptional = true'
        )
    )
    changes = topo.reconcile(parse_config(text, file="live.toml"))
    assert set(changes.changed) == {"p1", "c1", "c2"}
    assert changes.why["p1"] == ("token",)
    assert paired(topo) == {"t0": True, "moved": True}
    assert topo.skipped == [("t2", "consumer 'c2' (kind rec-absent): no such device here")]
    untouched(rec, "p0", "c0")
    assert "close p2" in rec.log  # its whole pair is left out


class Denies:
    """A pairing policy: ``Veto(unpaired=True)`` for the producers named in ``deny``."""

    def __init__(self, *deny: str) -> None:
        self.deny = set(deny)

    @irqbypass.plugin.hookimpl
    def irqbypass_pair(self, producer: irqbypass.Producer, consumer: irqbypass.Consumer) -> None:
        if producer.name in self.deny:
            raise irqbypass.Veto(f"{producer.name} is denied", unpaired=True)


@pytest.mark.parametrize("changed", ["p1", "c1", "c1 unplugged and plugged"])
def test_a_change_to_a_vetoed_pair_asks_for_the_pair_again(
    host: irqbypass.PluginHost, rec: Recorder, changed: str
) -> None:
    """A pair a plugin's Veto(unpaired=True) left unpaired has one end open but
    not registered. Changing either end asks the plugin again, as applying the
    new file afresh would: changing the consumer re-registered it alone (the
    producer, never registered, stayed out: the pair could not pair again,
    and the veto was no longer told)."""
    policy = Denies("p1")
    with host.registered(policy, name="policy"):
        topology = Topology(parse_config(pairs(0, 1), file="live.toml"), host)
        with topology:
            assert topology.vetoed == [("t1", "p1 is denied")]
            assert paired(topology) == {"t0": True, "t1": False}
            rec.log.clear()
            if changed.endswith("plugged"):
                topology.detach(["c1"])
                assert topology.vetoed == []
                topology.attach(parse_config(pair(1).split("[[consumers]]")[1].join(
                    ["[[consumers]]", ""]), file="plug.toml"))  # fmt: skip
            else:
                level = f'name = "{changed}"\noptions = {{ level = 2 }}\n'
                topology.reconcile(
                    parse_config(pairs(0, 1).replace(f'name = "{changed}"\n', level))
                )
            assert topology.vetoed == [("t1", "p1 is denied")], "the veto is told again"
            policy.deny.clear()  # the policy now allows it: the next change pairs them
            name = changed.split()[0]
            level = f'name = "{name}"\noptions = {{ level = 3 }}\n'
            topology.reconcile(parse_config(pairs(0, 1).replace(f'name = "{name}"\n', level)))
            assert paired(topology) == {"t0": True, "t1": True}
            assert topology.vetoed == []
            assert topology._ledger.violations() == []
            untouched(rec, "p0", "c0")


def test_a_reload_of_a_large_file_compares_group_by_group(
    host: irqbypass.PluginHost, rec: Recorder
) -> None:
    text = pairs(*range(300))
    with Topology(parse_config(text, file="big.toml"), host) as topology:
        rec.log.clear()
        new = text.replace('name = "p7"\n', 'name = "p7"\noptions = { level = 2 }\n')
        new = new.replace('token = "t150"', 'token = "x150"') + pair(300)
        new_config = parse_config(new, file="big.toml")
        assert topology.config.groups.differing(new_config.groups) is not None  # grouped alike
        changes = topology.reconcile(new_config)
        assert changes.changed == ("p7", "p150", "c150") and changes.added == ("p300", "c300")
        assert changes.why == {"p7": ("options",), "p150": ("token",), "c150": ("token",)}
        touched = {e.split()[1] for e in rec.log}
        assert touched == {"p7", "c7", "p150", "c150", "p300", "c300"}
        assert topology.entry("p7").endpoint.stats()["level"] == 2  # type: ignore[union-attr]
        assert paired(topology)["x150"] and "t150" not in paired(topology)
        rec.log.clear()
        assert not topology.reconcile(parse_config(new + "# a comment\n", file="big.toml"))
        assert rec.log == []


def test_entry_groups_name_exactly_the_entries_that_differ() -> None:
    old = parse_config(pairs(*range(50)), file="a.toml")
    same = parse_config(pairs(*range(50)) + "# edited\n", file="a.toml")
    assert old.groups.differing(same.groups) == []
    new = parse_config(pairs(*range(49)) + pair(49, level=1), file="a.toml")
    assert old.groups.differing(new.groups) == ["p49"]
    flipped = parse_config(pairs(*range(49)) + pair(49, level=1).replace("= 1", "= true"),
                           file="a.toml")  # fmt: skip
    assert new.groups.differing(flipped.groups) == ["p49"]  # true is not 1
    assert old.groups.differing(parse_config(pairs(*range(5)), file="a.toml").groups) is None
    # an int beyond repr's 4300 digits is an option like any other
    texts = [pair(0).replace('"rec-src"', f'"rec-src"\noptions = {{ n = 0x{"f" * 4000}{d} }}')
             for d in "01"]  # fmt: skip
    huge = [parse_config(text, file="h.toml") for text in texts]
    assert huge[0].groups.differing(huge[1].groups) == ["p0"]
    # nan is nan (Python says nan != nan: every reload would reopen it), key order is no change
    texts = [pair(0).replace('"rec-src"', f'"rec-src"\noptions = {{ {o} }}')
             for o in ("x = nan, y = 1", "y = 1, x = nan", "y = 1.0, x = nan")]  # fmt: skip
    nan, reordered, other = (parse_config(text, file="n.toml") for text in texts)
    assert nan.groups.differing(reordered.groups) == []
    assert differences(nan.by_name["p0"], reordered.by_name["p0"]) == ()
    assert nan.groups.differing(other.groups) == ["p0"]  # 1.0 is not 1
    assert differences(nan.by_name["p0"], other.by_name["p0"]) == ("options",)


# -- change: the O(changes) API --------------------------------------------------


def test_change_adds_removes_and_replaces_in_one_step_touching_nothing_else(
    topo: Topology, rec: Recorder
) -> None:
    p2 = parse_config(pair(2, level=3), file="p2.toml").by_name["p2"]
    changes = topo.change(
        add=parse_config(pair(4), file="plug.toml"), remove=["p1", "c1"], replace=[p2]
    )
    assert changes.added == ("p4", "c4") and changes.removed == ("p1", "c1")
    assert changes.changed == ("p2",) and changes.why == {"p2": ("options",)}
    untouched(rec, "p0", "c0")
    assert rec.of("c2") == ["stop c2", "del c2", "start c2", "stop c2", "add c2", "start c2"]
    assert paired(topo) == {"t0": True, "t2": True, "t4": True}
    assert topo.entry("p2").endpoint.stats()["level"] == 3  # type: ignore[union-attr]
    assert len(topo.manager) == 6
    with pytest.raises(irqbypass.TopologyError, match="remove must be entry names"):
        topo.change(remove=[1])  # type: ignore[list-item]
    # a replacement that differs in nothing is no change
    rec.log.clear()
    assert not topo.change(replace=[p2]) and rec.log == []
    topo.change(remove=(n for n in ["p4", "c4"]))  # any iterable of names
    topo.change(add=parse_config(pair(4), file="plug.toml"))
    # the running entries are no file's now: a reload compares every entry, and finds them
    changes = topo.reconcile(parse_config(pairs(0, 1, 2), file="live.toml"))
    assert changes.added == ("p1", "c1") and changes.removed == ("p4", "c4")
    assert changes.changed == ("p2",)
    assert paired(topo) == {"t0": True, "t1": True, "t2": True}


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"remove": ["p9"]}, "'p9' to remove is not an entry"),
        ({"replace": "p9"}, "'p9' to replace is not an entry"),
        ({"add": "p1"}, "'p1' to add is already an entry (replace it instead)"),
        ({"add": "p7", "remove": ["p7"]}, "'p7' is named twice"),
        ({"remove": ["p1"], "replace": "p1"}, "'p1' is named twice"),
        ({"add": "p5@t2"}, "'p5': token 't2' is already used by producer 'p2'"),
        ({"add": "p5@t7", "replace": "p1@t7"}, "'p1': token 't7' is already used by another"),
    ],
)
def test_change_refuses_what_it_cannot_do_before_doing_anything(
    topo: Topology, rec: Recorder, kwargs: dict[str, Any], problem: str
) -> None:
    def producer(spec: str) -> irqbypass.EndpointConfig:
        n, _, token = spec.removeprefix("p").partition("@")
        text = pair(int(n), token=token or None).split("[[consumers]]")[0]
        return parse_config(text, file="p.toml").by_name[f"p{n}"]

    args = {k: v if k == "remove" else [producer(v)] for k, v in kwargs.items()}
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.change(**args)
    assert str(info.value).startswith("changing live.toml: nothing was changed: ")
    assert problem in str(info.value)
    assert rec.log == [] and len(topo.manager) == 6
    assert paired(topo) == {"t0": True, "t1": True, "t2": True}


@pytest.mark.parametrize("failing", ["open p4", "open c2", "add c2", "open p2", "interrupt"])
def test_a_failing_change_leaves_the_topology_as_it_was(
    topo: Topology, rec: Recorder, failing: str
) -> None:
    """A device that fails, or a Ctrl-C in the middle (inside a plugin's open,
    after the old c2 was closed): everything as before."""
    before = {p.config.name: p.config for p in topo.placed}
    tokens = dict(topo.tokens)
    if failing == "interrupt":
        original = rec.act

        def act(what: str) -> None:
            original(what)
            if what == "open c2" and "close c2" in rec.log:  # the new c2, not the old again
                rec.act = original  # type: ignore[method-assign]
                raise KeyboardInterrupt

        rec.act = act  # type: ignore[method-assign]
    else:
        rec.fail, rec.once = {failing}, True
    fragment = parse_config(pair(2, level=3) + pair(4), file="frag.toml")
    c2 = fragment.by_name["c2"]
    fragment_c2 = irqbypass.EndpointConfig(
        side=c2.side, index=c2.index, name="c2", kind=c2.kind, token=c2.token, irq=5
    )
    expected: type[BaseException] = (
        KeyboardInterrupt if failing == "interrupt" else irqbypass.TopologyError
    )
    change: dict[str, Any] = {
        "add": [fragment.by_name["p4"], fragment.by_name["c4"]],
        "remove": ["p1", "c1"],
        "replace": [fragment.by_name["p2"], fragment_c2],
    }
    with pytest.raises(expected) as info:
        topo.change(**change)
    if failing != "interrupt":
        assert str(info.value).startswith("changing live.toml: ")
        assert f"'{failing.split()[1]}'" in str(info.value)
    untouched(rec, "p0", "c0")
    after = {p.config.name: p.config for p in topo.placed}
    assert after == before and topo.config.file == "live.toml"
    assert paired(topo) == {"t0": True, "t1": True, "t2": True}
    assert set(topo.tokens) == set(tokens) and len(topo.manager) == 6
    assert all(p.opened and not p.released for p in topo.placed)
    assert topo.entry("p2").endpoint.stats()["level"] == 0  # type: ignore[union-attr]
    # the same change, with the fault gone, is done
    rec.log.clear()
    changes = topo.change(**change)
    assert changes.changed == ("p2", "c2")
    assert paired(topo) == {"t0": True, "t2": True, "t4": True}
    untouched(rec, "p0", "c0")


def test_counts_add_up_across_reopens_with_this_opens_figures_apart(
    topo: Topology, rec: Recorder
) -> None:
    p0 = topo.entry("p0")
    assert p0 is not None
    p0.endpoint.fired = 5  # type: ignore[attr-defined]
    topo.reconcile(parse_config(pair(0, level=2) + pairs(1, 2), file="live.toml"))
    p0 = topo.entry("p0")
    assert p0 is not None and p0.endpoint.stats()["fired"] == 0
    p0.endpoint.fired = 3  # type: ignore[attr-defined]
    assert p0.stats()["fired"] == 8 and p0.opens == 2
    (row,) = [r for r in topo.status() if r.token == "t0"]
    assert row.fired == 8
    topo.detach(["p0"])
    topo.attach(parse_config(pair(0).split("[[consumers]]")[0], file="plug.toml"))
    p0 = topo.entry("p0")
    assert p0 is not None and p0.stats()["fired"] == 8 and p0.opens == 3


def test_a_stats_that_returns_no_mapping_counts_nothing_and_the_teardown_finishes(
    topo: Topology, rec: Recorder
) -> None:
    p0, p1 = topo.entry("p0"), topo.entry("p1")
    assert p0 is not None and p1 is not None
    p0.endpoint.stats = lambda: None  # type: ignore[method-assign]  # a plugin's bug
    p1.endpoint.fired = 4  # type: ignore[attr-defined]
    topo.teardown()  # was: AttributeError out of the undo, half of it not done
    assert not topo.applied and topo.placed == [] and len(topo.token_table) == 0
    topo.apply()  # the counts of the others carry on; p0's stats counted nothing
    p0, p1 = topo.entry("p0"), topo.entry("p1")
    assert p0 is not None and p0.opens == 2 and p0.history.counters == {}
    assert p1 is not None and p1.stats()["fired"] == 4 and p1.opens == 2


def test_a_removed_entry_that_cannot_be_restored_is_named(topo: Topology, rec: Recorder) -> None:
    rec.fail = {"open c2"}  # the new c2 fails, and so does the old one's reopening
    new = pairs(0, 1) + pair(2).replace(
        'name = "c2"\nkind = "rec-sink"', 'name = "c2"\nkind = "rec-sink"\nirq = 5'
    )
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.reconcile(parse_config(new, file="live.toml"))
    assert "while undoing: restoring 'c2' failed at open of consumer 'c2'" in str(info.value)
    assert paired(topo) == {"t0": True, "t1": True, "t2": False}
    untouched(rec, "p0", "c0", "p1", "c1")
    rec.fail = set()  # the next reload puts the missing entry back
    changes = topo.reconcile(parse_config(new, file="live.toml"))
    assert changes.added == ("c2",) and paired(topo)["t2"]
