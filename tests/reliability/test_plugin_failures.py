"""Broken plugins are reported by name and leave the others working; strict mode
makes them fatal; the allow list and the autoload switch decide what is even
imported.

The fixture distributions (tests/reliability/fixtures/rel_*.py) are installed
at test time into a temporary directory: a ``*.dist-info`` with METADATA and
entry_points.txt beside the module, put on ``sys.path`` (in-process, through the
``PluginHost.load_entry_points(entry_points=...)`` seam or plain discovery) or on
PYTHONPATH (the CLI in a subprocess).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import irqbypass
import irqbypass.exceptions
import pytest
from irqbypass._plugins import ENV_DISABLE, ENV_LOAD
from rel_support import COUNTERS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MARKER = "IRQBYPASS_REL_MARKER"

#: distribution -> module (the entry point has the module's name)
DISTS = {
    "irqbypass-rel-broken": "rel_broken_import",
    "irqbypass-rel-badsig": "rel_bad_signature",
    "irqbypass-rel-clash": "rel_kind_clash",
    "irqbypass-rel-good": "rel_good",
}


def install(site: Path, dist: str, module: str) -> None:
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[irqbypass]\n{module} = {module}\n")
    shutil.copy(FIXTURES / f"{module}.py", site / f"{module}.py")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fixture distributions installed in a directory on sys.path; the
    environment cleared; the import marker file set."""
    root = tmp_path / "site"
    root.mkdir()
    for dist, module in DISTS.items():
        install(root, dist, module)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(ENV_LOAD, raising=False)
    monkeypatch.delenv(ENV_DISABLE, raising=False)
    monkeypatch.setenv(MARKER, str(tmp_path / "imported.txt"))
    yield root
    for module in [*DISTS.values(), "rel_exit_on_import"]:
        sys.modules.pop(module, None)


def imported(site: Path) -> list[str]:
    marker = site.parent / "imported.txt"
    return marker.read_text().split() if marker.exists() else []


def site_entry_points(site: Path) -> Iterable[metadata.EntryPoint]:
    """The seam: the fixture distributions' entry points plus the installed ones."""
    mine = [
        ep
        for dist in metadata.distributions(path=[str(site)])
        for ep in dist.entry_points
        if ep.group == "irqbypass"
    ]
    return mine + list(metadata.entry_points(group="irqbypass"))


def test_failures_are_reported_by_name_and_others_work(site: Path) -> None:
    host = irqbypass.PluginHost()
    failures = host.load_entry_points(entry_points=lambda: site_entry_points(site), environ={})
    by_name = {f.name: f for f in failures}
    assert set(by_name) == {"rel_broken_import", "rel_bad_signature"}
    broken = by_name["rel_broken_import"]
    assert broken.distribution == "irqbypass-rel-broken" and broken.version == "1.0"
    assert broken.error == "ImportError: rel_broken_import needs libfoo.so.1"
    badsig = by_name["rel_bad_signature"]
    assert badsig.distribution == "irqbypass-rel-badsig"
    assert badsig.error is not None and badsig.error.startswith("PluginValidationError")
    assert "irqbypass_stop" in badsig.error and "when" in badsig.error
    # nothing of the refused plugin stays: not its valid kind hook, not a wrapper
    assert not host.pm.has_plugin("rel_bad_signature")
    assert "rel-half" not in host.kinds.names("consumer")
    assert host.wrapped == {}
    # the kind clash: the name is refused with both plugins named, the rest works
    problems = host.check_kinds()
    assert problems == [
        "producer kind 'mock' is registered by plugins 'mock' and 'rel_kind_clash'; "
        "it is refused until one is blocked"
    ]
    with pytest.raises(irqbypass.exceptions.KindConflictError, match="'mock' and 'rel_kind_clash'"):
        host.kinds.get("producer", "mock")
    assert host.kinds.get("producer", "rel-other").plugin == "rel_kind_clash"
    assert host.kinds.get("consumer", "rel-sink").plugin == "rel_good"
    assert host.kinds.get("consumer", "logging").plugin == "logging"
    infos = {i.name: i for i in host.info()}
    assert infos["rel_broken_import"].error == broken.error
    assert infos["rel_bad_signature"].error == badsig.error
    assert infos["rel_kind_clash"].error == "producer kind 'mock' is also registered by 'mock'"
    assert infos["mock"].error == "producer kind 'mock' is also registered by 'rel_kind_clash'"
    assert infos["rel_good"].error is None and infos["logging"].error is None
    # blocking one side of the clash resolves it
    host2 = irqbypass.PluginHost()
    host2.load_entry_points(
        entry_points=lambda: site_entry_points(site), environ={}, block=["irqbypass-rel-clash"]
    )
    assert host2.check_kinds() == [] and host2.kinds.get("producer", "mock").plugin == "mock"
    COUNTERS["plugin failure cases"] += 1


