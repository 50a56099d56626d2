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
import pytest
from irqbypass import metrics, paths
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
    with pytest.raises(irqbypass.UnsafePathError, match="symbolic link") as caught:
        paths.open_directory(str(tmp_path / "link" / "sub"))
    assert "(at " in str(caught.value) and caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
    with pytest.raises(irqbypass.UnsafePathError, match="symbolic link"):
        irqbypass.open_file(str(tmp_path / "link" / "sub" / "f"), os.O_RDWR | os.O_CREAT)
    assert not (target / "sub" / "f").exists()


def test_a_link_in_the_middle_never_redirects_the_textfile(
    tmp_path: Path, exporter: metrics.Metrics
) -> None:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "node.prom").write_text("root's own\n")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(irqbypass.UnsafePathError, match="symbolic link"):
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
