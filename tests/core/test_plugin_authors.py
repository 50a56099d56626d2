"""Regression tests of issue 22 (items 2, 5, 6, 7 and the availability part of 1):
what a plugin author ran into. Plugins under test are modules of tests/core loaded with
``-p`` (``faulty_plugin``) or registered in-process."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import Generator, Mapping
from pathlib import Path

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import pytest
from cli_support import pair, run, topology


def faulty_host() -> irqbypass.PluginHost:
    import faulty_plugin

    host = irqbypass.PluginHost()
    host.register(faulty_plugin, name="faulty")
    return host


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_an_availability_check_that_raises_names_the_plugin() -> None:
    kind = faulty_host().kinds.get("consumer", "unsure")
    reason = kind.unavailable_reason()
    assert reason is not None
    assert "OSError: cannot tell" in reason and "bug in plugin faulty" in reason


def test_a_missing_required_option_fails_check(tmp_path: Path) -> None:
    text = pair("mock", "needs-path").replace('kind="needs-path"', 'kind="needs-path"\noptions={}')
    result = run("-p", "faulty_plugin", "check", topology(tmp_path, text))
    assert result.returncode == 1, result.stdout
    assert result.stderr.endswith(
        "t.toml:8: consumers[0].options.path: missing required option 'path'; "
        "set it in this entry's options\n"
    ), result.stderr
    given = text.replace("options={}", 'options={path="/x"}')
    assert run("-p", "faulty_plugin", "check", topology(tmp_path, given)).returncode == 0


@pytest.mark.parametrize(
    ("read", "given", "expected"),
    [
        (lambda o: o.get_str("k", required=True), "v", "v"),
        (lambda o: o.get_int("k", required=True, min=0), 3, 3),
        (lambda o: o.get_float("k", required=True), 2, 2.0),
        (lambda o: o.get_bool("k", required=True), False, False),
    ],
)
def test_every_getter_takes_required(read: object, given: object, expected: object) -> None:
    assert read(irqbypass.plugin.Options({"k": given})) == expected  # type: ignore[operator]
    with pytest.raises(irqbypass.ConfigError, match="missing required option 'k'") as info:
        read(irqbypass.plugin.Options({}, where="producers[0].options", file="f"))  # type: ignore[operator]
    assert info.value.key == "producers[0].options.k"
    assert irqbypass.plugin.Options({}).get_int("k", 5) == 5, "a default still works"


class _BrokenKinds:
    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        register.producer("half", _never)
        raise RuntimeError("registration is broken")


def _never(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
    raise AssertionError("never built")


def test_an_unknown_kind_names_the_plugin_whose_registration_raised() -> None:
    host = irqbypass.PluginHost()
    host.register(_BrokenKinds(), name="broken")
    with pytest.raises(irqbypass.exceptions.UnknownKindError) as info:
        host.kinds.get("producer", "half")
    message = str(info.value)
    assert "no plugin provides producer kind 'half'" in message
    assert "plugin 'broken' (in irqbypass_register_kinds) failed, so it may provide it" in message
    assert "RuntimeError" not in message, "why is told once, by check_kinds(), not again here"


class _CrashingEntryPoint:
    name = "crashing"
    value = "crashing_plugin"
    dist = None

    def load(self) -> object:
        raise ImportError("no such device library")


def test_an_unknown_kind_names_a_plugin_that_failed_to_load() -> None:
    host = irqbypass.PluginHost()
    host.load_entry_points(entry_points=lambda: [_CrashingEntryPoint()], environ={})  # type: ignore[list-item]
    with pytest.raises(irqbypass.exceptions.UnknownKindError) as info:
        host.kinds.get("producer", "fancy")
    message = str(info.value)
    assert "no plugin provides producer kind 'fancy'" in message
    assert "plugin 'crashing' (no distribution) failed, so it may provide it" in message
    assert "no such device library" not in message, "why is told once, where it failed"


def test_p_of_a_module_its_entry_point_loaded_loads_it_once() -> None:
    result = run("-p", "irqbypass_mock", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    assert "ValueError" not in result.stderr and "already registered" not in result.stderr
    plugins = [p for p in json.loads(result.stdout)["plugins"] if p["module"] == "irqbypass_mock"]
    assert [p["name"] for p in plugins] == ["mock"] and plugins[0]["error"] is None


def test_p_of_no_such_module_is_an_error() -> None:
    result = run("-p", "nosuchmod", "plugins")
    assert result.returncode == 1
    assert result.stderr == (
        "irqbypass: error: -p nosuchmod: no module named 'nosuchmod'; check the name, or add "
        "the directory that holds it to PYTHONPATH\n"
    )
    with pytest.raises(irqbypass.PluginError, match="no module named 'nosuchmod'"):
        irqbypass.load_plugins(modules=["nosuchmod"], allow=[])


def test_p_of_a_module_whose_own_import_fails_stays_a_broken_plugin(tmp_path: Path) -> None:
    (tmp_path / "half_plugin.py").write_text("import no_such_dependency\n")
    result = run("-p", "half_plugin", "plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0
    assert "plugin 'half_plugin' (no distribution) failed to load: ModuleNotFoundError" in (
        result.stderr
    )


def test_an_availability_check_gets_the_entry_s_options_positionally() -> None:
    seen: list[object] = []

    def entry_check(options: Mapping[str, object]) -> str | None:
        seen.append(options)
        return "no" if options.get("device") == "/nonexistent" else None

    from irqbypass._kinds import KindRegistry

    registry = KindRegistry()
    irqbypass.plugin.KindRegistrar("p", registry).consumer("c", _never, availability=entry_check)
    irqbypass.plugin.KindRegistrar("p", registry).producer("m", _never, availability=lambda: None)
    irqbypass.plugin.KindRegistrar("p", registry).producer("bad", _never, availability=lambda: 0)  # type: ignore[arg-type,return-value]
    kind = registry.get("consumer", "c")
    assert kind.unavailable_reason({"device": "/nonexistent"}) == "no"
    assert kind.unavailable_reason() is None and seen[-1] == {}
    assert registry.get("producer", "m").unavailable_reason({"x": 1}) is None
    reason = registry.get("producer", "bad").unavailable_reason()
    assert reason is not None and "returned 0, not None or a reason" in reason


def test_availability_is_typed_with_both_forms(tmp_path: Path) -> None:
    source = tmp_path / "typed_kinds.py"
    source.write_text(
        "from collections.abc import Mapping\n"
        "from typing import Any\n"
        "import irqbypass\nimport irqbypass.plugin\n\n"
        "def machine() -> str | None:\n    return None\n\n"
        "def entry(options: Mapping[str, Any]) -> str | None:\n    return None\n\n"
        "def wrong(a: int, b: int) -> str | None:\n    return None\n\n"
        "def factory(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Producer:\n"
        "    raise NotImplementedError\n\n"
        "def register(r: irqbypass.plugin.KindRegistrar) -> None:\n"
        "    r.producer('a', factory, availability=machine)\n"
        "    r.producer('b', factory, availability=entry)\n"
        "    r.producer('c', factory, availability=wrong)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [ln for ln in result.stdout.splitlines() if ": error:" in ln]
    assert len(errors) == 1 and "typed_kinds.py:21:" in errors[0], result.stdout


def test_a_stop_failure_at_registration_is_said_once_and_short(tmp_path: Path) -> None:
    path = topology(tmp_path, pair("stop-raises", "sink"))
    result = run("-p", "faulty_plugin", "run", path, "--duration", "0.2")
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.count("RuntimeError: stop is broken") == 1, error
    assert "kernel would leave" not in error, "the manager's state is the topology's to tell"
    assert error.endswith(
        "register of producer 'p0' (kind stop-raises) failed: producer 'p0'.stop() raised "
        "RuntimeError: stop is broken (a bug in faulty_plugin.StopRaises, which should raise "
        "an irqbypass error); while undoing: unregister of producer 'p0' "
        "(kind stop-raises): the same error again"
    ), error
    assert len(error) - len(path) < 320, len(error)  # was 630


# -- item 1: every call into plugin code is reported as that plugin's bug ----


def test_a_raising_stats_keeps_the_summary_and_is_reported_once(tmp_path: Path) -> None:
    path = topology(tmp_path, pair("stats-raise", "sink"))
    result = run("-p", "faulty_plugin", "run", path, "--duration", "30")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "summary:" in result.stdout
    (warning,) = [ln for ln in result.stderr.splitlines() if "stats()" in ln]
    assert "producer 'p0' (kind stats-raise)" in warning
    assert "RuntimeError: stats are broken" in warning
    assert "bug in plugin faulty_plugin" in warning
    as_json = run("-p", "faulty_plugin", "run", path, "--duration", "30", "--json")
    assert as_json.returncode == 0, as_json.stderr
    (row,) = json.loads(as_json.stdout)["pairs"]
    assert row["fired"] is None and row["producer_stats"] == {}


def test_a_raising_finished_runs_the_duration_and_is_reported(tmp_path: Path) -> None:
    path = topology(tmp_path, pair("finished-raises", "sink"))
    result = run("-p", "faulty_plugin", "run", path, "--duration", "0.3")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "summary:" in result.stdout
    assert "its finished raised ValueError: finished is broken" in result.stderr
    assert "bug in plugin faulty_plugin" in result.stderr


def test_open_and_close_that_raise_name_the_plugin(no_env: None) -> None:
    for kind, step in (("open-raises", "open"), ("close-raises", "close")):
        config = irqbypass.parse_config(pair("mock", kind))
        host = faulty_host()
        host.load_entry_points(allow=["irqbypass-mock"])
        top = irqbypass.Topology(config, host)
        with pytest.raises(irqbypass.TopologyError) as info:
            top.apply()
            top.teardown()
        message = str(info.value)
        assert f"{step} of consumer 'c0' (kind {kind})" in message, message
        assert f"RuntimeError: {step} is broken; this is a bug in plugin faulty" in message
        assert top.tokens == {} and top.placed == []


# -- item 3: what a factory returns is checked --------------------------------


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("own-token", "whose token is <Eventfd"),
        ("own-name", "not spec.name 'p0'; pass name=spec.name"),
        ("not-an-endpoint", "returned str 'an endpoint', which is not an irqbypass.Producer"),
    ],
)
def test_a_factory_that_ignores_its_spec_is_refused_and_leaks_nothing(
    kind: str, problem: str
) -> None:
    config = irqbypass.parse_config(pair(kind, "sink"), file="f.toml")
    host = faulty_host()
    host.kinds  # noqa: B018 - collected before the fds are counted
    before = open_fds()
    for check_only in (True, False):
        top = irqbypass.Topology(config, host)
        with pytest.raises(irqbypass.TopologyError) as info:
            top.build(check_only=check_only)
        message = str(info.value)
        assert message.startswith(f"f.toml: producers[0] 'p0': the factory of kind {kind!r}"), (
            message
        )
        assert "(plugin faulty)" in message and "this is a bug in that plugin" in message
        assert problem in message
        assert open_fds() == before, "the refused endpoint's eventfd was closed"


def test_check_refuses_a_factory_that_ignores_the_token(tmp_path: Path) -> None:
    result = run("-p", "faulty_plugin", "check", topology(tmp_path, pair("own-token", "sink")))
    assert result.returncode == 1
    assert "pairs (bypass)" not in result.stdout
    assert "not spec.token" in result.stderr and "Traceback" not in result.stderr


# -- item 4: a plugin's own table, and a veto that leaves a pair unpaired ------


def audited(settings: str) -> str:
    pairs = "".join(
        pair("mock", "logging", token=f"t{n}", n=n).replace(
            'kind="mock"', 'kind="mock"\noptions={count=50, rate=0.0}'
        )
        for n in range(2)
    )
    return f"[plugins.audit_plugin]\n{settings}\n\n{pairs}"


def test_a_veto_with_unpaired_leaves_that_pair_unpaired_and_runs_the_rest(tmp_path: Path) -> None:
    path = topology(tmp_path, audited('deny = ["p1"]\nunpaired = true'))
    result = run("-p", "audit_plugin", "run", path, "--duration", "30")
    assert result.returncode == 0, result.stderr
    applied = result.stdout.split("summary:")[0].splitlines()
    rows = {ln.split()[0]: ln for ln in applied if ln.startswith("  t")}
    assert "paired (bypass)" in rows["t0"]
    assert "unpaired (eventfd only): vetoed: p1 is on the deny list" in rows["t1"]
    doc = json.loads(run("-p", "audit_plugin", "run", path, "--json", "--duration", "30").stdout)
    assert doc["vetoed"] == [{"token": "t1", "reason": "p1 is on the deny list"}]
    by_token = {row["token"]: row for row in doc["pairs"]}
    assert by_token["t0"]["paired"] is True and by_token["t1"]["paired"] is False
    assert by_token["t1"]["delivered"] == by_token["t1"]["fired"] == 50, "on the eventfd path"


def test_a_veto_without_unpaired_fails_the_topology_naming_the_plugin(tmp_path: Path) -> None:
    path = topology(tmp_path, audited('deny = ["p1"]'))
    result = run("-p", "audit_plugin", "run", path, "--json", "--duration", "30")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert "plugin 'audit_plugin' raised Veto: p1 is on the deny list" in doc["error"]


def test_a_plugin_s_table_is_checked_by_the_plugin_with_its_line(tmp_path: Path) -> None:
    path = topology(tmp_path, audited('dney = ["p1"]'))
    result = run("-p", "audit_plugin", "check", path)
    assert result.returncode == 1
    assert result.stderr.endswith(
        "t.toml:2: plugins.audit_plugin.dney: unknown option 'dney'; did you mean 'deny'?\n"
    ), result.stderr
    nobody = topology(tmp_path, audited("").replace("audit_plugin", "audit_plugn"), name="n.toml")
    warned = run("-p", "audit_plugin", "check", nobody)
    assert warned.returncode == 0, warned.stderr
    assert (
        "plugins.audit_plugn: no plugin named 'audit_plugn' is loaded, so nothing reads this "
        "table; did you mean 'audit_plugin'?" in warned.stderr
    )


def test_a_table_of_a_plugin_that_takes_no_settings_is_a_warning(tmp_path: Path) -> None:
    """[plugins.mock] with a key: mock has no irqbypass_configure hook, so
    nothing reads the table; that is said, as for a table naming no plugin
    (before: nothing was said, and the setting was silently lost)."""
    host = irqbypass.load_plugins(allow=["irqbypass-mock"])
    assert host.configure({"mock": {"rate": 5}}) == [
        "plugins.mock: plugin 'mock' has no irqbypass_configure hook, so it takes no "
        "settings and nothing reads this table; remove it, or set the option where the "
        "plugin reads it (an entry's options)"
    ]
    path = topology(tmp_path, "[plugins.mock]\nrate = 5\n\n" + pair("mock", "logging"))
    result = run("check", path)
    assert result.returncode == 0, result.stderr
    assert "irqbypass: warning: plugins.mock: plugin 'mock' has no irqbypass_configure" in (
        result.stderr
    ), result.stderr


def test_a_table_of_a_plugin_named_with_a_dash_has_its_lines() -> None:
    """A plugin's name may hold a dash (its entry point's: this project's
    vhost-user has one): an error in its table names the line of its key, as
    for any other name (before: the key path's pattern stopped at the dash and
    found no line)."""
    import audit_plugin

    config = irqbypass.parse_config(
        "[run]\nduration = 1.0\n\n[plugins.audit-plugin]\nunpaired = true\ndney = ['p1']\n",
        file="t.toml",
    )
    host = irqbypass.PluginHost()
    host.register(audit_plugin, name="audit-plugin")
    with pytest.raises(irqbypass.ConfigError) as caught:
        host.configure(config.plugins.tables, file=config.file)
    assert caught.value.key == "plugins.audit-plugin.dney"
    located = config.error(caught.value.key, caught.value.problem)  # as `irqbypass check` does
    assert str(located) == (
        "t.toml:6: plugins.audit-plugin.dney: unknown option 'dney'; did you mean 'deny'?"
    )
    assert config.error("plugins.audit-plugin", "x").line == 4


def test_configure_hands_each_plugin_its_own_table_from_python() -> None:
    seen: dict[str, dict[str, object]] = {}

    class Reader:
        def __init__(self, name: str) -> None:
            self.name = name

        @irqbypass.plugin.hookimpl
        def irqbypass_configure(self, options: irqbypass.plugin.Options) -> None:
            seen[self.name] = {"level": options.get_int("level", 0)}
            options.finish()

    host = irqbypass.PluginHost()
    host.register(Reader("a"), name="a")
    host.register(Reader("b"), name="b")
    config = irqbypass.parse_config("[plugins.a]\nlevel = 3\n")
    assert host.configure(config.plugins.tables, file=config.file) == []
    assert seen == {"a": {"level": 3}, "b": {"level": 0}}


def test_a_veto_leaves_no_trace_once_its_pair_is_detached(no_env: None) -> None:
    import audit_plugin

    host = irqbypass.load_plugins(allow=["irqbypass-mock", "irqbypass-logging"])
    host.register(audit_plugin, name="audit_plugin")
    config = irqbypass.parse_config(audited('deny = ["p1"]\nunpaired = true'), file="a.toml")
    assert host.configure(config.plugins.tables, file=config.file) == []
    with irqbypass.Topology(config, host) as top:
        assert top.vetoed == [("t1", "p1 is on the deny list")]
        assert [row.paired for row in top.status()] == [True, False]
        top.detach(["p1"])
        assert top.vetoed == []
    assert top.vetoed == []


def test_a_running_topology_s_status_lists_its_vetoed_pairs(no_env: None) -> None:
    """What ``irqbypass status`` and SIGUSR1 show, as run's own table does."""
    import audit_plugin
    from irqbypass.cli.live import Live, _print_status

    host = irqbypass.load_plugins(allow=["irqbypass-mock", "irqbypass-logging"])
    host.register(audit_plugin, name="audit_plugin")
    config = irqbypass.parse_config(audited('deny = ["p1"]\nunpaired = true'), file="a.toml")
    assert host.configure(config.plugins.tables, file=config.file) == []
    with irqbypass.Topology(config, host) as top:
        doc = Live(top, "a.toml").status()
    assert doc["vetoed"] == [{"token": "t1", "reason": "p1 is on the deny list"}]
    out = io.StringIO()
    _print_status(doc, out)
    assert "  t1: unpaired (eventfd only): vetoed: p1 is on the deny list\n" in out.getvalue()