def test_strict_makes_each_failure_fatal(site: Path) -> None:
    with pytest.raises(irqbypass.PluginError) as info:
        irqbypass.load_plugins(strict=True)
    # the first failure in (distribution, name) order
    assert str(info.value).startswith(
        "plugin 'rel_bad_signature' (distribution irqbypass-rel-badsig 1.0) failed to load: "
        "PluginValidationError"
    )
    # with only the clash left, strict refuses the conflict
    with pytest.raises(irqbypass.PluginError, match="producer kind 'mock' is registered by"):
        irqbypass.load_plugins(strict=True, block=["irqbypass-rel-broken", "irqbypass-rel-badsig"])
    host = irqbypass.load_plugins(
        strict=True,
        block=["irqbypass-rel-broken", "irqbypass-rel-badsig", "irqbypass-rel-clash"],
    )
    assert host.failures == []
    COUNTERS["plugin failure cases"] += 1


def test_exit_on_import_is_a_load_failure(site: Path) -> None:
    """A plugin calling sys.exit() at import time is a failed plugin, not the
    end of the host process."""
    install(site, "irqbypass-rel-exit", "rel_exit_on_import")
    host = irqbypass.PluginHost()
    failures = host.load_entry_points(
        entry_points=lambda: site_entry_points(site), environ={ENV_LOAD: "irqbypass-rel-exit"}
    )
    assert [(f.name, f.error) for f in failures] == [("rel_exit_on_import", "SystemExit: 3")]
    assert imported(site) == ["rel_exit_on_import"]


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        ("irqbypass-mock", {"mock"}),
        ("irqbypass-mock, irqbypass-rel-good", {"mock", "rel_good"}),
        ("rel_good", {"rel_good"}),  # a plugin (entry point) name works too
        ("", set()),  # empty: none
        ("rel-marker-nothing, os", set()),  # names that are no distribution: none
    ],
)
def test_allow_list_env(site: Path, load: str, expected: set[str]) -> None:
    host = irqbypass.PluginHost()
    failures = host.load_entry_points(
        entry_points=lambda: site_entry_points(site), environ={ENV_LOAD: load}
    )
    assert failures == []
    assert {i.name for i in host.info()} == expected
    # nothing outside the list was even imported
    assert set(imported(site)) == expected & set(DISTS.values())
    COUNTERS["plugin allow-list cases"] += 1


def test_disable_autoload(site: Path) -> None:
    host = irqbypass.PluginHost()
    failures = host.load_entry_points(
        entry_points=lambda: site_entry_points(site),
        environ={ENV_DISABLE: "1", ENV_LOAD: "irqbypass-mock"},
    )
    assert failures == [] and host.info() == [] and imported(site) == []


@pytest.mark.parametrize(
    "environ",
    [
        {ENV_LOAD: "irqbypass-logging"},
        {ENV_LOAD: ""},
        {ENV_DISABLE: "1"},
        {ENV_DISABLE: "1", ENV_LOAD: "irqbypass-logging"},
    ],
    ids=["load-other", "load-none", "disable", "both"],
)
def test_program_allow_list_wins_over_env(site: Path, environ: dict[str, str]) -> None:
    """Regression: IRQBYPASS_LOAD_PLUGINS in the user's shell replaced the
    allow list the program chose; now the program's explicit choice wins (as
    pytest's -p wins over PYTEST_DISABLE_PLUGIN_AUTOLOAD)."""
    host = irqbypass.PluginHost()
    host.load_entry_points(
        entry_points=lambda: site_entry_points(site),
        allow=["irqbypass-mock", "irqbypass-rel-good"],
        environ=environ,
    )
    assert {i.name for i in host.info()} == {"mock", "rel_good"}
    assert imported(site) == ["rel_good"]
    reasons = {f.name: f.reason for f in host.filtered}
    assert reasons["logging"].startswith("not in the allow list (irqbypass-mock, ")


