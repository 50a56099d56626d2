"""Eventfd: ownership, counting, and token identity by the kernel object."""

from __future__ import annotations

import errno
import os
import socket
import warnings
from pathlib import Path

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass import _eventfd

pytestmark = pytest.mark.usefixtures("no_fd_leak")


def test_write_read_counts() -> None:
    with irqbypass.Eventfd() as efd:
        efd.write()
        efd.write(4)
        assert efd.read(0) == 5
        assert efd.read(0) == 0
        assert efd.read(0.01) == 0


def test_dup_is_the_same_token() -> None:
    with irqbypass.Eventfd() as a, a.dup() as b, irqbypass.Eventfd() as c:
        assert a.fileno() != b.fileno()
        assert a == b and hash(a) == hash(b)
        assert a != c
        assert a.kernel_id is not None and a.kernel_id == b.kernel_id
        b.write(2)
        assert a.read(0) == 2


def test_fd_received_from_another_process_is_the_same_token() -> None:
    """SCM_RIGHTS hands over a new fd of the same eventfd."""
    with irqbypass.Eventfd() as efd:
        left, right = socket.socketpair(socket.AF_UNIX)
        with left, right:
            pid = os.fork()
            if pid == 0:  # the child sends the fd back and exits
                socket.send_fds(right, [b"x"], [efd.fileno()])
                os._exit(0)
            _, fds, _, _ = socket.recv_fds(left, 1, 1)
            os.waitpid(pid, 0)
        with irqbypass.Eventfd.from_fd(fds[0], owned=True) as received:
            assert received.fileno() != efd.fileno()
            assert received == efd


def test_borrowed_fd_is_not_closed() -> None:
    fd = os.eventfd(0)
    try:
        borrowed = irqbypass.Eventfd.from_fd(fd)
        borrowed.close()
        assert borrowed.closed
        os.fstat(fd)  # still open: the caller owns it
    finally:
        os.close(fd)


def test_keep_open_holds_the_fd_number_through_a_close_until_let_go() -> None:
    """What a kernel object bound to the fd (an irqfd) needs to undo itself when
    its owner closes the Eventfd first: the number stays open for on_close."""
    seen: list[str] = []
    efd = irqbypass.Eventfd()

    def on_close() -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))  # still open here
        efd.let_go(on_close)

    fd = efd.keep_open(on_close)
    assert fd == efd.fileno()
    efd.close()
    assert seen == ["anon_inode:[eventfd]"]
    assert not os.path.exists(f"/proc/self/fd/{fd}")  # let go: closed
    efd.let_go(on_close)  # idempotent
    with pytest.raises(irqbypass.EventfdClosedError):
        efd.keep_open(on_close)
    with irqbypass.Eventfd() as other:  # let go before the close: nothing is called

        def not_called() -> None:
            seen.append("called")

        assert other.keep_open(not_called) == other.fileno()
        other.let_go(not_called)
    assert seen == ["anon_inode:[eventfd]"]


def test_from_fd_refuses_non_eventfds() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(irqbypass.InvalidEndpointError, match="not an eventfd") as info:
            irqbypass.Eventfd.from_fd(r)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(irqbypass.InvalidEndpointError, match="not open") as closed:
        irqbypass.Eventfd.from_fd(w)
    assert closed.value.errno == errno.EBADF


def test_closed_eventfd_keeps_its_identity_and_refuses_io() -> None:
    efd = irqbypass.Eventfd()
    before = hash(efd)
    efd.close()
    efd.close()  # idempotent
    assert hash(efd) == before
    with pytest.raises(ValueError, match="closed"):
        efd.write()


def test_unclosed_eventfd_warns() -> None:
    efd = irqbypass.Eventfd()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del efd
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


