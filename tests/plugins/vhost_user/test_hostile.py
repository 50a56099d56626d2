"""A hostile back-end in its own process, and a second local user: the
front-end survives, refuses, and reports (issue 20).

The back-end is ``fake_backend.py``; the second user is ``nobody``, whom a
forked child becomes with setuid (no system change), so these tests need root
and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import irqbypass
import pytest
from irqbypass_vhost_user import (
    BackendTimeoutError,
    Connection,
    ProtocolError,
    VhostUserError,
    VhostUserProducer,
)

from .conftest import GUARD, wait_for

pytestmark = pytest.mark.usefixtures("no_fd_leak")

SCRIPT = Path(__file__).with_name("fake_backend.py")


def nobody() -> int:
    """The uid of a second local user, or skip."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second local user (setuid to nobody): run as root")
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user 'nobody' here: useradd --system nobody")


class Fake:
    """``fake_backend.py`` listening at ``path`` in a process of its own."""

    def __init__(self, path: Path, *args: str, as_user: int | None = None) -> None:
        self.path = path
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ours, theirs = socket.socketpair()
        try:
            listener.bind(str(path))
            argv = [sys.executable, str(SCRIPT), str(theirs.fileno()), str(listener.fileno())]
            argv += [*args, *(("--as-user", str(as_user)) if as_user is not None else ())]
            self.process = subprocess.Popen(argv, pass_fds=(theirs.fileno(), listener.fileno()))
        except BaseException:
            ours.close()
            raise
        finally:
            listener.close()
            theirs.close()
        self.control = ours
        ours.settimeout(GUARD)  # a hang guard on every report
        self.lines = ours.makefile("r", encoding="ascii")
        self.expect("listening")

    def expect(self, prefix: str) -> str:
        """The back-end's next report, which must start with ``prefix``."""
        try:
            line = self.lines.readline().strip()
        except TimeoutError:
            raise AssertionError(f"the fake back-end never reported {prefix!r}") from None
        assert line.startswith(prefix), f"expected {prefix!r}, the back-end said {line!r}"
        return line

    def go(self) -> None:
        self.control.sendall(b"go\n")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.lines.close()
        self.control.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[type[Fake]]:
    made: list[Fake] = []

    class Tracked(Fake):
        def __init__(self, path: Path, *args: str, as_user: int | None = None) -> None:
            super().__init__(path, *args, as_user=as_user)
            made.append(self)

    try:
        yield Tracked
    finally:
        for backend in made:
            backend.close()


# -- shared memory -------------------------------------------------------------


FRONT_END = """
import sys, irqbypass
from irqbypass_vhost_user import VhostUserProducer
with irqbypass.Eventfd() as token:
    producer = VhostUserProducer(token=token, socket=sys.argv[1], name="vq0")
    producer.open()  # the back-end truncated the memory before acking SET_MEM_TABLE
    memory = producer.memory
    producer.ring.device_used_idx()  # the ring is still there
    assert memory.view[memory.size - 1] == 0  # so is the last page
    producer.close()
print("survived")
"""


