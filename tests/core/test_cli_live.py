"""A long ``irqbypass run`` (issue 18): until a signal, SIGHUP reloads, SIGUSR1
prints its status, ``--control`` answers ``status`` and ``reload``.

Each test runs the CLI as a user does (a subprocess) and waits for conditions
(a line in its output, a socket), never for a time. The session of
``test_the_cli_page_shows_a_real_session`` is the one docs/cli.md shows; its
blocks (``<!-- live: NAME -->``) are compared with every number masked. To
rewrite them from a fresh run::

    IRQBYPASS_UPDATE_DOCS=1 .venv/bin/pytest tests/core/test_cli_live.py
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from irqbypass import _control as control

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "docs" / "cli.md"
HANG_GUARD = 120.0
BLOCK = re.compile(r"<!-- live: (?P<name>[\w-]+) -->\n```text\n(?P<body>.*?)```", re.S)

PAIR = """\
[[producers]]
name = "{p}"
kind = "mock"
token = "{t}"
options = {{ rate = {rate}, count = -1 }}
[[consumers]]
name = "{c}"
kind = "logging"
token = "{t}"
"""


def pair(n: int, rate: float = 100.0) -> str:
    return PAIR.format(p=f"dev{n}", c=f"sink{n}", t=f"vec{n}", rate=rate)


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, f"hang guard: {what} never happened"
        time.sleep(0.02)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("IRQBYPASS_", "NOTIFY_"))}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "irqbypass", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )


class Run:
    """``irqbypass run live.toml --control live.sock`` in ``tmp``, its output in files."""

    def __init__(
        self,
        tmp: Path,
        *extra: str,
        environ: dict[str, str] | None = None,
        stderr: int | None = None,
        stdout: int | None = None,
    ) -> None:
        """``stderr``, ``stdout``: an fd to write it to instead of ``run.err``, ``run.out``."""
        self.tmp = tmp
        self.out, self.err = tmp / "run.out", tmp / "run.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "irqbypass", "run", "live.toml", *extra],
                cwd=tmp,
                env={**env(), **(environ or {})},
                stdout=out if stdout is None else stdout,
                stderr=err if stderr is None else stderr,
                text=True,
            )

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_stderr(self, text: str, count: int = 1) -> None:
        wait_for(f"{text!r} on the run's stderr", lambda: self.stderr().count(text) >= count)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=HANG_GUARD)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "live.toml").write_text(pair(0))
    return tmp_path


@pytest.fixture
def run(tmp: Path) -> Iterator[Run]:
    started = Run(tmp, "--control", "live.sock", "--metrics-textfile", "live.prom")
    wait_for("the control socket", lambda: (tmp / "live.sock").exists())
    yield started
    started.stop()


def mask(text: str) -> str:
    return re.sub(r"[ \t]+", " ", re.sub(r"\d+(\.\d+)?", "N", text)).strip()


def test_the_cli_page_shows_a_real_session(tmp: Path, run: Run) -> None:
    shown: dict[str, str] = {}
    status = cli("status", "live.sock", cwd=tmp)
    assert status.returncode == 0, status.stderr
    shown["status"] = "$ irqbypass status live.sock\n" + status.stdout
    # edit the file: a second pair, and the first one's rate changed; then SIGHUP
    (tmp / "live.toml").write_text(pair(0, rate=200.0) + pair(1))
    run.signal(signal.SIGHUP)
    run.wait_stderr("reloaded live.toml")
    run.signal(signal.SIGUSR1)
    run.wait_stderr("2 tokens, 2 paired")
    prom = tmp / "live.prom"
    wait_for("the metrics of both pairs", lambda: 'token="vec1"' in prom.read_text())
    shown["metrics"] = "$ cat live.prom\n" + prom.read_text()
    # a broken edit changes nothing, and the run goes on
    (tmp / "live.toml").write_text(pair(0, rate=200.0) + pair(1).replace('"logging"', '"loging"'))
    reload = cli("reload", "live.sock", cwd=tmp)
    assert reload.returncode == 1
    shown["reload"] = "$ irqbypass reload live.sock\n" + reload.stdout + reload.stderr
    run.wait_stderr("reload of live.toml failed; the running topology is unchanged")
    after = json.loads(cli("status", "live.sock", "--json", cwd=tmp).stdout)
    assert [p["token"] for p in after["pairs"]] == ["vec0", "vec1"]
    assert after["reloads"] == 1 and after["failed_reloads"] == 1
    assert run.stop() == 128 + signal.SIGTERM
    shown["run"] = (
        "$ irqbypass run live.toml --control live.sock --metrics-textfile live.prom\n"
        + run.out.read_text()
        + run.stderr()
    )
    page = CLI.read_text()
    blocks = {m["name"]: m for m in BLOCK.finditer(page)}
    assert set(blocks) >= set(shown), "docs/cli.md lost a live: block"
    if os.environ.get("IRQBYPASS_UPDATE_DOCS"):
        for name in sorted(shown, key=lambda n: -blocks[n].start()):
            block = blocks[name]
            start, end = block.start("body"), block.end("body")
            page = page[:start] + shown[name] + page[end:]
        CLI.write_text(page)
        return
    for name, real in shown.items():
        assert mask(blocks[name]["body"]) == mask(real), (
            f"docs/cli.md block {name}: rewrite with IRQBYPASS_UPDATE_DOCS=1; real:\n{real}"
        )


def test_sighup_reloads_and_the_changed_pair_counts_on(tmp: Path, run: Run) -> None:
    (tmp / "live.toml").write_text(pair(0, rate=300.0))
    run.signal(signal.SIGHUP)
    run.wait_stderr("reloaded live.toml: changed 'dev0' (options)")
    doc = control.request(str(tmp / "live.sock"), "status")
    (row,) = doc["pairs"]
    assert row["paired"] and doc["reloads"] == 1
    wait_for("interrupts on the new dev0", lambda: _fired(tmp) > row["fired"])


def _fired(tmp: Path) -> int:
    doc = control.request(str(tmp / "live.sock"), "status")
    return int(doc["pairs"][0]["fired"])


@pytest.mark.parametrize(
    "broken, said",
    [
        ("[[producers]\n", "live.toml:10: invalid TOML"),
        (pair(1).replace('"logging"', '"loging"'), "consumers[1].kind: no plugin provides"),
        (pair(1).replace('token = "vec1"', 'token = "vec0"'), "token 'vec0' is already used by"),
        (
            pair(1).replace(
                'kind = "logging"\n',
                'kind = "logging"\noptions = { json_file = "/no/such/dir/x" }\n',
            ),
            "open of consumer 'sink1' (kind logging) failed",
        ),
    ],
    ids=["does-not-parse", "unknown-kind", "reuses-a-token", "fails-to-open"],
)
def test_a_broken_reload_changes_nothing_and_the_run_goes_on(
    tmp: Path, run: Run, broken: str, said: str
) -> None:
    before = control.request(str(tmp / "live.sock"), "status")
    (tmp / "live.toml").write_text(pair(0) + broken)
    doc = control.request(str(tmp / "live.sock"), "reload")
    assert doc["ok"] is False and doc["unchanged"] is True
    assert said in doc["error"], doc["error"]
    assert "reload of live.toml failed; the running topology is unchanged" in doc["error"]
    run.wait_stderr(said)
    after = control.request(str(tmp / "live.sock"), "status")
    assert [p["token"] for p in after["pairs"]] == [p["token"] for p in before["pairs"]]
    assert after["failed_reloads"] == 1 and run.proc.poll() is None
    (tmp / "live.toml").write_text(pair(0) + pair(1))  # fixed: the next reload works
    assert control.request(str(tmp / "live.sock"), "reload")["added"] == ["dev1", "sink1"]


@pytest.mark.parametrize("via", ["control", "sighup"])
def test_a_reload_short_of_fds_fails_and_the_run_goes_on(tmp: Path, run: Run, via: str) -> None:
    """A reload that runs out of file descriptors (an OSError from the kernel,
    not an IrqBypassError) is a failed reload like any other: rolled back, said,
    counted, and the run goes on (before: SIGHUP ended the run with exit 1, and
    the control socket closed the connection with no answer and said nothing)."""
    used = len(os.listdir(f"/proc/{run.proc.pid}/fd"))
    _soft, hard = resource.prlimit(run.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(run.proc.pid, resource.RLIMIT_NOFILE, (used + 10, hard))
    (tmp / "live.toml").write_text("".join(pair(n) for n in range(40)))  # 39 more eventfds
    said = "reload of live.toml failed; the running topology is unchanged: out of file descriptors"
    if via == "control":
        doc = control.request(str(tmp / "live.sock"), "reload")
        assert doc["ok"] is False and doc["unchanged"] is True
        assert said in doc["error"], doc["error"]
    else:
        run.signal(signal.SIGHUP)
    wait_for("the reload's end", lambda: said in run.stderr() or run.proc.poll() is not None)
    assert said in run.stderr(), run.stderr()
    after = control.request(str(tmp / "live.sock"), "status")
    assert [p["token"] for p in after["pairs"]] == ["vec0"]
    assert after["failed_reloads"] == 1 and run.proc.poll() is None
    assert run.stop() == 128 + signal.SIGTERM


def test_sigusr1_prints_a_status_and_the_run_goes_on(tmp: Path) -> None:
    started = Run(tmp)  # no --duration, no [run]: until a signal
    wait_for("the run to start", lambda: "applied" in started.out.read_text())
    started.signal(signal.SIGUSR1)
    started.wait_stderr("live.toml: running")
    started.signal(signal.SIGUSR1)
    started.wait_stderr("live.toml: running", count=2)
    assert started.proc.poll() is None
    assert started.stop() == 128 + signal.SIGTERM
    assert "summary:" in started.out.read_text()


@contextlib.contextmanager
def _unread_stderr(tmp: Path, *options: str, full: bool) -> Iterator[tuple[Run, int]]:
    """``irqbypass run live.toml --control live.sock [options]`` whose stderr is
    a pipe nobody reads (``full``: full before it starts); the run and the
    pipe's writer, kept open here to see it full. The run is killed if a test
    leaves it running."""
    with _unread_pipe(full) as writer:
        started = Run(tmp, "--control", "live.sock", *options, stderr=writer)
        with _killed_at_end(started):
            wait_for("the control socket", lambda: (tmp / "live.sock").exists())
            yield started, writer


@contextlib.contextmanager
def _unread_pipe(full: bool) -> Iterator[int]:
    """The writer of a pipe nobody reads (``full``: full already)."""
    reader, writer = os.pipe()
    if full:
        os.set_blocking(writer, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(writer, b"x" * 4096)
        os.set_blocking(writer, True)
    try:
        yield writer
    finally:
        os.close(reader)
        os.close(writer)


@contextlib.contextmanager
def _killed_at_end(started: Run) -> Iterator[None]:
    """The run is killed if the block leaves it running."""
    try:
        yield
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.wait()


def test_a_stderr_nobody_reads_stalls_no_interrupt_and_a_ctrl_c_still_exits(tmp: Path) -> None:
    """-v logs every interrupt on stderr from the event loop's thread; with
    stderr a pipe nobody reads, the loop drops its lines instead of waiting (the
    interrupts go on being delivered), and after Ctrl-C the run tears down and
    exits although its last lines cannot be written (both hung before)."""
    (tmp / "live.toml").write_text(pair(0, rate=1000.0))
    with _unread_stderr(tmp, "-v", full=False) as (started, writer):
        wait_for("stderr to fill", lambda: not select.select([], [writer], [], 0)[1])
        first = _delivered(tmp)
        wait_for("more interrupts delivered", lambda: _delivered(tmp) > first + 100)
        started.signal(signal.SIGINT)
        assert started.proc.wait(timeout=HANG_GUARD) == 128 + signal.SIGINT
    assert "summary:" in started.out.read_text()


def test_a_stalled_stderr_keeps_no_status_request_waiting(tmp: Path) -> None:
    """SIGUSR1 prints the status on stderr from the run's main loop; with stderr
    a full pipe nobody reads, the print gives up after a while and the loop goes
    on serving the control socket (before, it waited for the reader forever)."""
    with _unread_stderr(tmp, full=True) as (started, _writer):
        started.signal(signal.SIGUSR1)
        for _ in range(3):  # the first may be served before the print begins
            _delivered(tmp)
        assert started.stop() == 128 + signal.SIGTERM
    assert "summary:" in started.out.read_text()


@contextlib.contextmanager
def _closed_reader() -> Iterator[int]:
    """The writing end of a pipe whose reader has gone (``| head`` that exited)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        yield writer
    finally:
        os.close(writer)


