"""The CLI as a user runs it: a subprocess, real plugins, real output."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = [sys.executable, "-m", "irqbypass.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    full_env.update(env or {})
    return subprocess.run(
        [*EXE, *args], capture_output=True, text=True, timeout=120, env=full_env, check=False
    )


def run_with_reader_gone(*args: str) -> subprocess.CompletedProcess[str]:
    """``irqbypass ARGS`` whose stdout is a pipe with its reader already closed:
    every write to stdout is EPIPE (``| head -c 1`` would race the writes)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [*EXE, *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")},
            check=False,
        )
    finally:
        os.close(writer)


def test_demo_runs_and_ends_by_itself() -> None:
    result = run("demo", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    rows = {row["token"]: row for row in doc["pairs"]}
    assert rows["vector0"]["paired"] is True
    assert rows["vector0"]["fired"] == rows["vector0"]["delivered"] == 500
    assert rows["vector1"]["paired"] is False, "bypass = false: never paired"
    assert rows["vector1"]["delivered"] == 1000
    assert "Traceback" not in result.stderr


def test_run_prints_table_and_summary_quietly_when_piped(tmp_path: Path) -> None:
    topo = tmp_path / "t.toml"
    topo.write_text(
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=0.0, count=300}\n'
        '[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\n'
    )
    result = run("run", str(topo), "--duration", "120")  # ends once settled
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("m (mock)" in ln and "l (logging)" in ln and "paired" in ln for ln in lines)
    (summary,) = [ln.split() for ln in lines if ln.split()[:1] == ["t"] and "300" in ln]
    assert summary[:8] == ["t", "m", "l", "300", "300", "-", "0", "0"]
    assert "\r" not in result.stderr, "no progress line when not on a terminal"


def test_duration_bounds_an_endless_producer(tmp_path: Path) -> None:
    topo = tmp_path / "t.toml"
    topo.write_text(
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=200.0, count=-1}\n'
        '[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\n'
    )
    result = run("run", str(topo), "--duration", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["pairs"]
    # the run ends at its duration with the producer still firing: the consumer
    # may lag behind it (a loaded host), so nothing can be called lost yet
    assert 0 <= row["delivered"] <= row["fired"]
    assert row["lost"] is None, "in flight, not lost, while the producer fires"


def test_check_validates_without_opening(tmp_path: Path) -> None:
    result = run("check", str(ROOT / "examples" / "demo.toml"))
    assert result.returncode == 0, result.stderr
    assert "OK: 6 producers, 6 consumers" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[producers]]\nname='m'\nkind='mokc'\ntoken='t'\n", "did you mean 'mock'"),
        ("[[producers]]\nname='m'\nkind='mock'\ntoken='t'\noptions={rat=1}\n",
         "producers[0].options.rat: unknown option 'rat'; did you mean 'rate'?"),
        ("x = [\n", "invalid TOML"),
    ],
)  # fmt: skip
def test_check_reports_errors_without_traceback(tmp_path: Path, content: str, message: str) -> None:
    topo = tmp_path / "bad.toml"
    topo.write_text(content)
    result = run("check", str(topo))
    assert result.returncode == 1
    assert result.stderr.startswith(f"irqbypass: error: {topo}")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run("run", str(tmp_path / "none.toml"))
    assert result.returncode == 1 and "cannot read the file" in result.stderr


def test_bad_usage_exits_2() -> None:
    result = run("run")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert run("demo", "--duration", "-3").returncode == 2


def test_plugins_json_lists_real_distributions() -> None:
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"irqbypass", "python", "plugins", "kinds", "filtered", "unmatched"}
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert plugins["mock"]["distribution"] == "irqbypass-mock"
    assert plugins["mock"]["module"] == "irqbypass_mock"
    assert plugins["mock"]["kinds"] == {"producer": ["mock"]}
    assert plugins["logging"]["hooks"] == ["irqbypass_register_kinds"]
    assert set(plugins["mock"]) == {
        *("name", "distribution", "version", "module", "kinds", "hooks", "error")
    }
    kinds = {(k["side"], k["name"]): k for k in doc["kinds"]}
    assert kinds["producer", "mock"] == {
        "side": "producer",
        "name": "mock",
        "plugin": "mock",
        "unavailable": None,
    }


def test_block_on_command_line_and_env_allow_list() -> None:
    blocked = json.loads(run("--block", "mock", "plugins", "--json").stdout)
    assert "mock" not in {p["name"] for p in blocked["plugins"]}
    assert {"name": "mock", "reason": "blocked (config [plugins] block or --block)"}.items() <= (
        next(f for f in blocked["filtered"] if f["name"] == "mock").items()
    )
    only = json.loads(
        run("plugins", "--json", env={"IRQBYPASS_LOAD_PLUGINS": "irqbypass-logging"}).stdout
    )
    assert [p["name"] for p in only["plugins"]] == ["logging"]