def test_load_plugins_reads_the_given_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_plugins(environ=...) reads that mapping, not os.environ; {} ignores the
    user's environment; an explicit allow wins over both."""
    monkeypatch.setenv(ENV_LOAD, "irqbypass-mock")
    assert names(irqbypass.load_plugins()) == {"mock"}
    assert names(irqbypass.load_plugins(environ={ENV_LOAD: "irqbypass-logging"})) == {"logging"}
    assert "logging" in names(irqbypass.load_plugins(environ={}))
    assert names(irqbypass.load_plugins(environ={ENV_DISABLE: "1"})) == set()
    host = irqbypass.load_plugins(allow=["irqbypass-logging"])
    assert names(host) == {"logging"}
    assert host.unmatched == []
    with pytest.raises(irqbypass.PluginError, match="environ='x' is not a mapping"):
        irqbypass.load_plugins(environ="x")  # type: ignore[arg-type]


def names(host: irqbypass.PluginHost) -> set[str]:
    return {i.name for i in host.info() if i.error is None}


# -- the CLI, in a subprocess -------------------------------------------------


def run_cli(
    site: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in (ENV_LOAD, ENV_DISABLE)}
    environ["PYTHONPATH"] = str(site)
    environ[MARKER] = str(site.parent / "imported.txt")
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "irqbypass.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=site.parent,
        check=False,
    )


def test_cli_plugins_json_reports_each_by_name(site: Path) -> None:
    proc = run_cli(site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    listed = {entry["name"]: entry for entry in json.loads(proc.stdout)["plugins"]}
    assert listed["rel_broken_import"]["error"] == (
        "ImportError: rel_broken_import needs libfoo.so.1"
    )
    assert listed["rel_broken_import"]["distribution"] == "irqbypass-rel-broken"
    assert listed["rel_bad_signature"]["error"].startswith("PluginValidationError")
    assert listed["rel_kind_clash"]["error"] == "producer kind 'mock' is also registered by 'mock'"
    assert listed["rel_good"]["error"] is None
    assert listed["rel_good"]["kinds"] == {"consumer": ["rel-sink"]}
    assert listed["logging"]["error"] is None
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("irqbypass: warning: ")]
    assert any("plugin 'rel_broken_import' (irqbypass-rel-broken 1.0)" in w for w in warnings)
    assert any("plugin 'rel_bad_signature' (irqbypass-rel-badsig 1.0)" in w for w in warnings)
    assert any("'mock' and 'rel_kind_clash'" in w for w in warnings)
    assert len(warnings) == 3, proc.stderr
    COUNTERS["plugin CLI cases"] += 1


@pytest.mark.parametrize(
    "command", [["plugins"], ["plugins", "--json"], ["demo", "--duration", "0.1"]]
)
def test_cli_strict_is_fatal(site: Path, command: list[str]) -> None:
    proc = run_cli(site, "--strict", *command)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        "irqbypass: error: plugin 'rel_bad_signature' (distribution irqbypass-rel-badsig 1.0) "
        "failed to load: PluginValidationError"
    ), proc.stderr
    if "--json" in command:  # the error as a JSON object too (issue 22 item 9)
        doc = json.loads(proc.stdout)
        assert doc["ok"] is False and doc["exit_status"] == 1
        assert doc["error"].startswith("plugin 'rel_bad_signature'")
    else:
        assert proc.stdout == ""
    COUNTERS["plugin CLI cases"] += 1