def test_a_stdout_whose_reader_went_away_does_not_end_the_run(tmp: Path) -> None:
    """``irqbypass run FILE --control S | head -1``: once the reader is gone the
    run's lines on stdout are dropped (and told on stderr), the run goes on
    serving, and a SIGTERM still ends it with 143 and its line on stderr (before:
    the first write's BrokenPipeError ended the run at once, exit 0, no word)."""
    with _closed_reader() as stdout:
        started = Run(tmp, "--control", "live.sock", stdout=stdout)
        try:
            wait_for("a status", lambda: _answers(tmp) or started.proc.poll() is not None)
            assert started.proc.poll() is None, started.stderr()
        finally:
            status = started.stop()
    assert status == 128 + signal.SIGTERM, started.stderr()
    err = started.stderr()
    assert "stopped by SIGTERM; everything was torn down" in err
    assert "of output not written: nothing was reading it" in err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_stderr_whose_reader_went_away_loses_no_answer_and_ends_no_run(tmp: Path) -> None:
    """With stderr's reader gone, a reload still answers (its line is dropped:
    before, its BrokenPipeError closed the connection with no answer), SIGUSR1
    ends no run (before: exit 0 at once), and SIGTERM still ends it with 143."""
    with _closed_reader() as stderr:
        started = Run(tmp, "--control", "live.sock", stderr=stderr)
        try:
            wait_for("a status", lambda: _answers(tmp) or started.proc.poll() is not None)
            (tmp / "live.toml").write_text(pair(0) + pair(1))
            assert control.request(str(tmp / "live.sock"), "reload")["added"] == ["dev1", "sink1"]
            started.signal(signal.SIGUSR1)
            for _ in range(2):  # the first may be served before the status is printed
                control.request(str(tmp / "live.sock"), "status")
            assert started.proc.poll() is None
        finally:
            status = started.stop()
    assert status == 128 + signal.SIGTERM
    assert "summary:" in started.out.read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_ctrl_c_while_the_header_waits_for_its_reader_leaves_no_textfile(
    tmp: Path, signum: int
) -> None:
    """The metrics textfile is written before the run prints its header; a
    Ctrl-C (or SIGTERM: systemctl stop) while the header waits for a reader
    that does not read (a terminal on Ctrl-S, a full pipe) ends the run and
    removes it, so node_exporter exports no stale pair (before: the file
    stayed, its figures frozen; SIGTERM killed the run there, its handler not
    yet in place)."""
    with _unread_pipe(full=True) as writer:
        started = Run(tmp, "--metrics-textfile", "live.prom", stdout=writer)
        with _killed_at_end(started):
            wait_for("the textfile", lambda: (tmp / "live.prom").exists())
            started.signal(signum)
            assert started.proc.wait(timeout=HANG_GUARD) == 128 + signum
    assert f"stopped by {signal.Signals(signum).name}" in started.stderr()
    assert not (tmp / "live.prom").exists(), "a stale textfile was left behind"