def test_holding_eventfd_catches_and_replays_exactly_once() -> None:
    hold = irqbypass.plugin.HoldingEventfd()
    with irqbypass.Eventfd() as token:
        assert hold.replay(token) == 0, "nothing opened, nothing held"
        os.write(hold.fileno(), (3).to_bytes(8, "little"))  # the device signals it
        assert hold.replay(token) == 3 and token.read(0) == 3
        assert hold.replay(token) == 0, "replayed once, not twice"
        os.write(hold.fileno(), (2).to_bytes(8, "little"))
        hold.close()
        hold.close()
        assert (hold.held, hold.replayed) == (3, 3), "what a close drops is not counted"
        os.write(hold.fileno(), (4).to_bytes(8, "little"))  # a new eventfd after close
        closed = irqbypass.Eventfd()
        closed.close()
        assert hold.replay(closed) == 4
        assert (hold.held, hold.replayed) == (7, 3), "held but nowhere to replay"
        hold.close()


def test_fdinfo_fields_are_found_at_the_start_of_a_line_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The identity and the eventfd check read one field each by a search
    (issue 31: splitting every line cost 1.4 us of each Eventfd made, 0.4 now)."""
    monkeypatch.setattr(_eventfd, "_FDINFO", str(tmp_path / "{}"))
    (tmp_path / "1").write_bytes(
        b"pos:\t0\nflags:\t02000002\neventfd-count:   7\neventfd-id: 392\nxeventfd-id: 5"
    )
    assert _eventfd._fdinfo_field(1, _eventfd._EVENTFD_ID) == "392"
    assert _eventfd._fdinfo_field(1, _eventfd._EVENTFD_COUNT) == "7"
    (tmp_path / "2").write_bytes(b"pos:\t0\neventfd-id: 12")  # the last line, without its newline
    assert _eventfd._fdinfo_field(2, _eventfd._EVENTFD_ID) == "12"
    (tmp_path / "3").write_bytes(b"eventfd-id: 3\n")  # the first line
    assert _eventfd._fdinfo_field(3, _eventfd._EVENTFD_ID) == "3"
    for fd, missing in enumerate((b"", b"pos:\t0\nxeventfd-id: 5\n", b"eventfd-idx: 5\n"), 4):
        (tmp_path / str(fd)).write_bytes(missing)
        assert _eventfd._fdinfo_field(fd, _eventfd._EVENTFD_ID) is None
    assert _eventfd._fdinfo_field(99, _eventfd._EVENTFD_ID) is None, "no fdinfo to read"


def test_without_an_eventfd_id_the_identity_is_the_fd_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_eventfd, "_EVENTFD_ID", b"\nno-such-field:")  # a kernel before 6.2
    with irqbypass.Eventfd() as efd:
        assert efd.kernel_id is None and efd._identity == ("fd", efd.fileno())


def test_a_read_that_cannot_wait_never_waits_whatever_a_sharer_does() -> None:
    """read(0) of an Eventfd made here is the loop readers' read, done under
    the Eventfd's guard because it "cannot wait". Another holder of its open
    file description (a vhost-user back-end given the token as its call fd,
    over SCM_RIGHTS) can clear O_NONBLOCK on it (fcntl F_SETFL): then an empty
    counter made that read wait for the next signal, in the loop's one thread
    or in a consumer's uninterrupted close (the logging consumer's last look:
    Ctrl-C deferred for good). Now it never waits: 0, as when nothing came."""
    import fcntl
    import threading

    with irqbypass.Eventfd() as efd:
        peer = os.dup(efd.fileno())  # the same open file description, as SCM_RIGHTS gives
        try:
            fcntl.fcntl(peer, fcntl.F_SETFL, fcntl.fcntl(peer, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            got: list[int] = []
            worker = threading.Thread(target=lambda: got.append(efd.read(0)))
            worker.start()
            worker.join(120)  # a hang guard only: the read must not wait at all
            waited = worker.is_alive()
            if waited:
                os.eventfd_write(peer, 5)  # what the read waited for: it ends
                worker.join()
            assert not waited, "read(0) waited for a signal"
            assert got == [0]
            os.eventfd_write(peer, 3)
            assert efd.read(0) == 3
        finally:
            os.close(peer)