def test_a_backend_cannot_shrink_the_guest_memory(tmp_path: Path, fake: type[Fake]) -> None:
    """The memfd is sealed before SET_MEM_TABLE: the back-end's ftruncate fails.
    (Unsealed, it succeeded and the front-end died of SIGBUS at its next ring
    access: the front-end runs in a child here, so that death is a failure.)"""
    backend = fake(tmp_path / "vu.sock", "--truncate")
    front_end = subprocess.run(
        [sys.executable, "-c", FRONT_END, str(backend.path)],
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert backend.expect("truncate") == "truncate EPERM"
    assert front_end.returncode == 0, (
        f"the front-end died: {front_end.returncode} {front_end.stderr}"
    )
    assert front_end.stdout.strip() == "survived"


# -- who listens -------------------------------------------------------------------


def test_a_listener_of_another_user_is_refused(
    tmp_path: Path, fake: type[Fake], token: irqbypass.Eventfd
) -> None:
    """Our socket file, but the process that listens on it runs as another
    user: SO_PEERCRED refuses it before the memory or an eventfd is sent."""
    uid = nobody()
    backend = fake(tmp_path / "vu.sock", as_user=uid)
    producer = VhostUserProducer(token=token, socket=str(backend.path), name="vq0")
    with pytest.raises(VhostUserError, match=f"runs as uid {uid}, not a trusted user") as c:
        producer.open()
    assert c.value.errno == errno.EACCES
    assert f"backend_uid = {uid}" in c.value.message
    assert producer.connection is None


def test_a_named_backend_uid_is_accepted(
    tmp_path: Path, fake: type[Fake], token: irqbypass.Eventfd
) -> None:
    uid = nobody()
    backend = fake(tmp_path / "vu.sock", as_user=uid)
    with VhostUserProducer(
        token=token, socket=str(backend.path), name="vq0", backend_uid=uid
    ) as producer:
        assert producer.stats()["bound"] == 1


def test_a_socket_another_user_owns_is_refused(tmp_path: Path, fake: type[Fake]) -> None:
    uid = nobody()
    backend = fake(tmp_path / "vu.sock")
    os.chown(backend.path, uid, uid)
    with pytest.raises(VhostUserError, match=f"owned by uid {uid}") as caught:
        Connection.connect(str(backend.path), what="probe", timeout=1.0)
    assert caught.value.errno == errno.EACCES


def test_a_symlink_at_the_socket_path_is_not_followed(tmp_path: Path, fake: type[Fake]) -> None:
    backend = fake(tmp_path / "real.sock")
    link = tmp_path / "vu.sock"
    link.symlink_to(backend.path)
    with pytest.raises(VhostUserError, match="symbolic link") as caught:
        Connection.connect(str(link), what="probe", timeout=1.0)
    assert caught.value.errno == errno.ELOOP
    # nor a symlink as the socket's directory
    (tmp_path / "dirlink").symlink_to(tmp_path)
    with pytest.raises(VhostUserError, match="symbolic link"):
        Connection.connect(str(tmp_path / "dirlink" / "real.sock"), what="probe", timeout=1.0)


@pytest.mark.parametrize(
    ("mode", "owner", "refused"),
    [
        (0o777, "root", "writable by others"),
        (0o775, "root", "writable by its group"),
        (0o1777, "nobody", "owned by uid"),
        (0o755, "nobody", "owned by uid"),
        (0o1777, "root", None),
    ],
    ids=["world-writable", "group-writable", "sticky-but-foreign", "foreign", "sticky-ours"],
)
def test_sockets_in_directories_others_can_change_are_refused(
    tmp_path: Path, fake: type[Fake], mode: int, owner: str, refused: str | None
) -> None:
    uid = nobody() if owner == "nobody" else 0
    directory = tmp_path / "shared"
    directory.mkdir()
    backend = fake(directory / "vu.sock")
    os.chown(directory, uid, uid)
    os.chmod(directory, mode)
    if refused is None:
        Connection.connect(str(backend.path), what="probe", timeout=GUARD).close()
        return
    with pytest.raises(VhostUserError, match=refused) as caught:
        Connection.connect(str(backend.path), what="probe", timeout=1.0)
    assert caught.value.errno == errno.EACCES


def test_a_missing_socket_fails_at_once(tmp_path: Path) -> None:
    """No retry window in which another user could create the path."""
    start = time.monotonic()
    with pytest.raises(VhostUserError, match="does not wait for the path to appear") as caught:
        Connection.connect(str(tmp_path / "none.sock"), what="probe", timeout=600.0)
    assert caught.value.errno == errno.ENOENT
    print(f"missing socket reported after {time.monotonic() - start:.4f} s (timeout 600 s)")


# -- waits ------------------------------------------------------------------------


def test_a_full_backlog_is_a_timeout_not_a_hang(tmp_path: Path) -> None:
    """A listener that never accepts, its backlog full: a blocking connect(2)
    would wait forever; the connect is non-blocking under the deadline."""
    path = tmp_path / "full.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued: list[socket.socket] = []
    outcome: list[BaseException] = []
    try:
        listener.bind(str(path))
        listener.listen(0)
        while True:  # fill the backlog
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.setblocking(False)
            queued.append(probe)
            try:
                probe.connect(str(path))
            except BlockingIOError:
                break

        def connect() -> None:
            try:
                Connection.connect(str(path), what="probe", timeout=0.2).close()
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=connect)
        thread.start()
        thread.join(GUARD)
        hung = thread.is_alive()
    finally:
        listener.close()  # wakes a connect that blocked
        for probe in queued:
            probe.close()
    if hung:
        thread.join()
    assert not hung, "connect blocked past its deadline"
    assert len(outcome) == 1 and isinstance(outcome[0], BackendTimeoutError), outcome
    assert "backlog is full" in outcome[0].message


# -- a back-end that corrupts the ring --------------------------------------------


def test_a_corrupt_used_ring_is_a_problem_not_a_dead_thread(
    tmp_path: Path, fake: type[Fake], token: irqbypass.Eventfd
) -> None:
    backend = fake(tmp_path / "vu.sock", "--corrupt")
    died: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = died.append
    try:
        producer = VhostUserProducer(
            token=token, socket=str(backend.path), name="vq0", requests=5, rate=1000.0
        )
        producer.open()
        try:
            backend.expect("corrupted")
            wait_for(lambda: producer.finished, "the producer to finish")
            assert producer.problem is not None
            assert "corrupted the used ring" in producer.problem
            assert producer.stats()["backend_lost"] == 1
        finally:
            with pytest.raises(ProtocolError, match="corrupted the used ring"):
                producer.close()
    finally:
        threading.excepthook = previous
    assert died == [], "the feeder thread died of a raw exception"