def _delivered(tmp: Path) -> int:
    status = cli("status", "live.sock", "--json", cwd=tmp)
    assert status.returncode == 0, status.stderr
    return int(json.loads(status.stdout)["pairs"][0]["delivered"])


def test_the_control_socket_is_the_users_alone(tmp: Path, run: Run) -> None:
    info = os.lstat(tmp / "live.sock")
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp / "live.sock"))
        sock.sendall(b"shutdown\n")
        answer = json.loads(sock.makefile().readline())
    assert answer == {
        "ok": False,
        "error": "unknown request 'shutdown'; send one of: status, reload",
    }
    assert run.stop() == 128 + signal.SIGTERM
    assert not (tmp / "live.sock").exists(), "the run removes its socket"


def test_a_peer_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answered: list[str] = []

    def answer(request: str) -> dict[str, Any]:
        answered.append(request)
        return {"ok": True}

    server = control.ControlServer(str(tmp_path / "c.sock"), answer)
    try:
        monkeypatch.setattr(control, "peer_uid", lambda sock: os.getuid() + 1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(tmp_path / "c.sock"))
            sock.sendall(b"status\n")
            assert server.serve() == 0
            refused = json.loads(sock.makefile().readline())
        assert refused == {"ok": False, "error": "refused: not the run's user"}
        assert answered == [] and server.refused == 1
    finally:
        server.close()


