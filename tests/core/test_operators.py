"""Regression tests of issue 22 (items 9 to 13): what an operator ran into.
Plugins under test are modules of tests/core loaded with ``-p``
(``faulty_plugin``)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import irqbypass
import pytest
from cli_support import EXE, ROOT, clean_env, pair, run, topology


def test_json_errors_are_a_json_object_on_stdout(tmp_path: Path) -> None:
    bad = topology(tmp_path, "x = [\n", name="bad.toml")
    failing = topology(tmp_path, pair("mock", "open-raises"), name="failing.toml")
    for args, status in (
        (["check", bad, "--json"], 1),
        (["run", bad, "--json"], 1),
        (["run", failing, "--json", "--duration", "5"], 1),
        (["check", str(tmp_path / "missing.toml"), "--json"], 1),
    ):
        result = run("-p", "faulty_plugin", *args)
        assert result.returncode == status, result.stderr
        doc = json.loads(result.stdout)
        assert doc["ok"] is False and doc["exit_status"] == status
        assert (
            doc["error"] and result.stderr.splitlines()[-1] == f"irqbypass: error: {doc['error']}"
        )
    assert "open is broken" in doc["error"] or "missing.toml" in doc["error"]


NEVER_HERE = pair("mock", "never-here").replace(
    'kind="mock"', 'kind="mock"\noptions={count=3, rate=0.0}'
)


def test_check_warns_of_a_non_optional_entry_whose_kind_cannot_work_here(tmp_path: Path) -> None:
    path = topology(tmp_path, NEVER_HERE)
    result = run("-p", "faulty_plugin", "check", path)
    assert result.returncode == 0
    assert (
        "irqbypass: warning: consumers[0]: consumer 'c0' (kind never-here) cannot work here, "
        "so `run` will fail to open it: no such device here" in result.stderr
    )
    assert run("-p", "faulty_plugin", "check", "--strict", path).returncode == 1
    optional = NEVER_HERE.replace('kind="never-here"', 'kind="never-here"\noptional=true')
    quiet = run("-p", "faulty_plugin", "check", topology(tmp_path, optional, name="o.toml"))
    assert "cannot work here" not in quiet.stderr, "an optional entry is skipped, not warned of"


def test_a_note_of_an_interrupted_callback_has_one_prefix(tmp_path: Path) -> None:
    result = run("-p", "faulty_plugin", "run", topology(tmp_path, pair("interrupted-stop", "sink")))
    assert result.returncode == 130, result.stderr
    assert "irqbypass: error: interrupted in producer 'p0'.stop()" in result.stderr
    assert "error: irqbypass:" not in result.stderr
    assert "summary:" in result.stdout


def test_run_help_says_the_duration_s_maximum() -> None:
    result = run("run", "--help", env={"COLUMNS": "80"})
    assert "at most 604800 s, 7 days" in " ".join(result.stdout.split())


def test_run_prints_check_s_warnings_and_strict_exits_as_check_does(tmp_path: Path) -> None:
    text = (
        '[[producers]]\nname="p0"\nkind="mock"\ntoken="t"\noptions={count=3, rate=0.0}\n'
        '[[consumers]]\nname="c0"\nkind="logging"\ntoken="u"\n'
    )
    path = topology(tmp_path, text)
    checked = run("check", path)
    warnings = [ln for ln in checked.stderr.splitlines() if ln.startswith("irqbypass: warning:")]
    assert warnings, checked.stderr
    ran = run("run", path, "--duration", "5")
    assert ran.returncode == 0, ran.stderr
    assert all(w in ran.stderr for w in warnings), ran.stderr
    strict_check, strict_run = run("check", "--strict", path), run("run", "--strict", path)
    assert strict_check.returncode == strict_run.returncode == 1
    assert "applied" not in strict_run.stdout, "nothing was opened"
    assert "(--strict); nothing was opened" in strict_run.stderr
    as_json = run("run", path, "--json", "--duration", "5")
    assert json.loads(as_json.stdout)["warnings"] == [
        w.removeprefix("irqbypass: warning: ") for w in warnings
    ]


# -- 12: Ctrl-C during apply -------------------------------------------------


def interrupt_during_apply(
    tmp_path: Path, stderr: int | None = subprocess.PIPE
) -> subprocess.Popen[str]:
    marker = tmp_path / "opening"
    text = pair("mock", "slow-open").replace(
        'kind="slow-open"', f'kind="slow-open"\noptions={{marker="{marker}"}}'
    )
    proc = subprocess.Popen(
        [*EXE, "-p", "faulty_plugin", "run", topology(tmp_path, text), "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=clean_env(),
    )
    deadline = time.monotonic() + 120  # a hang guard
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "open() never began"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Its output once it ends; one that hangs is killed, not left to a later test."""
    try:
        return proc.communicate(timeout=120)  # a hang guard
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def test_ctrl_c_during_apply_says_torn_down_and_prints_the_summary(tmp_path: Path) -> None:
    proc = interrupt_during_apply(tmp_path)
    out, err = finish(proc)
    assert proc.returncode == 130, err
    assert "summary: nothing ran (no pair was applied)" in out
    assert err.splitlines()[-1] == "irqbypass: error: stopped by SIGINT; everything was torn down"
    assert "Traceback" not in err


