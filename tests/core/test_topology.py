"""Applying a topology is all-or-nothing; teardown runs in reverse; nothing leaks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._config import parse_config
from irqbypass._topology import Topology

pytestmark = pytest.mark.usefixtures("no_fd_leak")


class Journal:
    """A plugin with kinds that journal open/close/add/del and fail on demand."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.fail: set[str] = set()

    def _act(self, what: str) -> None:
        self.log.append(what)
        if what in self.fail:
            raise OSError(5, f"{what} failed")

    def make(self, spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
        journal = self
        opts = spec.options_reader()
        opts.finish()

        class Source(irqbypass.Producer):
            def open(self) -> None:
                journal._act(f"open {self.name}")

            def close(self) -> None:
                journal._act(f"close {self.name}")

            def add_consumer(self, consumer: Any) -> None:
                journal._act(f"add {self.name}")

        class Sink(irqbypass.Consumer):
            def open(self) -> None:
                journal._act(f"open {self.name}")

            def close(self) -> None:
                journal._act(f"close {self.name}")

            def add_producer(self, producer: Any) -> None:
                journal._act(f"add {self.name}")

            def del_producer(self, producer: Any) -> None:
                journal._act(f"del {self.name}")

        cls = Source if spec.side == "producer" else Sink
        return cls(token=spec.token, name=spec.name)

    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        register.producer("j-src", self.make)
        register.consumer("j-sink", self.make)
        register.consumer("j-absent", self.make, availability=lambda: "no such device here")


TOPO = """\
[[producers]]
name = "p0"
kind = "j-src"
token = "a"
[[producers]]
name = "p1"
kind = "j-src"
token = "b"
[[consumers]]
name = "c0"
kind = "j-sink"
token = "a"
[[consumers]]
name = "c1"
kind = "j-sink"
token = "b"
"""


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def host(journal: Journal) -> Iterator[irqbypass.PluginHost]:
    plugins = irqbypass.PluginHost()
    with plugins.registered(journal, name="journal"):
        yield plugins


def test_apply_opens_then_registers_consumers_first(
    journal: Journal, host: irqbypass.PluginHost
) -> None:
    topo = Topology(parse_config(TOPO, file="t.toml"), host)
    topo.apply()
    assert journal.log == ["open c0", "open c1", "open p0", "add p0", "add c0", "open p1",
                           "add p1", "add c1"]  # fmt: skip
    assert [row.paired for row in topo.status()] == [True, True]
    assert len(topo.manager.pairs()) == 2
    journal.log.clear()
    topo.teardown()
    assert journal.log == ["del c1", "close p1", "del c0", "close p0", "close c1", "close c0"]
    assert len(topo.manager) == 0


def test_both_ends_share_one_eventfd(host: irqbypass.PluginHost) -> None:
    with Topology(parse_config(TOPO, file="t.toml"), host) as topo:
        by_name = {p.config.name: p.endpoint for p in topo.placed}
        assert by_name["p0"].token is by_name["c0"].token
        assert isinstance(by_name["p0"].token, irqbypass.Eventfd)
        assert by_name["p0"].token != by_name["p1"].token


@pytest.mark.parametrize("failing", ["open p1", "add c1", "add p0", "open c0"])
def test_apply_failure_undoes_everything_in_reverse(
    journal: Journal, host: irqbypass.PluginHost, failing: str
) -> None:
    journal.fail = {failing}
    topo = Topology(parse_config(TOPO, file="t.toml"), host)
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.apply()
    name = failing.split()[1]
    assert f"'{name}'" in str(info.value) and "failed" in str(info.value)
    assert isinstance(info.value.__cause__, irqbypass.IrqBypassError | OSError)
    assert len(topo.manager) == 0 and topo.placed == [] and topo.tokens == {}
    opened = [e.split()[1] for e in journal.log if e.startswith("open")]
    closed = [e.split()[1] for e in journal.log if e.startswith("close")]
    if failing.startswith("open"):
        opened.remove(name)  # its open failed: nothing to close
    assert closed == list(reversed(opened)), journal.log


def test_bypass_false_is_opened_but_never_paired(
    journal: Journal, host: irqbypass.PluginHost
) -> None:
    text = TOPO.replace('name = "c1"\n', 'name = "c1"\nbypass = false\n')
    with Topology(parse_config(text, file="t.toml"), host) as topo:
        assert "open c1" in journal.log and "add c1" not in journal.log
        rows = {row.token: row for row in topo.status()}
        assert rows["a"].paired and not rows["b"].paired
        assert [c.name for c in topo.manager.consumers()] == ["c0"]


def test_optional_unavailable_pair_is_skipped_with_reason(
    journal: Journal, host: irqbypass.PluginHost
) -> None:
    text = TOPO + '[[consumers]]\nname = "c2"\nkind = "j-absent"\ntoken = "c"\noptional = true\n'
    text += '[[producers]]\nname = "p2"\nkind = "j-src"\ntoken = "c"\n'
    text += '[[consumers]]\nname = "c3"\nkind = "not-installed"\ntoken = "d"\noptional = true\n'
    with Topology(parse_config(text, file="t.toml"), host) as topo:
        assert [row.token for row in topo.status()] == ["a", "b"]
        assert dict(topo.skipped) == {
            "c": "consumer 'c2' (kind j-absent): no such device here",
            "d": topo.skipped[1][1],
        }
        assert "no plugin provides consumer kind 'not-installed'" in topo.skipped[1][1]
        assert "p2" not in {p.config.name for p in topo.placed}


def test_unknown_kind_is_a_config_error_with_line(host: irqbypass.PluginHost) -> None:
    text = TOPO.replace('kind = "j-sink"', 'kind = "j-snik"', 1)
    topo = Topology(parse_config(text, file="t.toml"), host)
    with pytest.raises(irqbypass.ConfigError) as info:
        topo.apply()
    assert info.value.key == "consumers[0].kind" and info.value.line == 11
    assert "did you mean 'j-sink'" in str(info.value)
    assert topo.tokens == {}


def test_bad_options_refused_before_anything_opens(
    journal: Journal, host: irqbypass.PluginHost
) -> None:
    text = TOPO + '[[producers]]\nname = "p9"\nkind = "j-src"\ntoken = "z"\noptions = {x = 1}\n'
    with pytest.raises(irqbypass.ConfigError, match=r"producers\[2\].options.x"):
        Topology(parse_config(text, file="t.toml"), host).apply()
    assert journal.log == []


def test_teardown_attempts_every_step_and_reports(
    journal: Journal, host: irqbypass.PluginHost
) -> None:
    topo = Topology(parse_config(TOPO, file="t.toml"), host)
    topo.apply()
    journal.fail = {"close p1", "del c0"}
    journal.log.clear()
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.teardown()
    assert "close of producer 'p1'" in str(info.value)
    assert "unregister of producer 'p0'" in str(info.value)
    assert "del c0 failed" in str(info.value)
    assert journal.log == ["del c1", "close p1", "del c0", "close p0", "close c1", "close c0"]
    assert len(topo.manager) == 0


def test_mock_and_logging_pair_delivers_everything() -> None:
    text = """
    [[producers]]
    name = "m"
    kind = "mock"
    token = "t"
    options = { rate = 0.0, count = 2000, burst = 7 }
    [[consumers]]
    name = "l"
    kind = "logging"
    token = "t"
    """
    host = irqbypass.load_plugins(allow=["irqbypass-mock", "irqbypass-logging"])
    with Topology(parse_config(text, file="t.toml"), host) as topo:
        (row,) = topo.status()
        deadline = time.monotonic() + 30
        while (row.delivered or 0) < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert row.paired and row.fired == 2000 and row.delivered == 2000 and row.lost == 0
        assert topo.finished


def test_applying_twice_is_refused(journal: Journal, host: irqbypass.PluginHost) -> None:
    with Topology(parse_config(TOPO, file="t.toml"), host) as topo:
        opened = list(journal.log)
        with pytest.raises(irqbypass.TopologyError, match="already applied"):
            topo.apply()
        assert journal.log == opened and len(topo.manager.pairs()) == 2


def test_a_left_out_pair_is_still_validated(journal: Journal, host: irqbypass.PluginHost) -> None:
    absent = '[[consumers]]\nname = "c2"\nkind = "j-absent"\ntoken = "c"\noptional = true\n'
    bad_options = absent.replace("optional = true\n", "optional = true\noptions = { x = 1 }\n")
    with pytest.raises(irqbypass.ConfigError, match=r"consumers\[2\].options.x"):
        Topology(parse_config(TOPO + bad_options, file="t.toml"), host).build()
    typo_partner = absent + '[[producers]]\nname = "p2"\nkind = "j-scr"\ntoken = "c"\n'
    with pytest.raises(irqbypass.ConfigError, match="did you mean 'j-src'"):
        Topology(parse_config(TOPO + typo_partner, file="t.toml"), host).build()
    assert journal.log == []


class Batch(irqbypass.Consumer):
    """A consumer class whose device attaches many endpoints at once."""

    log: ClassVar[list[str]] = []
    fail: ClassVar[set[str]] = set()

    def add_producer(self, producer: Any) -> None:
        Batch.log.append(f"add {self.name}")

    def del_producer(self, producer: Any) -> None:
        Batch.log.append(f"del {self.name}")

    def open(self) -> None:
        Batch.log.append(f"open {self.name}")

    def close(self) -> None:
        Batch.log.append(f"close {self.name}")

    @classmethod
    def open_group(cls, endpoints: Any) -> None:
        names = [e.name for e in endpoints]
        Batch.log.append("open_group " + " ".join(names))
        bad = sorted(Batch.fail & set(names))
        if bad:
            raise irqbypass.DeviceError(f"route of {bad[0]!r} refused", errno=22)

    @classmethod
    def close_group(cls, endpoints: Any) -> None:
        Batch.log.append("close_group " + " ".join(e.name for e in endpoints))


class BatchPlugin:
    """Provides the consumer kind "batch", whose endpoints are ``kind``'s."""

    def __init__(self, kind: type[Batch] = Batch) -> None:
        self.kind = kind

    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        def make(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
            spec.options_reader().finish()
            return self.kind(token=spec.token, name=spec.name)

        register.consumer("batch", make)


GROUPED = (
    TOPO.replace('name = "c1"\nkind = "j-sink"', 'name = "c1"\nkind = "batch"').replace(
        'name = "c0"\nkind = "j-sink"', 'name = "c0"\nkind = "batch"'
    )
    + '[[consumers]]\nname = "c2"\nkind = "j-sink"\ntoken = "c"\n'
    + ('[[consumers]]\nname = "c3"\nkind = "batch"\ntoken = "d"\n')
)


@pytest.fixture
def batch_host(host: irqbypass.PluginHost) -> Iterator[irqbypass.PluginHost]:
    Batch.log, Batch.fail = [], set()
    with host.registered(BatchPlugin(), name="batch"):
        yield host


def test_a_class_with_open_group_is_opened_and_closed_as_one_group(
    journal: Journal, batch_host: irqbypass.PluginHost
) -> None:
    topo = Topology(parse_config(GROUPED, file="t.toml"), batch_host)
    topo.apply()
    # one group call for c0, c1 and c3, at c0's place; never their own open()
    assert Batch.log == ["open_group c0 c1 c3", "add c0", "add c1"]
    assert journal.log[:2] == ["open c2", "open p0"]
    assert [row.paired for row in topo.status()] == [True, True, False, False]
    Batch.log.clear()
    topo.teardown()
    # unregistered one by one (last first), then closed together, last first
    assert Batch.log == ["del c1", "del c0", "close_group c3 c1 c0"]
    assert journal.log[-1] == "close c2"
    assert len(topo.manager) == 0


def test_a_failing_group_open_names_the_group_and_undoes_the_rest(
    journal: Journal, batch_host: irqbypass.PluginHost
) -> None:
    Batch.fail = {"c3"}
    topo = Topology(parse_config(GROUPED, file="t.toml"), batch_host)
    with pytest.raises(irqbypass.TopologyError) as info:
        topo.apply()
    message = str(info.value)
    assert "open of the group of 3 consumers of kind batch ('c0', 'c1', 'c3')" in message
    assert "route of 'c3' refused" in message and info.value.errno == 22
    # all or nothing: the group opened nothing, so nothing of it is closed
    assert Batch.log == ["open_group c0 c1 c3"]
    assert journal.log == []
    assert topo.placed == [] and topo.tokens == {}


def test_a_failing_register_after_a_group_open_closes_the_whole_group(
    journal: Journal, batch_host: irqbypass.PluginHost
) -> None:
    journal.fail = {"add p1"}
    topo = Topology(parse_config(GROUPED, file="t.toml"), batch_host)
    with pytest.raises(irqbypass.TopologyError, match="register of producer 'p1'"):
        topo.apply()
    assert Batch.log[-1] == "close_group c3 c1 c0"
    assert journal.log[-1] == "close c2"
    assert len(topo.manager) == 0


class OpenGroupOnly(Batch):
    """Opens as one group but closes one by one (no ``close_group``); the
    closes of the names in ``refuse`` raise what it makes (an error, or the
    KeyboardInterrupt of a Ctrl-C cutting them): made anew each time, so that
    no raised exception, and the frames its traceback holds, outlives a test."""

    close_group = None
    refuse: ClassVar[dict[str, Callable[[], BaseException]]] = {}

    def close(self) -> None:
        Batch.log.append(f"close {self.name}")
        refused = OpenGroupOnly.refuse.get(self.name or "")
        if refused is not None:
            raise refused()


def _refused() -> BaseException:
    return irqbypass.DeviceError("detach refused", errno=16)


@pytest.mark.parametrize("refused", [_refused, KeyboardInterrupt], ids=["raises", "ctrl-c"])
def test_a_group_without_close_group_closes_every_endpoint_when_one_close_fails(
    journal: Journal, host: irqbypass.PluginHost, refused: Callable[[], BaseException]
) -> None:
    Batch.log, Batch.fail = [], set()
    OpenGroupOnly.refuse = {"c1": refused}
    try:
        with host.registered(BatchPlugin(OpenGroupOnly), name="batch"):
            topo = Topology(parse_config(GROUPED, file="t.toml"), host)
            topo.apply()
            assert Batch.log[0] == "open_group c0 c1 c3"
            Batch.log.clear()
            with pytest.raises((irqbypass.TopologyError, KeyboardInterrupt)) as info:
                topo.teardown()
    finally:
        OpenGroupOnly.refuse = {}
    # c1's close failed, and c0's (after it, last opened first) still ran
    assert Batch.log == ["del c1", "del c0", "close c3", "close c1", "close c0"]
    if refused is KeyboardInterrupt:
        assert info.type is KeyboardInterrupt
    else:
        assert "close of consumer 'c1'" in str(info.value)
        assert "detach refused" in str(info.value)
    assert topo.placed == [] and len(topo.manager) == 0
