"""The live surfaces of ``irqbypass run`` under attack (issue 32): the metrics
textfile and exporter, the paths they open, the control socket, reloads.

Each test is one attack of the issue, written before its fix and seen to fail
on the code before it. No wall-clock limit: every wait is for a condition, with
a hang guard that only turns a hang into a failure.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.system
import pytest
from irqbypass import _metrics as metrics
from irqbypass import _paths as paths
from main_thread import main_thread_joining
from rel_support import COUNTERS

HANG_GUARD = 120.0


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, f"hang guard: {what} never happened"
        time.sleep(0.01)


def nobody() -> int:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file another user owns (chown): run as root")
    return pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def sticky(tmp_path: Path) -> Path:
    """A shared sticky directory, as /tmp is."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


@pytest.fixture
def exporter() -> Iterator[metrics.Metrics]:
    pytest.importorskip("prometheus_client")
    made = metrics.Metrics(metrics.PairingEvents())
    yield made
    made.close()


ROW = {"token": "t0", "producer": "p0", "consumer": "c0", "fired": 3, "paired": True}


# -- the metrics textfile (items 2, 3; issue 29 item 12) ----------------------


def test_a_planted_temporary_file_never_receives_the_metrics(
    sticky: Path, exporter: metrics.Metrics
) -> None:
    """Another user's file at every name the temporary could take today
    (``.NAME.PID.tmp``) is neither written nor used as the textfile."""
    uid = nobody()
    planted = sticky / f".node.prom.{os.getpid()}.tmp"
    planted.write_text("# forged\n")
    planted.chmod(0o666)
    os.chown(planted, uid, uid)
    exporter.write_to(str(sticky / "node.prom"))
    exporter.update([ROW], 0, 0)
    assert planted.read_text() == "# forged\n", "the planted file was written"
    textfile = sticky / "node.prom"
    info = textfile.stat()
    assert info.st_uid == os.geteuid() and "# forged" not in textfile.read_text()
    assert not stat.S_IMODE(info.st_mode) & (stat.S_IWGRP | stat.S_IWOTH)
    COUNTERS["live surfaces: planted temporaries"] += 1


def test_a_planted_fifo_does_not_hang_the_metrics_write(
    sticky: Path, exporter: metrics.Metrics
) -> None:
    """A FIFO at the temporary's name: opened today without O_NONBLOCK, the
    write hangs the main loop (here: a thread that never returns)."""
    os.mkfifo(sticky / f".node.prom.{os.getpid()}.tmp")
    done = threading.Event()

    def write() -> None:
        try:
            exporter.write_to(str(sticky / "node.prom"))
        finally:
            done.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    if not done.wait(10.0):  # not a speed limit: the open of a FIFO never returns
        with open(sticky / f".node.prom.{os.getpid()}.tmp", "rb"):  # release it
            pass
        thread.join()
        pytest.fail("the metrics write hung on a FIFO planted at its temporary's name")
    assert "irqbypass_paired" in (sticky / "node.prom").read_text()


def test_a_write_error_is_a_warning_not_a_crash(
    tmp_path: Path, exporter: metrics.Metrics, capfd: pytest.CaptureFixture[str]
) -> None:
    """A full disk (``/dev/full``'s ENOSPC, injected at the write) leaves no
    temporary behind and raises nothing: the caller's teardown goes on."""
    exporter.write_to(str(tmp_path / "node.prom"))
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        if bytes(data[:6]) == b"# HELP":  # the metrics' text; anyone else writes on
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", full)
        exporter.update([ROW], 0, 0)
        exporter.update([ROW], 0, 0)
    assert exporter.problem is not None and "No space left on device" in exporter.problem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.prom"], "a temporary was left"
    exporter.update([ROW], 0, 0)
    assert exporter.problem is None


def test_the_textfile_is_removed_at_exit(tmp_path: Path, exporter: metrics.Metrics) -> None:
    """After the run, node_exporter must not go on exporting live-looking pairs."""
    exporter.write_to(str(tmp_path / "node.prom"))
    exporter.update([ROW], 0, 0)
    assert "irqbypass_paired{" in (tmp_path / "node.prom").read_text()
    exporter.close()
    assert not (tmp_path / "node.prom").exists()


def test_the_textfile_of_someone_else_is_not_removed_at_exit(
    tmp_path: Path, exporter: metrics.Metrics
) -> None:
    exporter.write_to(str(tmp_path / "node.prom"))
    (tmp_path / "node.prom").unlink()
    (tmp_path / "node.prom").write_text("another writer's\n")
    exporter.close()
    assert (tmp_path / "node.prom").read_text() == "another writer's\n"