def read_all(master: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_ctrl_c_on_a_terminal_starts_its_message_on_a_new_line(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        proc = interrupt_during_apply(tmp_path, stderr=slave)
        os.close(slave)
        slave = -1
        finish(proc)
        err = read_all(master)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert err.startswith("\r\nirqbypass: error: stopped by SIGINT"), repr(err)


# -- 13: a long reason at 80 columns -------------------------------------------


def on_a_terminal(*args: str, columns: int = 80, errors: bool = False, status: int = 0) -> str:
    """What the command shows on a terminal: its standard output, and (``errors``)
    its standard error."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        stderr = slave if errors else subprocess.DEVNULL
        proc = subprocess.Popen(
            [*EXE, *args], stdout=slave, stderr=stderr, env=clean_env(), cwd=ROOT
        )
        os.close(slave)
        slave = -1
        shown = read_all(master)
        assert proc.wait(timeout=300) == status
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return shown.replace("\r\n", "\n")


def test_a_long_skip_reason_wraps_under_its_column_on_an_80_column_terminal() -> None:
    path = "docs/examples/topologies/optional.toml"
    piped = subprocess.run(
        [*EXE, "check", path],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=300,
        check=False,
    ).stdout
    (long_row,) = [ln for ln in piped.splitlines() if "would be skipped" in ln]
    assert len(long_row) > 80, "piped, a row stays one line"
    lines = on_a_terminal("check", path).splitlines()
    assert all(len(ln) <= 79 for ln in lines), [len(ln) for ln in lines]
    start = next(i for i, ln in enumerate(lines) if "would be skipped" in ln)
    column = lines[start].index("would be skipped")
    rest = lines[start + 1 :]
    assert rest and all(ln[:column].strip() == "" for ln in rest), "wrapped under STATE"
    reason = long_row[long_row.index("would be skipped") :]
    assert " ".join(ln.strip() for ln in [lines[start][column:], *rest]) == reason


def test_the_long_version_fits_an_80_column_terminal() -> None:
    """``--version --version`` lists each plugin on a line of its own (the
    vhost-user one was 91 characters, ``irqbypass\n<0.2`` on 80 columns)."""
    lines = on_a_terminal("--version", "--version").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("installed plugins"))
    plugins = lines[start + 1 :]
    assert all(len(ln) <= 79 for ln in plugins), [ln for ln in plugins if len(ln) > 79]
    entries = [ln for ln in plugins if not ln.startswith("    ")]
    assert len(entries) == 8, plugins
    joined = " ".join(ln.strip() for ln in plugins)
    assert "vhost-user (irqbypass-vhost-user " in joined and "needs irqbypass<0.2,>=0.1" in joined


@pytest.mark.parametrize(
    "path", ["docs/examples/topologies/bad.toml", "docs/examples/topologies/missing.toml"]
)
def test_an_error_wraps_at_words_on_an_80_column_terminal(path: str) -> None:
    """The terminal broke a long error anywhere ("No such file or dire" /
    "ctory"); piped, it stays one line."""
    piped = run("check", path)
    (message,) = piped.stderr.splitlines()
    assert len(message) > 80, message
    lines = on_a_terminal("check", path, errors=True, status=1).splitlines()
    assert all(len(ln) <= 79 for ln in lines), [ln for ln in lines if len(ln) > 79]
    assert lines[0].startswith("irqbypass: error: "), lines
    assert len(lines) > 1 and all(ln.startswith("  ") for ln in lines[1:]), lines
    assert " ".join(ln.strip() for ln in lines) == message


def test_a_usage_error_wraps_at_words_on_an_80_column_terminal() -> None:
    """argparse's errors too: an unknown command's list of choices broke
    inside 'plugins'."""
    lines = on_a_terminal("nosuchcmd", errors=True, status=2).splitlines()
    assert all(len(ln) <= 79 for ln in lines), [ln for ln in lines if len(ln) > 79]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("irqbypass: error: "))
    message = " ".join(ln.strip() for ln in lines[start:])
    assert "invalid choice: 'nosuchcmd' (choose from 'plugins', 'check', " in message, lines


SUMMARY_HEADER = (
    *("TOKEN", "PRODUCER", "CONSUMER", "FIRED", "DELIVERED"),
    *("COALESCED", "QUEUED", "LOST", "DETAILS"),
)
SUMMARY_ROW = (
    *("vector-kvm", "vhost-user-blk", "guest-msi", "400", "399", "1", "0", "0"),
    "direct=0 eventfd=400 pending=0 assigned=1 gsi=5 paired=1 stops=1 starts=1",
)


def test_columns_too_wide_for_two_spaces_between_them_get_one() -> None:
    from irqbypass.cli.output import print_table

    narrow, wide = io.StringIO(), io.StringIO()
    print_table(SUMMARY_HEADER, [(SUMMARY_ROW, False)], narrow, width=80)
    print_table(SUMMARY_HEADER, [(SUMMARY_ROW, False)], wide, width=200)
    lines = narrow.getvalue().splitlines()
    assert all(len(ln) <= 79 for ln in lines), lines  # the header's LOST wrapped
    assert lines[0].split() == list(SUMMARY_HEADER[:-1]), lines
    assert lines[0].startswith("  TOKEN      PRODUCER       CONSUMER  FIRED DELIVERED "), lines
    two_apart = "  TOKEN       PRODUCER        CONSUMER   FIRED  "
    assert wide.getvalue().startswith(two_apart), "where they fit, as before"


def test_the_demo_fits_an_80_column_terminal() -> None:
    lines = on_a_terminal("demo").splitlines()
    assert all(len(ln) <= 79 for ln in lines), [ln for ln in lines if len(ln) > 79]
    (header,) = [ln for ln in lines if ln.split()[:1] == ["TOKEN"] and "LOST" in ln]
    assert header.split() == list(SUMMARY_HEADER[:-1]), header


# -- 11: every error of a file, in file order, with its line --------------------

ERRORS = """\
[[producers]]
name = "m"
kind = "mock"
token = "t"
options = { rate = 0.0, coutn = 3 }

[[consumers]]
name = "l"
kind = "logging"
token = "t"
options = { levle = "INFO" }
"""


def test_check_reports_every_option_error_in_file_order(tmp_path: Path) -> None:
    result = run("check", topology(tmp_path, ERRORS))
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 2, errors
    assert errors[0].endswith(
        "t.toml:5: producers[0].options.coutn: unknown option 'coutn'; did you mean 'count'?"
    )
    assert errors[1].endswith(
        "t.toml:11: consumers[0].options.levle: unknown option 'levle'; did you mean 'level'?"
    )
    as_json = json.loads(run("check", topology(tmp_path, ERRORS), "--json").stdout)
    assert as_json["errors"] == [e.removeprefix("irqbypass: error: ") for e in errors]
    assert as_json["error"] == as_json["errors"][0]


def test_every_error_of_the_file_itself_is_reported_in_order() -> None:
    text = ERRORS.replace(
        'token = "t"\noptions = { levle', 'tokn = "t"\nbypass = 1\noptions = { levle'
    )
    text += '[[producers]]\nname = "m"\nkind = "mock"\ntoken = "u"\n'
    with pytest.raises(irqbypass.ConfigError) as info:
        irqbypass.parse_config(text, file="f.toml")
    shown = [str(e) for e in info.value.errors]
    assert shown == [
        "f.toml:10: consumers[0].tokn: unknown key 'tokn'; did you mean 'token'? "
        "(valid keys: name, kind, token, irq, bypass, optional, options)",
        "f.toml:14: producers[1].name: duplicate name 'm': producers[0] already uses it; "
        "names must be unique",
    ], shown
    assert str(info.value) == "\n".join(shown)