class _BrokenHook:
    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(
        self, endpoint: irqbypass.Endpoint, partner: irqbypass.Endpoint, side: irqbypass.plugin.Side
    ) -> Generator[None, None, None]:
        raise RuntimeError("the hook is broken")
        yield  # a wrapper: the generator that never gets here


def test_a_hook_that_raises_something_else_than_an_irqbypass_error_is_named_a_bug() -> None:
    host = irqbypass.PluginHost()
    host.register(_BrokenHook(), name="broken-hook")
    manager = irqbypass.Manager(host, guard_sigint=False)
    with irqbypass.Eventfd() as token:
        manager.register_consumer(faulty_plugin_sink(token))
        with pytest.raises(irqbypass.exceptions.ConnectError) as info:
            manager.register_producer(irqbypass.Producer(token=token, name="p"))
    message = str(info.value)
    assert "plugin 'broken-hook' raised RuntimeError: the hook is broken" in message
    assert "this is a bug in plugin 'broken-hook'" in message


def faulty_plugin_sink(token: irqbypass.Eventfd) -> irqbypass.Consumer:
    import faulty_plugin

    return faulty_plugin.Sink(token=token, name="c")


@dataclasses.dataclass(frozen=True)
class _Rate(irqbypass.plugin.Settings):
    """A kind's settings: a rate, and a burst no larger than it."""

    rate: int = 1
    burst: int = 1

    def check(self) -> None:
        if self.rate < 1:
            raise self.refuse(f"rate {self.rate} is below 1; use 1 or more")
        if self.burst > self.rate:
            raise self.refuse(
                f"burst {self.burst} exceeds rate {self.rate}; lower burst",
                option="burst",
                in_config="must not exceed rate; lower it",
            )