def test_cli_config_allow_list_imports_nothing_else(site: Path) -> None:
    config = site.parent / "only.toml"
    config.write_text(
        '[plugins]\nload = ["irqbypass-mock", "irqbypass-logging"]\n'
        '[[producers]]\nname = "p"\nkind = "mock"\ntoken = "t"\n'
        '[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\n'
    )
    proc = run_cli(site, "check", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no broken plugin was even looked at
    assert imported(site) == []
    # the env var narrows further, and wins
    proc = run_cli(site, "check", str(config), env={ENV_LOAD: "irqbypass-logging"})
    assert proc.returncode == 1 and "no plugin provides producer kind 'mock'" in proc.stderr
    assert "Traceback" not in proc.stderr and imported(site) == []
    COUNTERS["plugin CLI cases"] += 2


def test_cli_disable_autoload(site: Path) -> None:
    proc = run_cli(site, "plugins", "--json", env={ENV_DISABLE: "1"})
    assert proc.returncode == 0 and json.loads(proc.stdout)["plugins"] == [] and proc.stderr == ""
    assert imported(site) == []


def test_cli_survives_a_plugin_exiting_on_import(site: Path) -> None:
    """Regression: a plugin calling sys.exit(3) at import ended `irqbypass`
    silently with status 3; now it is listed as failed and the rest works."""
    install(site, "irqbypass-rel-exit", "rel_exit_on_import")
    proc = run_cli(site, "plugins", "--json", env={ENV_LOAD: "irqbypass-rel-exit,irqbypass-mock"})
    assert proc.returncode == 0, proc.stderr
    listed = {entry["name"]: entry["error"] for entry in json.loads(proc.stdout)["plugins"]}
    assert listed == {"mock": None, "rel_exit_on_import": "SystemExit: 3"}
    assert "irqbypass: warning: plugin 'rel_exit_on_import'" in proc.stderr


# -- distributions whose metadata cannot be read ------------------------------

#: entry_points.txt that importlib.metadata cannot read: a line without "=" (a
#: hand edit), bytes that are not UTF-8 (a file another tool wrote)
UNREADABLE_ENTRY_POINTS = {
    "no-equals": b"[console_scripts]\nthis line has no equals sign\n",
    "not-utf8": b"[console_scripts]\ntool = tool:main\xff\n",
}


def install_unreadable(site: Path, entry_points: bytes) -> Path:
    """A distribution (no plugin of ours: some other tool) whose entry_points.txt
    cannot be read; its dist-info directory."""
    info = site / "some_tool-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: some-tool\nVersion: 2.0\n")
    (info / "entry_points.txt").write_bytes(entry_points)
    return info


@pytest.mark.parametrize(
    "entry_points", UNREADABLE_ENTRY_POINTS.values(), ids=list(UNREADABLE_ENTRY_POINTS)
)
def test_a_distribution_whose_entry_points_cannot_be_read_hides_no_plugin(
    site: Path, entry_points: bytes
) -> None:
    """Any installed distribution's unreadable entry_points.txt (not even a
    plugin's) is a warning naming it; every plugin is still found (before: the
    TypeError or UnicodeDecodeError of importlib.metadata ended the discovery,
    so every irqbypass command crashed with a traceback)."""
    info = install_unreadable(site, entry_points)
    host = irqbypass.load_plugins(environ={}, block=list(DISTS)[:3])
    assert {"rel_good", "mock", "logging"} <= names(host)
    [warning] = [w for w in host.warnings if "some-tool" in w]
    assert str(info) in warning and "entry_points.txt cannot be read" in warning, warning
    assert "reinstall it" in warning, warning
    COUNTERS["plugin failure cases"] += 1


def test_a_plugin_whose_metadata_cannot_be_read_is_reported_and_others_work(site: Path) -> None:
    """A plugin whose METADATA is not UTF-8 is a failed plugin, named by its
    entry point, with what to do; the others load, and strict makes it fatal
    (before: the UnicodeDecodeError of reading its name ended the discovery)."""
    info = site / "irqbypass_rel_latin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_bytes(
        b"Metadata-Version: 2.1\nName: irqbypass-rel-latin\nVersion: 1.0\nSummary: caf\xe9\n"
    )
    (info / "entry_points.txt").write_text("[irqbypass]\nrel_latin = rel_good\n")
    host = irqbypass.load_plugins(environ={}, block=list(DISTS)[:3])
    [failure] = [f for f in host.failures if f.name == "rel_latin"]
    assert failure.error is not None
    assert failure.error.startswith(f"the metadata of its distribution ({info}) cannot be read")
    assert "UnicodeDecodeError" in failure.error and "reinstall it" in failure.error
    assert {"rel_good", "mock", "logging"} <= names(host)
    with pytest.raises(
        irqbypass.PluginError, match=r"plugin 'rel_latin' .*failed to load: the metadata"
    ):
        irqbypass.load_plugins(environ={}, block=list(DISTS)[:3], strict=True)
    # blocked by its plugin name, it is left out like any other
    host = irqbypass.load_plugins(environ={}, block=[*list(DISTS)[:3], "rel_latin"])
    assert [f.name for f in host.failures] == []
    COUNTERS["plugin failure cases"] += 1