def test_a_used_index_beyond_what_was_given_is_refused(
    tmp_path: Path, fake: type[Fake], token: irqbypass.Eventfd
) -> None:
    backend = fake(tmp_path / "vu.sock")
    with VhostUserProducer(token=token, socket=str(backend.path), name="vq0") as producer:
        assert producer.ring is not None and producer.memory is not None
        ring = producer.ring
        used_idx = ring.used_gpa - producer.memory.guest_addr + 2
        producer.memory.view[used_idx : used_idx + 2] = (60000).to_bytes(2, "little")
        used_ring = r"60000 \(from 0\) with the available index at 0: 60000 chains returned"
        entries = r"entries from 0, as \(head, length\): \[\(0, 0\),"
        with pytest.raises(ProtocolError, match=f"{used_ring}, more than the 0 .*{entries}"):
            producer.reap()
        assert producer.problem is not None
        with contextlib.suppress(ProtocolError):
            producer.close()


# -- Ctrl-C is never deferred behind a back-end ------------------------------------


def main_thread_interrupted_once(blocked_in: str | None, when: Fake | None) -> threading.Thread:
    """A thread that sends SIGINT to the main thread once ``when`` reports a
    stall (or once the main thread's stack shows ``blocked_in``)."""
    main = threading.main_thread().ident
    assert main is not None

    def run() -> None:
        if when is not None:
            when.expect("stalled")
        if blocked_in is not None:
            deadline = time.monotonic() + GUARD
            while time.monotonic() < deadline:
                frame = sys._current_frames().get(main)
                names = []
                while frame is not None:
                    names.append(frame.f_code.co_name)
                    frame = frame.f_back
                if blocked_in in names:
                    break
                time.sleep(0.01)
        sent.append(time.monotonic())
        signal.pthread_kill(main, signal.SIGINT)

    sent: list[float] = []
    thread = threading.Thread(target=run, daemon=True)
    thread.sent = sent  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.mark.usefixtures("guarded_sigint")
def test_ctrl_c_is_not_deferred_behind_a_stalled_set_vring_call(
    tmp_path: Path, fake: type[Fake], token: irqbypass.Eventfd
) -> None:
    """stop() swaps the call (SET_VRING_CALL, in a signal-safe section); the
    back-end never acks. The KeyboardInterrupt arrives while the back-end is
    still blocked (it is released only afterwards), not after the timeout."""
    backend = fake(tmp_path / "vu.sock", "--stall", "SET_VRING_CALL:3")
    producer = VhostUserProducer(token=token, socket=str(backend.path), name="vq0", timeout=60)
    producer.open()  # SET_VRING_CALL 1 (hold) and 2 (token)
    try:
        assert producer.submit(1) == 1  # in flight, so stop() must swap
        interrupter = main_thread_interrupted_once(None, backend)
        with pytest.raises(KeyboardInterrupt) as caught:
            producer.stop()
        arrived = time.monotonic()
        interrupter.join(GUARD)
        latency = arrived - interrupter.sent[0]  # type: ignore[attr-defined]
        print(f"Ctrl-C to KeyboardInterrupt with the back-end stalled: {latency * 1000:.1f} ms")
        assert backend.process.poll() is None  # still waiting for "go": it never answered
        assert not isinstance(caught.value.__context__, BackendTimeoutError)
        assert producer.problem is not None and "interrupted in the middle" in producer.problem
    finally:
        backend.go()
        with pytest.raises(ProtocolError, match="interrupted in the middle of VHOST_USER_SET"):
            producer.close()  # everything released (no_fd_leak); it says what was cut
    assert producer.connection is None and producer.stats()["bound"] == 0


@pytest.mark.usefixtures("guarded_sigint")
def test_ctrl_c_is_not_deferred_behind_a_drain_that_never_ends(
    tmp_path: Path, fake: type[Fake], token: irqbypass.Eventfd
) -> None:
    """close() drains in its signal-safe teardown; the back-end never returns
    the request. The Ctrl-C ends the drain and the teardown still finishes."""
    backend = fake(tmp_path / "vu.sock")
    producer = VhostUserProducer(
        token=token, socket=str(backend.path), name="vq0", timeout=60, drain_timeout=600
    )
    producer.open()
    assert producer.submit(1) == 1
    interrupter = main_thread_interrupted_once("_drain", None)
    with pytest.raises(KeyboardInterrupt):
        producer.close()
    arrived = time.monotonic()
    interrupter.join(GUARD)
    latency = arrived - interrupter.sent[0]  # type: ignore[attr-defined]
    print(f"Ctrl-C to KeyboardInterrupt in a never-ending drain: {latency * 1000:.1f} ms")
    assert producer.connection is None and producer.stats()["bound"] == 0
    assert producer.memory is None


def test_timeout_has_an_upper_bound(token: irqbypass.Eventfd) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"timeout must be 0\.\.3600"):
        VhostUserProducer(token=token, socket="/run/vu.sock", timeout=1e300)
