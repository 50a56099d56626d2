"""Regression tests of issue 29 (round four), items 1-7, 18 and 19: what a
plugin author and an embedder met."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import pytest
from cli_support import HERE, run, topology

DEAF = (
    '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=0.0, count=10}\n'
    '[[consumers]]\nname="d"\nkind="deaf"\ntoken="t"\n'
)


def wait_for(condition: Callable[[], bool]) -> None:
    """Wait for ``condition``; a hang guard only (the test's own pace is the condition's)."""
    done = threading.Event()
    for _ in range(6000):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the condition never held")


def round4_host() -> irqbypass.PluginHost:
    import round4_plugin

    host = irqbypass.load_plugins(allow=["irqbypass-mock"])
    host.register(round4_plugin, name="round4_plugin")
    return host


# -- 18: one definition of each count --------------------------------------


def test_signals_a_consumer_never_read_are_queued_not_lost_in_the_api(no_env: None) -> None:
    config = irqbypass.parse_config(DEAF, file="deaf.toml")
    with irqbypass.Topology(config, round4_host()) as top:
        wait_for(lambda: top.finished and top.status()[0].queued == 10)
        (row,) = top.status()
        assert (row.fired, row.delivered, row.queued, row.lost) == (10, 0, 10, 0)
        assert row.coalesced is None, "a consumer that merges nothing coalesces nothing"
        assert row.as_dict()["queued"] == 10


def test_the_cli_and_the_api_count_alike(tmp_path: Path) -> None:
    result = run("-p", "round4_plugin", "run", topology(tmp_path, DEAF), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["pairs"]
    assert (row["fired"], row["delivered"], row["queued"], row["lost"]) == (10, 0, 10, 0)


def test_a_snapshot_reads_each_end_once_however_many_counts_are_asked(no_env: None) -> None:
    config = irqbypass.parse_config(DEAF, file="deaf.toml")
    with irqbypass.Topology(config, round4_host()) as top:
        (row,) = top.status()
        consumer = row.consumer
        assert consumer is not None
        reads: list[int] = []
        real = consumer.endpoint.stats

        def counted() -> object:
            reads.append(1)
            return real()

        consumer.endpoint.stats = counted  # type: ignore[method-assign]
        (row,) = top.status()
        fixed = row.snapshot()
        assert len(reads) == 1
        _ = (fixed.fired, fixed.delivered, fixed.queued, fixed.coalesced, fixed.lost)
        assert fixed.as_dict()["queued"] == fixed.queued
        assert len(reads) == 1, "every count of a snapshot comes from its one reading"
        assert row.as_dict() is not None and len(reads) == 2, "as_dict reads once too"
        assert row.delivered == 0 and len(reads) == 3, "a row's own counts read when asked"


# -- 1: where in the plugin a factory or open() failed ----------------------

FACTORY_BUG = (
    '[[producers]]\nname="m"\nkind="factory-bug"\ntoken="t"\n'
    '[[consumers]]\nname="d"\nkind="deaf"\ntoken="t"\n'
)


@pytest.mark.parametrize(
    ("kind", "command", "where"),
    [("factory-bug", "check", "_factory_bug"), ("open-bug", "run", "open")],
)
def test_v_shows_where_in_the_plugin_a_factory_or_open_raised(
    tmp_path: Path, kind: str, command: str, where: str
) -> None:
    path = topology(tmp_path, FACTORY_BUG.replace("factory-bug", kind))
    quiet = run("-p", "round4_plugin", command, path)
    assert quiet.returncode == 1
    assert "KeyError: 'missing'" in quiet.stderr and "Traceback" not in quiet.stderr
    verbose = run("-p", "round4_plugin", command, path, "-v")
    assert verbose.returncode == 1
    assert re.search(rf"raised KeyError at \S*round4_plugin\.py:\d+ in {where}:", verbose.stderr)
    assert 'settings["missing"]' in verbose.stderr, "the traceback shows the plugin's line"
    assert verbose.stderr.rstrip().splitlines()[-1] == quiet.stderr.rstrip().splitlines()[-1]


# -- 2: a hook function without @hookimpl ----------------------------------


def test_a_function_named_like_a_hook_but_not_marked_is_warned_about() -> None:
    import unmarked_plugin

    host = irqbypass.PluginHost()
    host.register(unmarked_plugin, name="unmarked")
    warnings = "\n".join(host.warnings)
    assert re.search(
        r"plugin 'unmarked': function irqbypass_register_kinds \(\S*unmarked_plugin\.py:\d+\) "
        r"is named like a hook but not marked with @irqbypass.plugin.hookimpl, so pluggy never "
        r"calls it; decorate it with @irqbypass.plugin.hookimpl",
        warnings,
    ), warnings
    assert "irqbypass_confgure" in warnings and "did you mean 'irqbypass_configure'?" in warnings
    assert len(host.warnings) == 3
    marked = irqbypass.PluginHost()
    import round4_plugin

    marked.register(round4_plugin, name="round4")
    assert marked.warnings == []


def test_the_cli_warns_of_an_unmarked_hook(tmp_path: Path) -> None:
    result = run("-p", "unmarked_plugin", "plugins")
    assert result.returncode == 0
    assert (
        "irqbypass: warning: plugin 'unmarked_plugin': function irqbypass_register_kinds ("
        in result.stderr
    )


# -- 3: an entry point in the wrong group ----------------------------------


def _distribution(where: Path, name: str, entry_points: str) -> None:
    info = where / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_a_plugin_in_the_wrong_entry_point_group_is_named_without_importing_it(
    tmp_path: Path,
) -> None:
    _distribution(tmp_path, "irqbypass-wrong", "[irqbypass.plugins]\nwrong = no_such_module\n")
    _distribution(tmp_path, "irqbypass-typo", "[irqbypas]\ntypo = no_such_module_either\n")
    _distribution(tmp_path, "irqbypass-tools", "[console_scripts]\nirqtool = tools:main\n")
    env = {"PYTHONPATH": str(tmp_path)}
    result = run("plugins", env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "irqbypass: warning: plugin wrong (irqbypass-wrong 1.0) is not loaded: its entry point "
        "wrong = 'no_such_module' is in group 'irqbypass.plugins', which irqbypass does not "
        "read; plugins are found in group 'irqbypass'" in result.stderr
    )
    assert "plugin typo (irqbypass-typo 1.0) is not loaded" in result.stderr
    assert "irqtool" not in result.stderr, "a console script is no plugin"
    assert "no_such_module" not in result.stdout.split("not loaded:")[0]
    assert "  wrong (irqbypass-wrong 1.0): its entry point" in result.stdout
    assert "ModuleNotFoundError" not in result.stderr + result.stdout, "nothing is imported"


# -- 5 and 6: what to install; a failure said once ------------------------


def test_the_family_table_names_each_plugin_s_own_kinds(no_env: None) -> None:
    from irqbypass._kinds import FAMILY

    host = irqbypass.load_plugins(environ={})
    claimed = {}
    for info in host.info():
        if info.distribution is not None and info.distribution.startswith("irqbypass-"):
            for side, names in info.kinds.items():
                for name in names:
                    claimed[(side, name)] = info.distribution
    assert claimed == dict(FAMILY)


def test_an_unknown_kind_of_the_family_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh venv with the core and mock only: vhost-user is not installed."""
    from importlib import metadata

    import irqbypass_mock

    real = metadata.distribution

    def fresh(name: str) -> metadata.Distribution:
        if name == "irqbypass-vhost-user":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", fresh)
    host = irqbypass.PluginHost()
    host.register(irqbypass_mock, name="mock")
    with pytest.raises(irqbypass.exceptions.UnknownKindError) as info:
        host.kinds.get("producer", "vhost-user")
    assert str(info.value) == (
        "no plugin provides producer kind 'vhost-user': it comes with distribution "
        "irqbypass-vhost-user, which is not installed; install it "
        "(pip install irqbypass-vhost-user) (known producer kinds: mock)"
    )
    with pytest.raises(irqbypass.exceptions.UnknownKindError, match="did you mean 'mock'"):
        host.kinds.get("producer", "mok")