# -- every component of a path (item 4) ---------------------------------------


def test_a_link_in_the_middle_of_a_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (target / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(irqbypass.system.UnsafePathError, match="symbolic link") as caught:
        paths.open_directory(str(tmp_path / "link" / "sub"))
    assert "(at " in str(caught.value) and caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
    with pytest.raises(irqbypass.system.UnsafePathError, match="symbolic link"):
        irqbypass.system.open_file(str(tmp_path / "link" / "sub" / "f"), os.O_RDWR | os.O_CREAT)
    assert not (target / "sub" / "f").exists()


def test_a_link_in_the_middle_never_redirects_the_textfile(
    tmp_path: Path, exporter: metrics.Metrics
) -> None:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "node.prom").write_text("root's own\n")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(irqbypass.system.UnsafePathError, match="symbolic link"):
        exporter.write_to(str(tmp_path / "link" / "sub" / "node.prom"))
    assert (victim / "sub" / "node.prom").read_text() == "root's own\n"


def test_relative_and_dotted_paths_still_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for path in ("a/b", "./a//b/", "a/b/../b", "", "."):
        fd = paths.open_directory(path)
        try:
            expected = tmp_path / "a" / "b" if "a" in path else tmp_path
            assert os.path.samestat(os.fstat(fd), os.stat(expected)), path
        finally:
            os.close(fd)


# -- the HTTP exporter (item 6) -----------------------------------------------


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=HANG_GUARD) as reply:
        return str(reply.read().decode())


def _port(exporter: metrics.Metrics) -> int:
    exporter.serve(0, "127.0.0.1")
    port = getattr(exporter, "port", None)
    if port is None:  # before the fix: prometheus_client's server
        port = exporter._server.server_address[1]
    assert isinstance(port, int)
    return port


IDLE = 300


def test_idle_connections_cost_no_thread_and_are_closed(exporter: metrics.Metrics) -> None:
    """Another local user holds 300 idle connections: no thread per connection,
    each is closed by the server, and a scrape is answered meanwhile."""
    exporter.update([ROW], 0, 0)
    port = _port(exporter)
    before = threading.active_count()
    idle = []
    try:
        for _ in range(IDLE):
            sock = socket.create_connection(("127.0.0.1", port))
            idle.append(sock)
        assert 'irqbypass_paired{consumer="c0"' in _scrape(port)
        # prometheus_client started a thread per connection; the cap allows one in all
        assert threading.active_count() <= before + 1, "a thread per connection"
        for sock in idle:  # each one is closed by the server (EOF), none held for ever
            sock.settimeout(HANG_GUARD)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    COUNTERS["live surfaces: idle metrics connections"] += IDLE


def test_a_slow_request_is_cut_at_its_deadline(exporter: metrics.Metrics) -> None:
    port = _port(exporter)
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the end of its headers
        slow.settimeout(HANG_GUARD)
        assert slow.recv(1) == b""
    assert "irqbypass_pairings_total" in _scrape(port)


# -- the control socket (items 5, 6, 9) ----------------------------------------


class Server:
    """A ControlServer served the way ``irqbypass run``'s main loop does (its
    ``idle``), on a thread of the test's: what it answers is recorded."""

    def __init__(self, path: Path, answer: Callable[[str], dict[str, Any]] | None = None) -> None:
        from irqbypass import _control as control

        self.served: list[str] = []
        self.answer = answer or (lambda request: {"ok": True, "request": request})

        def answer_and_note(request: str) -> dict[str, Any]:
            self.served.append(request)
            return self.answer(request)

        self.server = control.ControlServer(str(path), answer_and_note)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import select

        while not self.stop.is_set():
            select.select([self.server], [], [], 0.05)
            self.server.serve()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(HANG_GUARD)
        self.server.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    made = Server(tmp_path / "c.sock")
    yield made
    made.close()


def test_idle_clients_do_not_delay_the_others(tmp_path: Path, server: Server) -> None:
    """Ten idle clients of our own user, connected first: a status is answered
    while they still hold their connections (before: each idle one took its
    2 s deadline in turn, the whole main loop waiting)."""
    from irqbypass import _control as control

    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(10)]
    try:
        for sock in idle:
            sock.connect(str(tmp_path / "c.sock"))
        wait_for("the idle clients accepted", lambda: server.server.clients == 10)
        doc = control.request(str(tmp_path / "c.sock"), "status")
        assert doc == {"ok": True, "request": "status"}
        assert server.server.clients >= 9, "answered only once the idle ones were cut"
    finally:
        for sock in idle:
            sock.close()


