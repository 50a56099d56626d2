"""Security: a configuration cannot make irqbypass import a module, plugin loading
obeys the allow list, and the files the tool creates are private (0600)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import irqbypass
import irqbypass.exceptions
import pytest
from irqbypass._plugins import ENV_DISABLE, ENV_LOAD
from rel_support import COUNTERS

MARKER_MODULE = """
import os
with open(os.environ["IRQBYPASS_REL_MARKER"], "a") as marker:
    marker.write("imported\\n")

class Thing:
    pass
"""
ENDPOINT = '[[producers]]\nname = "p"\nkind = "mock"\ntoken = "t"\n'


@pytest.fixture
def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module ``rel_marker_mod`` on sys.path that records being imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "rel_marker_mod.py").write_text(MARKER_MODULE)
    marker = tmp_path / "imported.txt"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("IRQBYPASS_REL_MARKER", str(marker))
    monkeypatch.delenv(ENV_LOAD, raising=False)
    monkeypatch.delenv(ENV_DISABLE, raising=False)
    yield marker
    sys.modules.pop("rel_marker_mod", None)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(ENDPOINT.replace('"mock"', '"rel_marker_mod"'), id="kind-module"),
        pytest.param(ENDPOINT.replace('"mock"', '"rel_marker_mod.Thing"'), id="kind-dotted"),
        pytest.param(ENDPOINT.replace('"mock"', '"rel_marker_mod:Thing"'), id="kind-entry-point"),
        pytest.param(ENDPOINT.replace('"mock"', '"os.system"'), id="kind-os-system"),
        pytest.param('[plugins]\nload = ["rel_marker_mod"]\n' + ENDPOINT, id="load-module"),
        pytest.param('[plugins]\nblock = ["rel_marker_mod"]\n' + ENDPOINT, id="block-module"),
        pytest.param(ENDPOINT + 'module = "rel_marker_mod"\n', id="key-module"),
        pytest.param(ENDPOINT + 'factory = "rel_marker_mod:Thing"\n', id="key-factory"),
        pytest.param(ENDPOINT + 'class = "rel_marker_mod.Thing"\n', id="key-class"),
        pytest.param('[plugins]\npath = ["."]\nmodules = ["rel_marker_mod"]\n', id="plugins-path"),
        pytest.param('[plugins]\nimport = ["rel_marker_mod"]\n', id="plugins-import"),
        pytest.param('[run]\nhook = "rel_marker_mod"\n', id="run-hook"),
        pytest.param('rel_marker_mod = "rel_marker_mod"\n', id="top-level"),
    ],
)
def test_config_cannot_import_a_module(text: str, marker_module: Path) -> None:
    """Whatever the file says, the module is never imported: a kind is a name
    some loaded plugin registered, and no key of the schema names a module."""
    config = None
    try:
        config = irqbypass.parse_config(text, file="evil.toml")
        host = irqbypass.load_plugins(
            allow=config.plugins.load, block=config.plugins.block, strict=False
        )
        topology = irqbypass.Topology(config, host)
        try:
            topology.build()
        finally:
            topology.teardown()
    except irqbypass.ConfigError as error:
        assert error.file == "evil.toml"
    assert not marker_module.exists(), "the configuration imported a module"
    assert "rel_marker_mod" not in sys.modules
    COUNTERS["security: import attempts refused"] += 1


def test_kind_is_never_resolved_as_a_module(marker_module: Path) -> None:
    host = irqbypass.load_plugins(allow=["irqbypass-mock"])
    with pytest.raises(
        irqbypass.exceptions.UnknownKindError, match="no plugin provides producer kind"
    ):
        host.kinds.get("producer", "rel_marker_mod.Thing")
    assert not marker_module.exists()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_logging_json_file_is_created_0600(umask: int, tmp_path: Path, no_fd_leak: None) -> None:
    from irqbypass_logging import LoggingConsumer

    path = tmp_path / "events.jsonl"
    old = os.umask(umask)
    try:
        with irqbypass.Eventfd() as token:
            consumer = LoggingConsumer(token=token, name="c", json_file=str(path))
            consumer.open()
            consumer.close()
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    assert path.read_text().count("\n") == 2  # open, close
    COUNTERS["security: file permission cases"] += 1


def test_cli_run_creates_only_the_json_file_and_it_is_private(tmp_path: Path) -> None:
    """``irqbypass run`` in an empty directory: the JSON lines file is the only
    file it leaves behind, mode 0600 even under umask 0."""
    work = tmp_path / "work"
    work.mkdir()
    config = tmp_path / "run.toml"
    config.write_text(
        '[[producers]]\nname = "p"\nkind = "mock"\ntoken = "t"\noptions = { count = 5, rate = 0 }\n'
        '[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\n'
        'options = { json_file = "events.jsonl" }\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in (ENV_LOAD, ENV_DISABLE)}
    env[ENV_LOAD] = "irqbypass-mock,irqbypass-logging"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; os.umask(0); from irqbypass.cli import main; "
            "sys.exit(main(sys.argv[1:]))",
            "run",
            str(config),
            "--duration",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["events.jsonl"]
    assert stat.S_IMODE(os.stat(work / "events.jsonl").st_mode) == 0o600
