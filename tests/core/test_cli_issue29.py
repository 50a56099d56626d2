"""Regression tests of issue 29's operator items (8-11, 13, 14, 16, 17): what an
operator ran into with their own topologies, in a terminal and under systemd.
The CLI runs as a user runs it (a subprocess) unless a test needs to count the
run's own ticks."""

from __future__ import annotations

import configparser
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_support import EXE, ROOT, clean_env, pair, run, topology
from irqbypass import cli
from irqbypass.cli import live as live_command

HANG_GUARD = 120.0

FINITE = pair("mock", "logging").replace('kind="mock"', 'kind="mock"\noptions={count=3, rate=0.0}')
ENDLESS = pair("mock", "logging").replace(
    'kind="mock"', 'kind="mock"\noptions={count=-1, rate=50.0}'
)


def wait_for(what: str, condition: Any) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, f"hang guard: {what} never happened"
        time.sleep(0.02)


# -- 9: the example unit reloads synchronously and names docs that exist ------


def test_the_example_unit_reloads_with_the_synchronous_command() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "examples" / "irqbypass.service")
    service = unit["Service"]
    start, reload = shlex.split(service["ExecStart"]), shlex.split(service["ExecReload"])
    assert "kill" not in service["ExecReload"], "kill -HUP reports success on a broken file"
    assert Path(reload[0]).name == "irqbypass" and reload[1] == "reload"
    assert reload[2] == start[start.index("--control") + 1], "the run's own socket"
    assert service["Type"] in ("notify", "notify-reload")
    for doc in unit["Unit"]["Documentation"].split():
        assert doc.startswith(("https://", "man:")), f"{doc}: nothing installs a file:// page"