@pytest.mark.parametrize(
    "entry_points", UNREADABLE_ENTRY_POINTS.values(), ids=list(UNREADABLE_ENTRY_POINTS)
)
def test_cli_survives_an_unreadable_distribution(site: Path, entry_points: bytes) -> None:
    install_unreadable(site, entry_points)
    proc = run_cli(site, "plugins", "--json", env={ENV_LOAD: "irqbypass-mock"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert [entry["name"] for entry in json.loads(proc.stdout)["plugins"]] == ["mock"]
    assert "irqbypass: warning: distribution some-tool" in proc.stderr, proc.stderr


# -- a plugin whose hooks call sys.exit() --------------------------------------


@pytest.fixture
def exiting(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    install(site, "irqbypass-rel-exit-hooks", "rel_exit_in_hooks")
    monkeypatch.delenv("IRQBYPASS_REL_EXIT", raising=False)
    yield site
    sys.modules.pop("rel_exit_in_hooks", None)


def test_exit_in_register_kinds_is_a_plugin_failure(
    exiting: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sys.exit() in irqbypass_register_kinds (argparse in a plugin) is that
    plugin's failure: its kinds are left out, the others work, strict makes it
    fatal (before: the SystemExit went through the host and ended the process)."""
    monkeypatch.setenv("IRQBYPASS_REL_EXIT", "register_kinds")
    allow = ["irqbypass-rel-exit-hooks", "irqbypass-mock"]
    host = irqbypass.load_plugins(allow=allow)
    assert host.check_kinds() == [
        "plugin 'rel_exit_in_hooks': irqbypass_register_kinds raised SystemExit: 4"
    ]
    assert host.kinds.names("consumer") == [] and host.kinds.names("producer") == ["mock"]
    with pytest.raises(irqbypass.PluginError, match="irqbypass_register_kinds raised SystemExit"):
        irqbypass.load_plugins(allow=allow, strict=True)


def test_exit_in_an_availability_check_is_the_kinds_reason(
    exiting: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IRQBYPASS_REL_EXIT", "availability")
    host = irqbypass.load_plugins(allow=["irqbypass-rel-exit-hooks"])
    reason = host.kinds.get("consumer", "rel-exit").unavailable_reason()
    assert reason is not None and reason.startswith("its availability check raised SystemExit: 4")


def test_exit_in_configure_is_a_plugin_error(
    exiting: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IRQBYPASS_REL_EXIT", "configure")
    host = irqbypass.load_plugins(allow=["irqbypass-rel-exit-hooks"])
    with pytest.raises(irqbypass.PluginError) as caught:
        host.configure({})
    assert str(caught.value).startswith(
        "plugin 'rel_exit_in_hooks': irqbypass_configure raised SystemExit: 4; "
        "this is a bug in that plugin"
    )


@pytest.mark.parametrize(
    ("hook", "command", "code", "said"),
    [
        ("register_kinds", ["plugins"], 0, "irqbypass: warning: plugin 'rel_exit_in_hooks': "),
        ("availability", ["plugins"], 0, "rel-exit"),
        ("configure", ["demo", "--duration", "0.1"], 1, "irqbypass: error: plugin "),
    ],
    ids=["register_kinds", "availability", "configure"],
)
def test_cli_survives_a_plugin_exiting_in_a_hook(
    exiting: Path, hook: str, command: list[str], code: int, said: str
) -> None:
    """Before: `irqbypass plugins` (or demo) ended silently with the plugin's
    exit status 4, having printed nothing."""
    env = {
        "IRQBYPASS_REL_EXIT": hook,
        ENV_LOAD: "irqbypass-rel-exit-hooks,irqbypass-mock,irqbypass-logging",
    }
    proc = run_cli(exiting, *command, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == code and "Traceback" not in output, output
    assert said in output and "SystemExit: 4" in output, output


@pytest.mark.parametrize(
    "entry_points", UNREADABLE_ENTRY_POINTS.values(), ids=list(UNREADABLE_ENTRY_POINTS)
)
def test_the_long_version_survives_an_unreadable_distribution(
    site: Path, entry_points: bytes
) -> None:
    """`irqbypass --version --version`, what one runs to see what is installed,
    lists the plugins and says which distributions cannot be read (before: the
    traceback of importlib.metadata, and no list)."""
    install_unreadable(site, entry_points)
    latin = site / "irqbypass_rel_latin-1.0.dist-info"
    latin.mkdir()
    (latin / "METADATA").write_bytes(b"Metadata-Version: 2.1\nName: caf\xe9\nVersion: 1.0\n")
    (latin / "entry_points.txt").write_text("[irqbypass]\nrel_latin = rel_good\n")
    proc = run_cli(site, "--version", "--version")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "  rel_good (irqbypass-rel-good 1.0): rel_good; " in proc.stdout, proc.stdout
    assert (
        f"  rel_latin (no distribution): rel_good; the metadata of its distribution ({latin})"
        in (proc.stdout)
    ), proc.stdout
    assert "irqbypass: warning: distribution some-tool" in proc.stderr, proc.stderr