def test_a_failed_plugin_s_error_is_said_once(tmp_path: Path) -> None:
    (tmp_path / "crashing_at_import.py").write_text(
        "raise RuntimeError('the device library is missing ' + 'x' * 200)\n"
    )
    path = topology(tmp_path, FACTORY_BUG.replace("factory-bug", "fancy"))
    result = run("-p", "crashing_at_import", "-p", "round4_plugin", "check", path,
                 env={"PYTHONPATH": f"{tmp_path}:{HERE}"})  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("the device library is missing") == 1, result.stderr
    error = result.stderr.splitlines()[-1]
    assert "plugin 'crashing_at_import' (no distribution) failed, so it may provide it" in error
    assert "(why: the warning it gave, or `irqbypass plugins -v`; fix or block it)" in error
    assert len(error) < 400


# -- 7: the API page types Availability with both forms --------------------


def test_the_api_page_types_availability_with_both_forms() -> None:
    import typing

    page = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    block = page.split(".. autodata:: irqbypass.plugin.Availability", 1)[1].split("```", 1)[0]
    forms = typing.get_args(irqbypass.plugin.Availability)
    arities = sorted(len(typing.get_args(form)[0]) for form in forms)
    assert arities == [0, 1]
    assert "Callable[[], str | None]" in block
    assert "Callable[[Mapping[str, Any]], str | None]" in block