def test_blocked_kind_in_topology_is_a_clear_error() -> None:
    result = run("--block", "irqbypass-logging", "check", str(ROOT / "examples" / "demo.toml"))
    assert result.returncode == 1
    assert "no plugin provides consumer kind 'logging'" in result.stderr


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_tears_down_cleanly(tmp_path: Path, signum: int, status: int) -> None:
    topo = tmp_path / "t.toml"
    log = tmp_path / "events.jsonl"
    topo.write_text(
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=100.0, count=-1}\n'
        f'[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\noptions={{json_file="{log}"}}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    proc = subprocess.Popen(
        [*EXE, "run", str(topo), "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    header = proc.stdout.readline()  # the plugins header, then the table once applied
    assert header.startswith("irqbypass ") and "plugins: " in header
    assert "applied" in proc.stdout.readline()
    proc.send_signal(signum)  # Ctrl-C, or a service manager stopping us
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    name = signal.Signals(signum).name
    assert f"stopped by {name}; everything was torn down" in err and "Traceback" not in err
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events[0] == "open" and events[-1] == "close"
    assert "del_producer" in events


@pytest.mark.usefixtures("no_fd_leak")
def test_run_in_process_leaves_no_fd_or_thread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from irqbypass import cli

    topo = tmp_path / "t.toml"
    topo.write_text(
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=0.0, count=100}\n'
        f'[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\n'
        f'options={{json_file="{tmp_path / "l.jsonl"}"}}\n'
    )
    for _ in range(3):
        assert cli.main(["run", str(topo), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")["pairs"]
    assert row["delivered"] == 100


def test_closed_pipe_is_not_a_traceback() -> None:
    result = subprocess.run(
        f"{sys.executable} -m irqbypass.cli plugins --json | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout == "{"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.parametrize(
    "words", [["plugins", "--json"], ["--version"], ["--version", "--version"]], ids=" ".join
)
def test_a_reader_gone_before_the_first_line_ends_a_one_shot_command_at_exit_0(
    words: list[str],
) -> None:
    """docs/cli.md: `irqbypass plugins --json | head -c 1` "and the other one-shot
    commands just stop, exit 0", and no error is a traceback. The reader's end is
    closed before the command starts, so every write is EPIPE (`| head -c 1` races
    the writes). Before, `--version --version` (printed while the arguments are
    parsed) ended in a BrokenPipeError traceback and exit 1."""
    result = run_with_reader_gone(*words)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.toml")), ids=str)
def test_every_example_passes_check(example: Path) -> None:
    result = run("check", str(example))
    assert result.returncode == 0, result.stderr
    assert ": OK: " in result.stdout


def test_standard_input_is_read_only_up_to_the_bound_of_a_file() -> None:
    """``irqbypass check -`` fed an endless stream (``yes | irqbypass check -``, a
    wrong pipe): it stops reading past MAX_CONFIG_BYTES and says so, as for a
    file (before: it read until an EOF that never came, memory growing)."""
    from irqbypass._config import MAX_CONFIG_BYTES

    proc = subprocess.Popen(
        [*EXE, "check", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")},
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        line = b"# " + b"y" * 1021 + b"\n"
        with contextlib.suppress(BrokenPipeError):  # it stopped reading: what is wanted
            for _ in range(MAX_CONFIG_BYTES // len(line) + 2):  # past the bound, no EOF
                proc.stdin.write(line)
            proc.stdin.flush()
        status = proc.wait(timeout=120)  # a hang guard: our end of stdin stays open
        err = proc.stderr.read().decode()
        assert status == 1, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        proc.stderr.close()
    assert "<stdin>: more than 16 MiB: not a configuration file" in err, err


def test_a_file_name_that_is_not_utf8_is_shown_not_a_traceback(tmp_path: Path) -> None:
    """A file named in another encoding (``\\xff.toml``, from an old Latin-1
    system) in a UTF-8 locale, where Python's stdout is strict: its name is
    shown escaped (before: UnicodeEncodeError, a traceback, exit 1)."""
    name = os.fsdecode(b"\xff.toml")  # as argv gives it: a lone surrogate
    (tmp_path / name).write_text(
        '[[producers]]\nname = "p"\nkind = "mock"\ntoken = "t"\n'
        '[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\n'
    )
    result = run("check", str(tmp_path / name), env={"PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "\\udcff.toml: OK: 1 producer, 1 consumer, 1 token" in result.stdout


@pytest.mark.parametrize("json_", [False, True], ids=["table", "json"])
def test_check_strict_fails_whatever_became_of_its_reader(json_: bool) -> None:
    """``irqbypass check FILE --strict | grep -q OK`` in CI: a file with warnings
    fails (exit 1, the warnings and the error on stderr) also when the reader of
    stdout has gone before the table (before: exit 0 and not a word)."""
    mistakes = str(ROOT / "docs/examples/topologies/mistakes.toml")
    result = run_with_reader_gone("check", mistakes, "--strict", *["--json"] * json_)
    assert result.returncode == 1, result.stderr
    assert "mistakes.toml: 3 warnings (--strict)" in result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    if not json_:
        assert "token 'vector0' has only a producer" in result.stderr


@pytest.mark.parametrize("command", [["check"], ["run", "--duration", "0.2"]], ids=str)
def test_a_closed_standard_output_is_no_traceback(tmp_path: Path, command: list[str]) -> None:
    """Started with standard output closed (``>&-``: Python's sys.stdout is then
    None), a command writes its results nowhere, as print() does, and does its
    job (before: AttributeError at the first line, a traceback, exit 1)."""
    topo = tmp_path / "t.toml"
    topo.write_text(
        '[[producers]]\nname = "p"\nkind = "mock"\ntoken = "t"\noptions = { count = 3 }\n'
        '[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\n'
    )
    result = subprocess.run(
        [*EXE, command[0], str(topo), *command[1:]],
        stdout=None,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),
        env={k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_standard_input_closed_is_an_error_that_says_so() -> None:
    """``irqbypass check -`` started with standard input closed (``<&-``:
    Python's sys.stdin is then None): an error that says so (before:
    AttributeError, a traceback)."""
    result = subprocess.run(
        [*EXE, "check", "-"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(0),
        env={k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")},
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "<stdin>: standard input is closed; give the topology on it, or name a file" in (
        result.stderr
    )