def test_settings_are_checked_once_made_and_say_whose_they_are() -> None:
    """One check for both ways in: a Python caller's error names the endpoint;
    a file's names the option it is about (in the file's words), or the whole
    table, and the file."""
    assert _Rate(rate=5, burst=2).burst == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Rate().rate = 3  # type: ignore[misc]
    with (
        pytest.raises(irqbypass.InvalidEndpointError) as info,
        irqbypass.plugin.Settings.naming("mock producer 'p'"),
    ):
        _Rate(rate=2, burst=3)
    assert str(info.value) == "mock producer 'p': burst 3 exceeds rate 2; lower burst"
    opts = irqbypass.plugin.Options({"burst": 3}, where="producers[0].options", file="t.toml")
    with (
        pytest.raises(irqbypass.ConfigError) as config,
        opts.refusals(),
        irqbypass.plugin.Settings.naming("mock producer 'p'"),
    ):
        _Rate(rate=2, burst=3)
    assert (config.value.file, config.value.key) == ("t.toml", "producers[0].options.burst")
    assert config.value.problem == "must not exceed rate; lower it"
    with (
        pytest.raises(irqbypass.ConfigError) as whole,
        opts.refusals(),
        irqbypass.plugin.Settings.naming("mock producer 'p'"),
    ):
        _Rate(rate=0)
    assert whole.value.key == "producers[0].options"
    assert whole.value.problem == "mock producer 'p': rate 0 is below 1; use 1 or more"
    with pytest.raises(irqbypass.ConfigError) as plain, opts.refusals():
        raise irqbypass.InvalidEndpointError("the token must be an eventfd")
    assert plain.value.key == "producers[0].options"


def test_a_named_refusal_keeps_its_errno() -> None:
    """A setting refused with the kernel's errno (a path too long: ENAMETOOLONG)
    keeps it once named; one without has EINVAL, as any InvalidEndpointError."""
    with (
        pytest.raises(irqbypass.InvalidEndpointError) as info,
        irqbypass.plugin.Settings.naming("mock producer 'p'"),
    ):
        raise irqbypass.plugin.Settings.refuse("the name is too long", errno=36)
    assert (info.value.errno, info.value.message) == (36, "mock producer 'p': the name is too long")
    with (
        pytest.raises(irqbypass.InvalidEndpointError) as plain,
        irqbypass.plugin.Settings.naming("mock producer 'p'"),
    ):
        _Rate(rate=0)
    assert plain.value.errno == 22