def test_the_example_unit_verifies_with_systemd(tmp_path: Path) -> None:
    import shutil
    import sys

    analyze = shutil.which("systemd-analyze")
    exe = Path(sys.executable).parent / "irqbypass"
    if analyze is None or not exe.exists():
        pytest.skip("no systemd-analyze, or no installed irqbypass command beside python")
    text = (ROOT / "examples" / "irqbypass.service").read_text()
    unit = tmp_path / "irqbypass.service"
    unit.write_text(text.replace("/usr/local/bin/irqbypass", str(exe)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# -- 10: a failed reload shows in systemd's STATUS= --------------------------


def test_a_failed_reload_shows_in_systemd_s_status(tmp_path: Path) -> None:
    path = topology(tmp_path, ENDLESS)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(HANG_GUARD)
        proc = subprocess.Popen(
            [*EXE, "run", path],
            env=clean_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert notify.recv(4096).decode().startswith("READY=1\nSTATUS=1 token, 1 paired")
            Path(path).write_text(ENDLESS + "x = [\n")
            proc.send_signal(signal.SIGHUP)
            assert notify.recv(4096).decode().startswith("RELOADING=1")
            failed = notify.recv(4096).decode()
            ready, status = failed.split("\n")
            assert ready == "READY=1"
            assert status.startswith("STATUS=1 token, 1 paired; 0 reloads, 1 failed; ")
            assert "reload of " in status and "failed; the running topology is unchanged" in status
            assert "invalid TOML" in status, status
            Path(path).write_text(ENDLESS)  # fixed: the next reload clears it
            proc.send_signal(signal.SIGHUP)
            assert notify.recv(4096).decode().startswith("RELOADING=1")
            fixed = notify.recv(4096).decode()
            assert fixed == "READY=1\nSTATUS=1 token, 1 paired; 1 reload, 1 failed", fixed
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 128 + signal.SIGTERM


def test_a_failed_reload_of_a_file_named_in_another_encoding_still_notifies(
    tmp_path: Path,
) -> None:
    """The STATUS= line after a failed reload names the file; a name that is not
    UTF-8 (a lone surrogate from argv) is sent escaped, and the run goes on
    (before: UnicodeEncodeError out of notify, which only expected an OSError,
    ended the run at the reload)."""
    import os

    path = tmp_path / os.fsdecode(b"\xff.toml")
    path.write_text(ENDLESS)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(HANG_GUARD)
        proc = subprocess.Popen(
            [*EXE, "run", str(path)],
            env=clean_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert notify.recv(4096).decode().startswith("READY=1")
            path.write_text(ENDLESS + "x = [\n")
            proc.send_signal(signal.SIGHUP)
            assert notify.recv(4096).decode().startswith("RELOADING=1")
            ready, status = notify.recv(4096).decode().split("\n")
            assert ready == "READY=1" and "\\udcff.toml" in status, status
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=HANG_GUARD)
    assert proc.returncode == 128 + signal.SIGTERM


def test_a_status_line_is_one_line_whatever_the_error_says() -> None:
    from irqbypass._notify import STATUS_CHARS, status

    line = status("2 errors:\na.toml:1: one\na.toml:2: READY=1 " + "x" * 1000)
    assert "\n" not in line and line.startswith("STATUS=2 errors: a.toml:1: one a.toml:2: ")
    assert len(line) == len("STATUS=") + STATUS_CHARS and line.endswith("...")


# -- 11: service mode stays up once its producers have finished -------------


def test_a_run_with_a_control_socket_stays_up_after_its_producers_finish(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_env: None,
) -> None:
    """A finite topology under --control and no duration: its producers finish at
    once, and the run serves on (a reload may bring producers) until stopped.
    The run's own ticks are counted once everything is delivered: many more than
    the settle time later, it still waits, and a Ctrl-C ends it."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    idle = live_command.Live.idle
    ticks_after = []

    def counting_idle(self: live_command.Live, seconds: float) -> None:
        idle(self, seconds)
        rows = self.topology.status()
        if self.topology.finished and all(r.delivered == r.fired == 3 for r in rows):
            ticks_after.append(seconds)
            if sum(ticks_after) > 10 * cli.run.SETTLE_SECONDS:
                raise KeyboardInterrupt

    monkeypatch.setattr(live_command.Live, "idle", counting_idle)
    path = topology(tmp_path, FINITE)
    status = cli.main(["run", path, "--control", str(tmp_path / "c.sock")])
    assert status == 130, "ended by the Ctrl-C, not by its producers finishing"
    assert sum(ticks_after) > 10 * cli.run.SETTLE_SECONDS
    assert "stopped by SIGINT; everything was torn down" in capsys.readouterr().err


# -- 13: Ctrl-C while the CLI's modules are imported -----------------------


def test_ctrl_c_while_the_cli_imports_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """A Ctrl-C in the first half second lands in an import: a module the
    command imports (here the TOML reader, shadowed: tomli under Python 3.10)
    gets SIGINT as it loads."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    reader = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    (shadow / f"{reader}.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    path = topology(tmp_path, FINITE)
    result = run("check", path, env={"PYTHONPATH": str(shadow)})
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 130
    assert result.stderr == "irqbypass: error: stopped by SIGINT\n"


# -- 14: run --json and demo --json say ok ---------------------------------


def test_run_and_demo_json_have_ok_and_the_exit_status(tmp_path: Path) -> None:
    done = run("run", topology(tmp_path, FINITE), "--json", "--duration", "30")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and doc["exit_status"] == 0
    assert doc["error"] is None and doc["errors"] == []
    demo = run("demo", "--json", "--duration", "0.5")
    assert json.loads(demo.stdout)["ok"] is (demo.returncode == 0), demo.stderr
    failing = topology(tmp_path, pair("mock", "close-raises"), name="f.toml")
    torn = run("-p", "faulty_plugin", "run", failing, "--json", "--duration", "30")
    assert torn.returncode == 1, torn.stderr
    doc = json.loads(torn.stdout)  # the summary, with the teardown's error
    assert doc["ok"] is False and doc["exit_status"] == 1 and doc["pairs"]
    assert doc["errors"] == [doc["error"]] and "close" in doc["error"]
    assert torn.stderr.splitlines()[-1] == f"irqbypass: error: {doc['error']}"


def test_an_interrupted_run_s_json_is_not_ok(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    proc = subprocess.Popen(
        [*EXE, "run", topology(tmp_path, ENDLESS), "--json", "--control", str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    # the run answers once it waits (the socket file appears before it listens)
    wait_for("a status", lambda: run("status", str(sock)).returncode == 0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 143, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_status"] == 143 and doc["interrupted"] is True
    assert doc["error"] == "stopped by SIGTERM; everything was torn down"


# -- 17: a veto that fails the topology says what really happens ------------


def test_a_veto_without_unpaired_says_the_topology_was_undone(tmp_path: Path) -> None:
    text = '[plugins.audit_plugin]\ndeny = ["c0"]\n\n' + FINITE
    result = run("-p", "audit_plugin", "run", topology(tmp_path, text), "--duration", "30")
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert "plugin 'audit_plugin' raised Veto: c0 is on the deny list" in error
    assert "stays registered" not in error, "the CLI tore everything down"
    assert error.endswith("; nothing was applied: every endpoint opened was closed again")


# -- 8: a message during a run starts on a line of its own ------------------


def rendered(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: ``\\r`` goes back to the start of the
    line, ``ESC[K`` erases to its end, ``\\n`` starts the next line."""
    lines, line, col = [], "", 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            line, i = line[:col], i + 3
            continue
        char = raw[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append(line)
            line, col = "", 0
        else:
            line = line[:col] + char + line[col + 1 :]
            col += 1
        i += 1
    return [*lines, line]


class OnATerminal:
    """``irqbypass run`` with standard output and error on one pseudo-terminal,
    what it wrote read as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        import fcntl
        import os
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
        self.proc = subprocess.Popen(
            [*EXE, *args], stdout=slave, stderr=slave, env=clean_env(), cwd=cwd
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.raw = b""

    def read(self) -> str:
        import os

        try:
            while chunk := os.read(self.master, 65536):
                self.raw += chunk
        except (BlockingIOError, OSError):  # nothing more now, or EIO: the child ended
            pass
        return self.raw.decode(errors="replace")

    def wait_for(self, text: str) -> None:
        wait_for(f"{text!r} on the terminal", lambda: text in self.read())

    def finish(self) -> list[str]:
        import os

        try:
            self.proc.wait(timeout=HANG_GUARD)
            self.read()
        finally:
            os.close(self.master)
        return rendered(self.raw.decode(errors="replace").replace("\r\n", "\n"))


def test_messages_during_a_run_start_on_a_line_of_their_own(tmp_path: Path) -> None:
    text = "".join(
        pair("mock", "logging", token=f"t{n}", n=n).replace(
            'kind="mock"', 'kind="mock"\noptions={count=-1, rate=50.0}'
        )
        for n in range(3)
    )
    (tmp_path / "t.toml").write_text(text)
    term = OnATerminal("run", "t.toml", cwd=tmp_path)
    try:
        term.wait_for("delivered/fired")  # the progress line is drawn
        (tmp_path / "t.toml").write_text(text.replace('name="p2"', 'name="p2b"'))
        term.proc.send_signal(signal.SIGHUP)
        term.wait_for("irqbypass: reloaded")
        term.wait_for("delivered/fired: t0")  # drawn again after it
        (tmp_path / "t.toml").write_text(text + "x = [\n")
        term.proc.send_signal(signal.SIGHUP)
        term.wait_for("reload of t.toml failed")
        term.proc.send_signal(signal.SIGUSR1)
        term.wait_for("t.toml: running")
    finally:
        term.proc.send_signal(signal.SIGTERM)
        lines = term.finish()
    assert term.proc.returncode == 128 + signal.SIGTERM
    said = {
        "irqbypass: reloaded t.toml: added 'p2b'; removed 'p2'": "reloaded",
        "irqbypass: error: reload of t.toml failed": "failed reload",
        "t.toml: running": "SIGUSR1's header",
    }
    for start, what in said.items():
        shown = [ln for ln in lines if start in ln]
        assert shown, f"{what}: {lines!r}"
        assert all(ln.startswith(start) for ln in shown), f"{what} glued to a line: {shown!r}"
    assert not any("delivered/fired" in ln and "irqbypass:" in ln for ln in lines), lines


def test_log_lines_of_the_event_loop_start_on_a_line_of_their_own(tmp_path: Path) -> None:
    text = pair("mock", "logging").replace(
        'kind="mock"', 'kind="mock"\noptions={count=40, rate=20.0}'
    )
    (tmp_path / "t.toml").write_text(text)
    term = OnATerminal("-v", "run", "t.toml", "--duration", "60", cwd=tmp_path)
    lines = term.finish()
    assert term.proc.returncode == 0, lines
    logged = [ln for ln in lines if "irqbypass.logging.c0: c0 interrupt" in ln]
    assert len(logged) >= 2, lines  # some while the progress line was shown
    assert all(ln.startswith("irqbypass.logging.c0: ") for ln in logged), logged


# -- 16: a summary that scales, and --quiet ----------------------------------


def many(n: int, lonely: bool = True) -> str:
    text = "".join(
        pair("mock", "logging", token=f"t{i}", n=i).replace(
            'kind="mock"', 'kind="mock"\noptions={count=2, rate=0.0}'
        )
        for i in range(n)
    )
    if lonely:  # a token with only a producer: a problem, listed whatever the size
        text += '[[producers]]\nname="lonely"\nkind="mock"\ntoken="alone"\n'
        text += "options={count=2, rate=0.0}\n"
    return text


def table_rows(out: str, after: str) -> list[str]:
    """The token column of the table that follows the line starting ``after``."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(after)) + 1
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("  ") or ln.startswith("  ("):
            break
        rows.append(ln.split()[0])
    return [r for r in rows if r != "TOKEN"]


def test_200_pairs_on_80_columns_print_their_totals_and_the_pairs_with_a_problem(
    tmp_path: Path,
) -> None:
    (tmp_path / "t.toml").write_text(many(200))
    term = OnATerminal("run", "t.toml", "--duration", "60", cwd=tmp_path)
    lines = term.finish()
    assert term.proc.returncode == 0, lines
    shown = [ln for ln in lines if ln.strip() and "delivered/fired" not in ln]
    assert len(shown) < 20, shown  # was 200 + 400 lines
    assert "t.toml: applied 201 tokens: 200 paired, 1 unpaired, 0 skipped" in lines
    assert "summary: 201 pairs: fired 402, delivered 400, coalesced -, queued 2, lost 0" in lines
    assert lines.count("  (200 pairs without a problem not listed: --all lists them)") == 2
    assert sum(ln.startswith("  alone ") for ln in lines) == 2, "the lonely token, in both tables"


def test_all_lists_every_pair_and_quiet_only_the_problems(tmp_path: Path) -> None:
    big = topology(tmp_path, many(25), name="big.toml")
    out = run("run", big, "--duration", "60").stdout
    assert table_rows(out, "summary:") == ["alone"]
    every = run("run", big, "--duration", "60", "--all").stdout
    assert len(table_rows(every, "summary:")) == 26
    assert len(table_rows(every, f"{big}: applied")) == 26
    assert len(table_rows(run("run", big, "--duration", "60", "-v").stdout, "summary:")) == 26
    small = topology(tmp_path, many(3, lonely=False), name="small.toml")
    assert len(table_rows(run("run", small, "--duration", "60").stdout, "summary:")) == 3
    quiet = run("run", small, "--duration", "60", "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == [
        f"{small}: applied 3 tokens: 3 paired, 0 unpaired, 0 skipped",
        "  (3 pairs without a problem not listed: --all lists them)",
        "summary: 3 pairs: fired 6, delivered 6, coalesced -, queued 0, lost 0",
        "  (3 pairs without a problem not listed: --all lists them)",
    ], "no header, no row without a problem"
    checked = run("check", big, "-q").stdout
    assert table_rows(checked, f"{big}: OK") == ["alone"]
    assert len(table_rows(run("check", big, "--all").stdout, f"{big}: OK")) == 26
    both = run("run", small, "-q", "--all")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


# -- the rule of issue 22 on the command line: every wrong argument at once ------


def test_every_wrong_argument_is_reported_in_one_go_in_order(tmp_path: Path) -> None:
    path = topology(tmp_path, FINITE)
    args = ("run", path, "--duration", "0", "--metrics-port", "99999", "--bogus", "-q", "--all")
    result = run(*args)
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ": error: " in ln]
    assert errors == [
        "irqbypass run: error: argument --duration: the duration must be more than 0 and "
        "at most 604800 seconds",
        "irqbypass run: error: argument --metrics-port: 99999 is not a port number (0 to 65535)",
        "irqbypass run: error: unrecognized arguments: --bogus",
        "irqbypass run: error: argument --all: not allowed with argument -q/--quiet",
    ], result.stderr
    assert result.stderr.startswith("usage: irqbypass run "), "the usage, once"
    missing = run("run", "--duration", "x")
    assert missing.returncode == 2
    assert [ln for ln in missing.stderr.splitlines() if ": error: " in ln] == [
        "irqbypass run: error: argument --duration: 'x' is not a number of seconds",
        "irqbypass run: error: the following arguments are required: file",
    ], missing.stderr


def test_files_after_the_one_a_command_takes_say_to_run_it_once_for_each(
    tmp_path: Path,
) -> None:
    """``irqbypass check examples/*.toml``, the shell's glob: argparse said
    only that the second file was unrecognized."""
    first, second = (topology(tmp_path, FINITE, name=f"{n}.toml") for n in "ab")
    result = run("check", first, second)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"irqbypass check: error: unrecognized arguments: {second} "
        "(`irqbypass check` takes one file: run it once for each)"
    ), result.stderr
    option = run("check", first, "--bogus")
    assert option.stderr.splitlines()[-1].endswith("unrecognized arguments: --bogus"), "as before"
    no_positional = run("plugins", "extra")
    assert no_positional.stderr.splitlines()[-1].endswith("unrecognized arguments: extra")


def test_status_of_a_large_run_scales_as_its_tables_do(tmp_path: Path) -> None:
    text = many(25, lonely=False).replace("count=2, rate=0.0", "count=-1, rate=20.0")
    sock = tmp_path / "c.sock"
    proc = subprocess.Popen(
        [*EXE, "run", topology(tmp_path, text), "--control", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        wait_for("the control socket", sock.exists)
        wait_for("a status", lambda: run("status", str(sock)).returncode == 0)
        status = run("status", str(sock)).stdout.splitlines()
        every = run("status", str(sock), "--all").stdout.splitlines()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=HANG_GUARD)
    assert status[1].startswith("summary: 25 pairs: fired "), status
    assert status[2:] == ["  (25 pairs without a problem not listed: --all lists them)"]
    assert len([ln for ln in every if ln.startswith("  t")]) == 25, every


def test_sigusr1_lists_every_pair_of_a_run_started_with_all(tmp_path: Path) -> None:
    text = many(25, lonely=False).replace("count=2, rate=0.0", "count=-1, rate=20.0")
    path = topology(tmp_path, text)
    shown = {}
    for flag, done in (("--all", "  t24 "), ("-q", "not listed")):
        sock, err = tmp_path / f"{flag}.sock", tmp_path / f"{flag}.err"
        with err.open("w") as stderr:
            proc = subprocess.Popen(
                [*EXE, "run", path, flag, "--control", str(sock)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=clean_env(),
            )
        try:
            wait_for("the control socket (the handlers are in place)", sock.exists)
            proc.send_signal(signal.SIGUSR1)
            wait_for("SIGUSR1's status", lambda: done in err.read_text())  # noqa: B023
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=HANG_GUARD)
        shown[flag] = [ln for ln in err.read_text().splitlines() if ln.startswith("  t")]
    assert len(shown["--all"]) == 25 and shown["-q"] == [], shown


def test_the_progress_line_counts_no_merged_signal_as_lost_before_it_settles() -> None:
    """The demo's progress line ended 'lost 3' over a summary of 'coalesced 3,
    lost 0': an unsettled reading of a merging consumer is not a loss yet."""
    from types import SimpleNamespace

    from irqbypass.cli.summary import progress_line

    def row(token: str, lost: int, coalesces: bool, settled: bool = False) -> Any:
        fields = dict(fired=10, delivered=10 - lost, lost=lost, coalesces=coalesces)
        return SimpleNamespace(token=token, settled=settled, **fields)

    merging, plain = row("kvm", 3, coalesces=True), row("log", 2, coalesces=False)
    assert " lost 2," in progress_line([merging, plain], 1.0, 2, 2)
    settled = row("kvm", 3, coalesces=True, settled=True)
    assert " lost 5," in progress_line([settled, plain], 1.0, 2, 2)


def test_a_plugin_table_s_error_comes_with_the_file_s_other_errors(tmp_path: Path) -> None:
    text = (
        '[plugins.audit_plugin]\ndney = ["c0"]\n\n'
        '[[producers]]\nname = "p0"\nkind = "mock"\ntoken = "t"\noptions = { coutn = 3 }\n\n'
        '[[consumers]]\nname = "c0"\nkind = "logging"\ntoken = "t"\noptions = { levle = "INFO" }\n'
    )
    path = topology(tmp_path, text)
    for command in ("check", "run"):
        result = run("-p", "audit_plugin", command, path)
        assert result.returncode == 1, result.stderr
        errors = [
            ln.removeprefix(f"irqbypass: error: {tmp_path}/") for ln in result.stderr.splitlines()
        ]
        assert errors == [
            "t.toml:2: plugins.audit_plugin.dney: unknown option 'dney'; did you mean 'deny'?",
            "t.toml:8: producers[0].options.coutn: unknown option 'coutn'; did you mean 'count'?",
            "t.toml:14: consumers[0].options.levle: unknown option 'levle'; did you mean 'level'?",
        ], result.stderr
        assert "applied" not in result.stdout


def test_a_signal_landing_in_a_finalizer_waits_instead_of_being_lost(
    guarded_sigint: None,
) -> None:
    """A finalizer (a Manager's gives its guard lease back in one) runs where
    the garbage collector happens to run, and what it raises is dropped: a
    Ctrl-C landing in one was lost, and a run it interrupted exited 0."""
    import gc
    import os
    import weakref

    import irqbypass.signalsafe

    class Owner:
        pass

    owner = Owner()
    weakref.finalize(owner, os.kill, os.getpid(), signal.SIGINT)
    del owner
    gc.collect()  # the finalizer has run: the signal landed in it
    with pytest.raises(KeyboardInterrupt):
        irqbypass.signalsafe.deliver_deferred_signals()