# -- 4: a veto sees every pairing, whichever callbacks the ends define -----


class DenyList:
    """A veto as the plugin guide writes it: on the pairing, not on a callback."""

    def __init__(self, *names: str, unpaired: bool = False) -> None:
        self.names = names
        self.unpaired = unpaired
        self.seen: list[tuple[str, str]] = []

    @irqbypass.plugin.hookimpl
    def irqbypass_pair(self, producer: irqbypass.Producer, consumer: irqbypass.Consumer) -> None:
        self.seen.append((producer.name, consumer.name))
        for name in (producer.name, consumer.name):
            if name in self.names:
                raise irqbypass.Veto(f"{name} is on the deny list", unpaired=self.unpaired)


class Recorded(irqbypass.Consumer):
    def __init__(self, token: object, name: str, log: list[str]) -> None:
        super().__init__(token=token, name=name)
        self.log = log

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self.log.append("add_producer")

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self.log.append("del_producer")

    def stop(self) -> None:
        self.log.append("stop")

    def start(self) -> None:
        self.log.append("start")


@pytest.mark.parametrize("first", ["producer", "consumer"])
def test_a_veto_on_a_producer_without_add_consumer_runs(first: str) -> None:
    """The mock's producer has no add_consumer: a wrapper of irqbypass_add
    with side == "producer" never ran for it; irqbypass_pair does."""
    deny = DenyList("m")
    host = irqbypass.PluginHost()
    host.register(deny, name="deny")
    manager = irqbypass.Manager(host, guard_sigint=False)
    log: list[str] = []
    with irqbypass.Eventfd() as token:
        producer = irqbypass.Producer(token=token, name="m")  # no callback at all
        consumer = Recorded(token, "c", log)
        ends: list[irqbypass.Endpoint] = [producer, consumer]
        if first == "consumer":
            ends.reverse()

        def register(endpoint: irqbypass.Endpoint) -> None:
            if isinstance(endpoint, irqbypass.Producer):
                manager.register_producer(endpoint)
            else:
                assert isinstance(endpoint, irqbypass.Consumer)
                manager.register_consumer(endpoint)

        register(ends[0])
        with pytest.raises(irqbypass.exceptions.ConnectError) as info:
            register(ends[1])
        assert isinstance(info.value.__cause__, irqbypass.Veto)
        message = str(info.value)
        assert "plugin 'deny' raised Veto: m is on the deny list in its irqbypass_pair hook" in (
            message
        )
        assert deny.seen == [("m", "c")]
        assert log == [], "refused before any callback: nothing to undo"
        assert manager.is_registered(ends[0]) and not manager.is_registered(ends[1])
        assert producer.consumer is None and consumer.producer is None
        host.unregister(name="deny")
        assert host.pairing is None
        register(ends[1])
        assert producer.consumer is consumer, "paired once the plugin is gone"


def test_a_veto_with_unpaired_leaves_a_mock_pair_open_on_the_eventfd_path(no_env: None) -> None:
    host = round4_host()
    host.register(DenyList("m", unpaired=True), name="deny")
    config = irqbypass.parse_config(DEAF, file="deaf.toml")
    with irqbypass.Topology(config, host) as top:
        assert top.vetoed == [("t", "m is on the deny list")]
        assert [row.paired for row in top.status()] == [False]