def test_a_silent_client_is_cut_at_its_deadline(tmp_path: Path, server: Server) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(tmp_path / "c.sock"))
        silent.settimeout(HANG_GUARD)
        assert silent.recv(1) == b""
    wait_for("the client forgotten", lambda: server.server.clients == 0)
    assert server.served == []


CLIENTS = 500


def test_five_hundred_clients_at_once_are_all_answered(tmp_path: Path, server: Server) -> None:
    """Each client waits out its own deadline: a full backlog is no refusal."""
    from irqbypass import _control as control

    answers: list[object] = []
    lock = threading.Lock()

    def ask() -> None:
        try:
            got: object = control.request(str(tmp_path / "c.sock"), "status", timeout=HANG_GUARD)
        except Exception as exc:
            got = exc
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=ask) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD)
    failed = [a for a in answers if not isinstance(a, dict)]
    assert not failed and len(answers) == CLIENTS, f"{len(failed)} failed: {failed[:3]}"
    COUNTERS["live surfaces: concurrent status clients"] += CLIENTS


def test_a_slow_answer_reaches_its_client(tmp_path: Path) -> None:
    """A reload that takes longer than the client's serving deadline: its
    answer is still whole JSON (before: the deadline began before the reload)."""
    from irqbypass import _control as control

    def slow(request: str) -> dict[str, Any]:
        time.sleep(control.SERVE_SECONDS + 0.5)  # the reload's own work, not a limit
        return {"ok": True, "added": ["x" * 100_000]}

    made = Server(tmp_path / "c.sock", slow)
    try:
        doc = control.request(str(tmp_path / "c.sock"), "reload")
    finally:
        made.close()
    assert doc["added"] == ["x" * 100_000]


def test_an_accept_short_of_fds_rests_the_listener(tmp_path: Path) -> None:
    """At the fd limit the accept fails with EMFILE while the listener stays
    readable: the server must stop watching it a while, not spin."""
    import resource

    from irqbypass import _control as control

    made = control.ControlServer(str(tmp_path / "c.sock"), lambda request: {"ok": True})
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        client.connect(str(tmp_path / "c.sock"))
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        filler = []
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            made.serve()
            accepting = made.accepting()
        finally:
            for fd in filler:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not accepting, "the listener is still watched: the main loop would spin"
        wait_for("the listener watched again", lambda: (made.serve(), made.accepting())[1])
        client.sendall(b"status\n")
        client.settimeout(HANG_GUARD)
        wait_for("the answer", lambda: made.serve() == 1)
    finally:
        client.close()
        made.close()


# -- the command line's client (items 10, 12) ----------------------------------


def _fake_server(path: Path, answer: bytes) -> tuple[socket.socket, threading.Thread]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