def test_a_path_that_is_not_a_stale_socket_of_ours_is_refused_and_kept(tmp: Path) -> None:
    (tmp / "live.sock").write_text("not a socket")
    result = cli("run", "live.toml", "--control", "live.sock", cwd=tmp)
    assert result.returncode == 1
    assert "the path exists and is not a socket of yours" in result.stderr
    assert (tmp / "live.sock").read_text() == "not a socket"


def test_a_stale_socket_of_a_killed_run_is_replaced(tmp: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp / "live.sock"))
    stale.close()  # bound, never listening: what a SIGKILLed run leaves
    started = Run(tmp, "--control", "live.sock")
    try:
        wait_for("a status", lambda: _answers(tmp))
    finally:
        assert started.stop() == 128 + signal.SIGTERM


def _answers(tmp: Path) -> bool:
    try:
        return bool(control.request(str(tmp / "live.sock"), "status")["ok"])
    except Exception:
        return False


def test_status_of_no_run_says_what_to_do(tmp_path: Path) -> None:
    result = cli("status", str(tmp_path / "none.sock"), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "cannot connect: No such file or directory; is `irqbypass run --control PATH` running?"
        in result.stderr
    )


def test_systemd_hears_ready_reloading_and_stopping(tmp: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp / "notify.sock"))
        notify.settimeout(HANG_GUARD)
        started = Run(tmp, environ={"NOTIFY_SOCKET": str(tmp / "notify.sock")})
        try:
            heard = [notify.recv(4096).decode()]
            assert heard[0].startswith("READY=1\nSTATUS=1 token, 1 paired; 0 reloads")
            started.signal(signal.SIGHUP)
            heard += [notify.recv(4096).decode(), notify.recv(4096).decode()]
            assert heard[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert heard[2].startswith("READY=1\nSTATUS=1 token, 1 paired; 1 reload")
        finally:
            started.stop()
        assert notify.recv(4096).decode() == "STOPPING=1"


def test_metrics_over_http_count_pairings_and_reloads(tmp: Path) -> None:
    import urllib.request

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = Run(tmp, "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""

    try:
        wait_for("a scrape with the pair", lambda: 'irqbypass_paired{consumer="sink0"' in scrape())
        (tmp / "live.toml").write_text(pair(0, rate=300.0))
        started.signal(signal.SIGHUP)
        wait_for("the reload counted", lambda: "irqbypass_reloads_total 1.0" in scrape())
        text = scrape()
        assert "irqbypass_pairings_total 2.0" in text and "irqbypass_unpairings_total 1.0" in text
        assert 'irqbypass_fired_total{consumer="sink0",producer="dev0",token="vec0"}' in text
    finally:
        assert started.stop() == 128 + signal.SIGTERM
    assert "irqbypass.metrics" not in started.out.read_text()  # not listed as a plugin


def test_metrics_on_any_free_port_say_which(tmp: Path) -> None:
    """``--metrics-port 0`` (any free port, as the help offers) says on stderr
    where the metrics are, so they can be scraped (before: the port was never
    told, not even under -v)."""
    import urllib.request

    started = Run(tmp, "--metrics-port", "0")
    try:
        wait_for("the metrics' address", lambda: "/metrics" in started.stderr())
        found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", started.stderr())
        assert found, started.stderr()
        with urllib.request.urlopen(found.group(0), timeout=HANG_GUARD) as reply:
            assert b"irqbypass_pairings_total" in reply.read()
    finally:
        assert started.stop() == 128 + signal.SIGTERM