GOOD_ROW = (
    '{"token": "t", "producer": "p", "producer_kind": "mock", "consumer": "c", '
    '"consumer_kind": "logging", "paired": true, "fired": 1, "delivered": 1, '
    '"coalesced": null, "queued": 0, "lost": 0, "producer_stats": {}, '
    '"consumer_stats": {}, "problems": []}'
)
GOOD = (
    '{"ok": true, "file": "f.toml", "pid": 1, "uptime": 1.5, "reloads": 0, '
    '"failed_reloads": 0, "pairs": [ROW], "skipped": [], "vetoed": []}'
)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="nested-deeply"),
        pytest.param(
            GOOD.replace("ROW", GOOD_ROW).replace('"uptime": 1.5', '"uptime": "x"'),
            id="uptime-a-string",
        ),
        pytest.param(
            GOOD.replace("ROW", GOOD_ROW).replace('"pairs": [', '"pairs": {"a": ['),
            id="pairs-not-a-list",
        ),
        pytest.param(GOOD.replace("ROW", "7"), id="row-a-number"),
        pytest.param(
            GOOD.replace("ROW", GOOD_ROW.replace('"fired": 1', '"fired": "1"')), id="fired-a-string"
        ),
        pytest.param(
            GOOD.replace("ROW", GOOD_ROW.replace('"problems": []', '"problems": 3')),
            id="problems-a-number",
        ),
        pytest.param(
            GOOD.replace("ROW", GOOD_ROW).replace('"skipped": []', '"skipped": [1]'),
            id="skipped-not-objects",
        ),
        pytest.param('{"ok": false, "error": {"a": 1}}', id="error-not-text"),
        pytest.param('{"ok": true}', id="fields-missing"),
    ],
)
@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_status_trusts_no_servers_shape(
    tmp_path: Path, answer: str, json_output: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from irqbypass.cli import main

    listener, thread = _fake_server(tmp_path / "s.sock", answer.encode() + b"\n")
    try:
        code = main(["status", str(tmp_path / "s.sock"), *(["--json"] if json_output else [])])
    finally:
        thread.join(HANG_GUARD)
        listener.close()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "bug" not in err, err
    assert f"{tmp_path / 's.sock'}: " in err


@pytest.mark.parametrize(
    "answer",
    [
        '{"ok": true, "added": "abc", "removed": [], "changed": {}}',
        '{"ok": true, "added": [], "removed": [], "changed": {"a": [1, 2]}}',
        '{"ok": true, "added": [], "removed": [], "changed": [["a", "b"]]}',
    ],
)
def test_reload_trusts_no_servers_shape(
    tmp_path: Path, answer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from irqbypass.cli import main

    listener, thread = _fake_server(tmp_path / "s.sock", answer.encode() + b"\n")
    try:
        code = main(["reload", str(tmp_path / "s.sock")])
    finally:
        thread.join(HANG_GUARD)
        listener.close()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "not lists of names" in err, err


@pytest.mark.parametrize("request_", ["status", "reload"])
def test_a_run_that_closes_without_an_answer_is_said_so(
    tmp_path: Path, request_: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run closed the connection with no answer (stopped, or killed, while
    a reload ran): the error says so and what to check (before: "the answer is
    not JSON (Expecting value: line 1 column 1 (char 0))", about an answer that
    never came)."""
    from irqbypass.cli import main

    listener, thread = _fake_server(tmp_path / "s.sock", b"")
    try:
        code = main([request_, str(tmp_path / "s.sock")])
    finally:
        thread.join(HANG_GUARD)
        listener.close()
    err = capsys.readouterr().err
    assert code == 1 and "not JSON" not in err, err
    assert (
        f"{tmp_path / 's.sock'}: the run closed the connection without an answer; "
        "is it still running?" in err
    ), err


def test_a_good_status_still_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from irqbypass.cli import main

    listener, thread = _fake_server(tmp_path / "s.sock", GOOD.replace("ROW", GOOD_ROW).encode())
    try:
        code = main(["status", str(tmp_path / "s.sock")])
    finally:
        thread.join(HANG_GUARD)
        listener.close()
    assert code == 0 and "f.toml: running 1.5 s (pid 1)" in capsys.readouterr().out


def _cli(*args: str, cwd: Path) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "irqbypass", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    return done.returncode, done.stderr


TOPOLOGY = '[[producers]]\nname = "p"\nkind = "mock"\ntoken = "t"\noptions = { count = 1 }\n'


@pytest.mark.parametrize(
    "args, said",
    [
        (["--metrics-port", "70000"], "70000 is not a port number (0 to 65535)"),
        (["--metrics-port", "-1"], "-1 is not a port number (0 to 65535)"),
        (["--control", ""], "the path is empty"),
    ],
    ids=["port-too-big", "port-negative", "control-empty"],
)
def test_bad_live_options_are_usage_errors(tmp_path: Path, args: list[str], said: str) -> None:
    (tmp_path / "t.toml").write_text(TOPOLOGY)
    code, err = _cli("run", "t.toml", *args, cwd=tmp_path)
    assert code == 2 and said in err and "Traceback" not in err, err


def test_a_socket_name_too_long_says_so(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text(TOPOLOGY)
    name = "s" * 120 + ".sock"
    code, err = _cli("run", "t.toml", "--control", name, cwd=tmp_path)
    assert code == 1 and "the socket's name is 125 bytes" in err and "None" not in err, err
    code, err = _cli("status", name, cwd=tmp_path)
    assert code == 1 and "the socket's name is 125 bytes" in err and "None" not in err, err


def test_a_long_directory_is_no_obstacle(tmp_path: Path) -> None:
    """A path over 107 bytes with a short name: served and asked through the
    directory's fd (before: "cannot connect: None")."""
    from irqbypass import _control as control

    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    made = Server(deep / "c.sock")
    try:
        assert control.request(str(deep / "c.sock"), "status")["ok"] is True
    finally:
        made.close()


# -- a reload of a FIFO (item 7) ------------------------------------------------


def test_a_reload_of_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    from irqbypass.cli import live

    (tmp_path / "t.toml").write_text(TOPOLOGY)
    config = live._read_again(str(tmp_path / "t.toml"))
    assert [e.name for e in config.endpoints] == ["p"]
    (tmp_path / "t.toml").unlink()
    os.mkfifo(tmp_path / "t.toml")
    result: list[BaseException | None] = []

    def read() -> None:
        try:
            live._read_again(str(tmp_path / "t.toml"))
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10.0)  # not a speed limit: opening a FIFO with no writer never returns
    if thread.is_alive():
        os.close(os.open(tmp_path / "t.toml", os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
        pytest.fail("the reload's open hung on a FIFO")
    (error,) = result
    assert isinstance(error, irqbypass.ConfigError) and "not a regular file (a FIFO)" in str(error)


# -- finding each error's line (item 8) -----------------------------------------


def _lines_run(action: Callable[[], object], module: Any = None) -> int:
    """How many Python lines ``action`` runs on this thread (of ``module``
    only, if given): a count of work, not a time."""
    import sys

    count = 0

    def local(frame: Any, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: Any, event: str, arg: object) -> Any:
        return local if module is None or frame.f_code.co_filename == module.__file__ else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        action()
    finally:
        sys.settrace(previous)
    return count


def _unknown_tables(n: int) -> str:
    return "".join(f"[unknown{i}]\nx = 1\n" for i in range(n))


def _bad_entries(n: int) -> str:
    return "".join(
        f'[[producers]]\nname = "p{i}"\nkind = "mock"\ntoken = "t{i}"\nirq = -1\nwhat = 2\n'
        for i in range(n)
    )


@pytest.mark.parametrize("text", [_unknown_tables, _bad_entries], ids=["tables", "entries"])
def test_finding_the_lines_of_many_errors_is_linear(text: Callable[[int], str]) -> None:
    """Twice the errors cost about twice the work (it was four times: each
    error's line was found by scanning the whole file)."""
    from irqbypass import _config as config

    def check(n: int) -> Callable[[], object]:
        def parse() -> None:
            with pytest.raises(irqbypass.ConfigError) as caught:
                config.parse_config(text(n), file="many.toml")
            assert len(caught.value.errors) >= n
            assert all(e.line for e in caught.value.errors[:n]), "an error without its line"

        return parse

    small, large = _lines_run(check(150), config), _lines_run(check(300), config)
    assert large < 2.5 * small, f"150 errors: {small} lines run, 300: {large}"


# -- a large reload with signals deferred (item 9) -------------------------------


def _pair(i: int, count: int = -1) -> str:
    return (
        f'[[producers]]\nname = "p{i}"\nkind = "mock"\ntoken = "t{i}"\n'
        f"options = {{ rate = 0.0, count = {count} }}\n"
        f'[[consumers]]\nname = "c{i}"\nkind = "logging"\ntoken = "t{i}"\n'
    )


def test_a_reload_adding_many_pairs_and_changing_one_is_linear() -> None:
    """The reload's change runs signal-safe (a SIGTERM waits for its next
    delivery point): a quadratic step in it made SIGTERM wait 11-67 s at
    2,500 pairs. Twice the pairs must cost about twice the work."""
    from irqbypass._config import parse_config
    from irqbypass._topology import Topology

    host = irqbypass.load_plugins(allow=["irqbypass-mock", "irqbypass-logging"])

    def work(n: int) -> int:
        topology = Topology(parse_config(_pair(0), file="t.toml"), host)
        topology.apply()
        try:
            new = parse_config(_pair(0, 5) + "".join(map(_pair, range(1, n))), file="t.toml")
            return _lines_run(lambda: topology.reconcile(new))
        finally:
            topology.teardown()

    small, large = work(150), work(300)
    assert large < 2.5 * small, f"150 pairs: {small} lines run, 300: {large}"


# -- what check accepts, run can use (item 11) -----------------------------------

HOSTILE_OPTIONS = {
    "vhost": [
        "fd = 2147483648",
        "fd = 9223372036854775807",
        'device = "/dev/vhost-net\\u0000x"',
        'device = ""',
        'device = "/dev/vhost-net", queue = 4294967295',
        'device = "' + "a" * 5000 + '"',
    ],
    "vdpa": [
        "fd = 2147483648",
        'device = "/dev/vhost-vdpa-0\\u0000"',
        'device = "/dev/vhost-vdpa-0", group = 4294967296',
        'device = "/dev/vhost-vdpa-0", group = 9223372036854775808',
        'device = ""',
    ],
    "vfio": [
        "fd = 2147483648",
        'device = "0000:01:00.0\\u0000"',
        'device = "/dev/vfio/1", device_name = "x\\u0000y"',
        'device = "/dev/vfio/devices/vfio0", iommufd = "/dev/iommu\\u0000"',
        'device = "/dev/vfio/devices/vfio0", index = 4294967296',
        'device = ""',
        'device = "0000:01:00.0", vector = 4294967295',
    ],
    "vhost-user": [
        "fd = 2147483648",
        'socket = "/tmp/vhost\\u0000.sock"',
    ],
}


@pytest.mark.parametrize(
    "kind, options",
    [(kind, options) for kind, values in HOSTILE_OPTIONS.items() for options in values],
    ids=[f"{k}-{i}" for k, values in HOSTILE_OPTIONS.items() for i in range(len(values))],
)
def test_what_check_accepts_run_can_use(
    tmp_path: Path, kind: str, options: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Either ``check`` refuses the value, naming the option, or ``run``
    fails with the plugin's own error: never "a bug in plugin"."""
    from irqbypass.cli import main

    (tmp_path / "t.toml").write_text(
        f'[[producers]]\nname = "p"\nkind = "{kind}"\ntoken = "t"\noptions = {{ {options} }}\n'
        '[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\n'
    )
    checked = main(["check", str(tmp_path / "t.toml")])
    said = capsys.readouterr().err
    if checked != 0:
        assert "producers[0].options." in said and "Traceback" not in said, said
        COUNTERS["live surfaces: hostile options refused by check"] += 1
        return
    code = main(["run", str(tmp_path / "t.toml"), "--duration", "0.2"])
    said = capsys.readouterr().err
    assert "bug in plugin" not in said and "Traceback" not in said, said
    assert code == 1 and f"(kind {kind}) failed" in said, said
    COUNTERS["live surfaces: hostile options that fail run cleanly"] += 1


@pytest.mark.parametrize(
    "arguments",
    [{"device_fd": 2**31}, {"device": "/dev/vhost-net\0"}, {"device": ""}],
    ids=["fd-beyond-int", "device-with-nul", "device-empty"],
)
def test_the_python_api_refuses_them_too(arguments: dict[str, Any]) -> None:
    from irqbypass_vhost.producer import VhostProducer

    with irqbypass.Eventfd() as token, pytest.raises(irqbypass.InvalidEndpointError):
        VhostProducer(token=token, **arguments)


def test_a_textfile_that_cannot_be_written_never_skips_the_teardown(tmp_path: Path) -> None:
    """The textfile's directory removed under the run (every write fails, as on
    a full disk): the run warns and goes on, and SIGTERM still tears it all down
    (before: the write's OSError ended the run, and the final write raised again
    before the teardown)."""
    import shutil
    import signal
    import subprocess
    import sys

    (tmp_path / "t.toml").write_text(_pair(0))
    (tmp_path / "prom").mkdir()
    err = tmp_path / "err.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "irqbypass", "run", "t.toml"),
                *("--metrics-textfile", "prom/node.prom", "--control", "c.sock"),
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for("the first textfile", lambda: (tmp_path / "prom" / "node.prom").exists())
        shutil.rmtree(tmp_path / "prom")
        wait_for("the warning", lambda: "cannot write the metrics textfile" in err.read_text())
        assert proc.poll() is None, err.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(HANG_GUARD)
    said = err.read_text()
    assert code == 128 + signal.SIGTERM, said
    assert "everything was torn down" in said and "Traceback" not in said, said


# -- the loop and fds closed behind its back --------------------------------------


@pytest.fixture
def loop() -> Iterator[Any]:
    from irqbypass._loop import EventLoop

    made = EventLoop(name="live-surfaces")
    yield made
    made.close()


def test_an_fd_closed_behind_the_loops_back_does_not_block_its_number(loop: Any) -> None:
    """A plugin closes a watched fd without cancelling its reader; the number
    comes back for another endpoint, which must be able to use it (before:
    "fd N already has a reader"). The stale reader is a fault of its owner."""
    r, w = os.pipe()
    stale = loop.add_reader(r, lambda: None, owner="careless")
    os.close(r)
    os.close(w)
    r2, w2 = os.pipe()
    got: list[bytes] = []
    try:
        assert r2 == r, "the kernel gives the lowest free number"
        loop.add_reader(r2, lambda: got.append(os.read(r2, 16)), owner="next")
        os.write(w2, b"x")
        wait_for("the new reader called", lambda: got == [b"x"])
    finally:
        os.close(r2)
        os.close(w2)
    assert stale.state == "failed" and "was closed while the loop watched it" in str(stale.problem)
    assert [f.owner for f in loop.faults] == ["careless"]


def test_an_fd_the_loop_cannot_watch_is_an_irqbypass_error(loop: Any, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(irqbypass.InvalidEndpointError, match="not a regular file") as caught:
            loop.add_reader(fd, lambda: None, owner="file")
        assert caught.value.errno == errno.EPERM
    finally:
        os.close(fd)
    with pytest.raises(irqbypass.InvalidEndpointError, match="Bad file descriptor"):
        loop.add_reader(fd, lambda: None, owner="closed")
    assert loop.handles() == []


# -- a signal while the live surfaces close --------------------------------------


@pytest.mark.parametrize("failing", [False, True], ids=["after-the-wait", "after-an-error"])
def test_a_signal_while_the_surfaces_close_never_skips_the_teardown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: bool, capsys: Any
) -> None:
    """SIGTERM (here: its KeyboardInterrupt) landing in the close of the
    control socket and the exporter, which runs just before the teardown: the
    teardown still runs, every endpoint is closed (before: it was skipped)."""
    from irqbypass.cli import live, main

    closed: list[bool] = []
    real_close = live.Live.close

    def interrupted_close(self: Any) -> None:
        real_close(self)
        if not closed:
            closed.append(True)
            raise KeyboardInterrupt  # what SIGTERM's handler raises, at the worst moment

    monkeypatch.setattr(live.Live, "close", interrupted_close)
    if failing:  # the wait itself ends with an error: the other path to the teardown

        def broken_ready(self: Any) -> None:
            raise irqbypass.IrqBypassError("injected")

        monkeypatch.setattr(live.Live, "ready", broken_ready)
    (tmp_path / "t.toml").write_text(_pair(0).replace("count = -1", "count = 3"))
    irqbypass.event_loop().start()  # the process's loop and its wakeup eventfd stay
    before = set(os.listdir("/proc/self/fd"))
    code: object
    try:
        code = main(
            [
                *("run", str(tmp_path / "t.toml"), "--duration", "0.3"),
                *("--control", str(tmp_path / "c.sock")),
            ]
        )
    except KeyboardInterrupt:
        code = "KeyboardInterrupt"
    said = capsys.readouterr().err
    assert closed == [True]
    opened = {
        fd
        for fd in set(os.listdir("/proc/self/fd")) - before
        if os.path.exists(f"/proc/self/fd/{fd}") and "eventfd" in os.readlink(f"/proc/self/fd/{fd}")
    }
    assert not opened, f"eventfds left open (the teardown was skipped): {opened}; {said}"
    assert code != 0, said


def test_a_second_signal_while_the_surfaces_close_never_skips_the_teardown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Ctrl-C held down (the terminal repeats it): one interrupt lands in the
    close of the control socket, the next in the close tried again; the
    teardown still runs (before: the second escaped past it, every eventfd open)."""
    from irqbypass.cli import live, main

    interrupts: list[bool] = []
    real_close = live.Live.close

    def interrupted_close(self: Any) -> None:
        real_close(self)
        if len(interrupts) < 2:
            interrupts.append(True)
            raise KeyboardInterrupt

    monkeypatch.setattr(live.Live, "close", interrupted_close)
    (tmp_path / "t.toml").write_text(_pair(0).replace("count = -1", "count = 3"))
    irqbypass.event_loop().start()  # the process's loop and its wakeup eventfd stay
    before = set(os.listdir("/proc/self/fd"))
    try:
        code: object = main(
            [
                *("run", str(tmp_path / "t.toml"), "--duration", "0.3"),
                *("--control", str(tmp_path / "c.sock")),
            ]
        )
    except KeyboardInterrupt:
        code = "KeyboardInterrupt"
    said = capsys.readouterr().err
    assert interrupts == [True, True]
    opened = {
        fd
        for fd in set(os.listdir("/proc/self/fd")) - before
        if os.path.exists(f"/proc/self/fd/{fd}") and "eventfd" in os.readlink(f"/proc/self/fd/{fd}")
    }
    assert not opened, f"eventfds left open (the teardown was skipped): {opened}; {said}"
    assert code == 128 + 2, said
    assert "everything was torn down" in said


@pytest.mark.parametrize("path", ["", "missing/dir/node.prom"], ids=["empty", "no-directory"])
def test_a_textfile_path_that_cannot_be_used_names_its_option(tmp_path: Path, path: str) -> None:
    (tmp_path / "t.toml").write_text(TOPOLOGY)
    code, err = _cli("run", "t.toml", "--metrics-textfile", path, cwd=tmp_path)
    assert code == 1 and f"--metrics-textfile {path!r}: " in err and "Traceback" not in err, err


def test_the_control_path_appears_only_once_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between bind and listen a socket refuses connections: a client seeing
    the path then failed with ECONNREFUSED, and a second run starting on the
    same path took it for a killed run's and removed it. The path must appear
    only once the socket listens, and no temporary name is left behind."""
    from irqbypass import _control as control

    seen: list[bool] = []
    real_listen = socket.socket.listen

    def listen(self: socket.socket, *args: Any) -> None:
        seen.append(os.path.lexists(tmp_path / "c.sock"))
        real_listen(self, *args)

    monkeypatch.setattr(socket.socket, "listen", listen)
    server = control.ControlServer(str(tmp_path / "c.sock"), lambda request: {"ok": True})
    try:
        assert seen == [False], "the path existed before the socket listened"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sock"]
        assert stat.S_IMODE(os.lstat(tmp_path / "c.sock").st_mode) == 0o600
    finally:
        server.close()
    assert not (tmp_path / "c.sock").exists()


# -- a Ctrl-C while the metrics close -------------------------------------------


def test_a_ctrl_c_while_the_exporter_stops_still_removes_the_textfile(
    tmp_path: Path, exporter: metrics.Metrics
) -> None:
    """Ctrl-C (a real SIGINT) lands while close() waits for the exporter's
    thread to end its scrape: the textfile is still removed (before: the
    KeyboardInterrupt skipped it, and node_exporter went on exporting pairs
    that no longer existed), and close() called again finishes the exporter
    (before: it returned at once, its listener left open for good)."""
    import signal

    exporter.update([ROW], 0, 0)
    port = _port(exporter)
    textfile = tmp_path / "node.prom"
    exporter.write_to(str(textfile))
    server = exporter._server
    thread = server._thread
    assert thread is not None
    entered, release = threading.Event(), threading.Event()
    real_scrape = server.scrape

    def slow_scrape() -> bytes:  # a scrape of a big topology, still running
        entered.set()
        release.wait(HANG_GUARD)
        return bytes(real_scrape())

    server.scrape = slow_scrape
    scraper = threading.Thread(target=lambda: _scrape(port), daemon=True)
    scraper.start()
    wait_for("the scrape to begin", entered.is_set)

    def interrupt() -> None:
        wait_for("close() to wait for the exporter's thread", main_thread_joining)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt, daemon=True)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            exporter.close()
    finally:
        release.set()
        interrupter.join(HANG_GUARD)
        scraper.join(HANG_GUARD)
    assert not textfile.exists(), "the textfile was left behind"
    exporter.close()  # the caller's second try (the run's teardown retries its close)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD).close()
    assert not thread.is_alive()  # this exporter's thread (another test's may still be ending)


def test_a_socket_put_in_place_of_a_stale_one_while_it_is_probed_is_not_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs starting on one --control path where a killed run left its
    socket: both find it stale, the other replaces it and listens, and then
    this one removed the other's live socket in place of the stale one (the
    other run went on without its path, and `irqbypass status` reached this
    run instead). Here the other run's socket appears while this run's probe
    is refused: it is kept, and this run is refused as when it finds a run
    listening there."""
    from irqbypass import _control as control

    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a SIGKILLed run leaves
    other: list[Server] = []
    real_socket = control.socket.socket

    class Probe(real_socket):  # type: ignore[misc,valid-type]
        def connect(self, address: Any) -> None:
            try:
                super().connect(address)
            finally:  # refused: the other run replaces the stale socket meanwhile
                if not other:
                    path.unlink()
                    other.append(Server(path))

    monkeypatch.setattr(control.socket, "socket", Probe)
    try:
        with pytest.raises(irqbypass.IrqBypassError) as caught:
            control.ControlServer(str(path), lambda request: {"ok": True})
        assert caught.value.errno in (errno.EADDRINUSE, errno.EEXIST), caught.value
        monkeypatch.undo()
        assert control.request(str(path), "status", timeout=HANG_GUARD) == {
            "ok": True,
            "request": "status",
        }, "the other run's socket was removed"
        assert other[0].served == ["status"]
    finally:
        for server in other:
            server.close()
