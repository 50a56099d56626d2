"""A back-end that answers nonsense, vanishes or stalls: clear errors, no hang.

The "back-end" is the other end of a socketpair; :func:`answer` makes it reply
once it has read the request (bytes waiting before a request are a protocol
error of their own).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_vhost_user import (
    BackendGoneError,
    BackendTimeoutError,
    Connection,
    ProtocolError,
    VhostUserError,
    VhostUserProducer,
)
from irqbypass_vhost_user import _wire as wire
from main_thread import main_thread_in

pytestmark = pytest.mark.usefixtures("no_fd_leak")

WHAT = "vhost-user producer 'vq0' (fake)"


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(ours, what=WHAT, timeout=0.3)
    try:
        yield conn, theirs
    finally:
        conn.close()
        theirs.close()


def reply(request: int, payload: bytes, flags: int = wire.Flag.VERSION | wire.Flag.REPLY) -> bytes:
    return struct.pack("=III", request, flags, len(payload)) + payload


class answer:
    """In a thread: read ``after`` bytes of request from ``backend``, then send
    ``data`` (with ``fds``; then shut the writing side with ``eof``).
    ``heard`` is what was read; :meth:`join` waits for the thread."""

    def __init__(
        self,
        backend: socket.socket,
        data: bytes,
        *,
        after: int = 12,
        fds: Sequence[int] = (),
        eof: bool = False,
    ) -> None:
        self.heard = b""
        self._thread = threading.Thread(target=self._run, args=(backend, data, after, fds, eof))
        self._thread.start()

    def _run(
        self, backend: socket.socket, data: bytes, after: int, fds: Sequence[int], eof: bool
    ) -> None:
        while len(self.heard) < after:
            chunk = backend.recv(after - len(self.heard))
            if not chunk:
                return
            self.heard += chunk
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        backend.sendmsg([data], ancillary if fds else [])
        if eof:
            backend.shutdown(socket.SHUT_WR)

    def join(self) -> None:
        self._thread.join(30.0)
        assert not self._thread.is_alive(), "the fake back-end never got its request"


def test_a_good_reply(pair: tuple[Connection, socket.socket]) -> None:
    conn, backend = pair
    answered = answer(backend, reply(1, struct.pack("=Q", 0x1_4000_0000)))
    assert wire.unpack_u64(conn.request(wire.Request.GET_FEATURES)) == 0x1_4000_0000
    answered.join()
    assert answered.heard == struct.pack("=III", 1, 1, 0)  # what it was asked


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (reply(15, struct.pack("=Q", 0)), "got VHOST_USER_GET_PROTOCOL_FEATURES"),
        (reply(1, struct.pack("=Q", 0), flags=1), "flags 0x1"),
        (reply(1, struct.pack("=Q", 0), flags=2 | 4), "flags 0x6"),
        (reply(1, struct.pack("=I", 0)), "4-byte payload, the protocol says 8"),
    ],
    ids=["wrong-request", "no-reply-flag", "wrong-version", "wrong-size"],
)
def test_malformed_replies_are_protocol_errors(
    pair: tuple[Connection, socket.socket], data: bytes, complaint: str
) -> None:
    conn, backend = pair
    answered = answer(backend, data)
    with pytest.raises(ProtocolError, match=complaint) as caught:
        conn.request(wire.Request.GET_FEATURES)
    answered.join()
    assert caught.value.errno == errno.EPROTO
    assert isinstance(caught.value, irqbypass.IrqBypassError)
    assert "vq0" in caught.value.message
    # the stream cannot be trusted any more: the next request fails at once
    with pytest.raises(ProtocolError, match="unusable since"):
        conn.request(wire.Request.GET_FEATURES)


def test_a_reply_carrying_fds_is_refused_and_the_fds_closed(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, backend = pair
    extra = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        answered = answer(backend, reply(1, struct.pack("=Q", 0)), fds=[extra])
        with pytest.raises(ProtocolError, match="carried 1 file descriptor"):
            conn.request(wire.Request.GET_FEATURES)
        answered.join()
    finally:
        os.close(extra)
    # no_fd_leak: the received copy was closed


def test_eof_is_backend_gone(pair: tuple[Connection, socket.socket]) -> None:
    conn, backend = pair
    answered = answer(backend, reply(1, b"")[:6], eof=True)  # half a header, then EOF
    with pytest.raises(BackendGoneError, match=r"closed the connection \(EOF\)") as caught:
        conn.request(wire.Request.GET_FEATURES)
    answered.join()
    assert caught.value.errno == errno.EPIPE
    assert "restart the back-end" in caught.value.message
    assert not conn.alive()


def test_a_send_to_a_dead_backend_is_epipe(pair: tuple[Connection, socket.socket]) -> None:
    conn, backend = pair
    backend.close()
    with pytest.raises(BackendGoneError) as caught:
        conn.request(wire.Request.SET_OWNER)
    assert caught.value.errno in (errno.EPIPE, errno.ECONNRESET)


def test_silence_is_a_timeout_not_a_hang(pair: tuple[Connection, socket.socket]) -> None:
    conn, _backend = pair
    with pytest.raises(BackendTimeoutError, match="did not answer VHOST_USER_GET_FEATURES") as c:
        conn.request(wire.Request.GET_FEATURES)
    assert c.value.errno == errno.ETIMEDOUT
    assert "serves another front-end" in c.value.message


def test_sync_without_reply_ack_is_a_get_features_round_trip(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, backend = pair
    answered = answer(backend, reply(1, struct.pack("=Q", 0)), after=20 + 12)
    conn.request(wire.Request.SET_VRING_NUM, wire.pack_vring_state(0, 8), sync=True)
    answered.join()
    sent = answered.heard
    assert sent == struct.pack("=IIIII", 8, 1, 8, 0, 8) + struct.pack("=III", 1, 1, 0)


def test_sync_with_reply_ack_sets_need_reply_and_reads_the_status(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, backend = pair
    conn.reply_ack = True
    answered = answer(backend, reply(8, struct.pack("=Q", 0)), after=20)
    conn.request(wire.Request.SET_VRING_NUM, wire.pack_vring_state(0, 8), sync=True)
    answered.join()
    assert answered.heard[:12] == struct.pack("=III", 8, 1 | 8, 8)
    answered = answer(backend, reply(8, struct.pack("=Q", 1)), after=20)
    with pytest.raises(VhostUserError, match="refused VHOST_USER_SET_VRING_NUM"):
        conn.request(wire.Request.SET_VRING_NUM, wire.pack_vring_state(0, 8), sync=True)
    answered.join()


def test_fds_go_as_scm_rights(pair: tuple[Connection, socket.socket]) -> None:
    conn, backend = pair
    with irqbypass.Eventfd() as call:
        conn.request(
            wire.Request.SET_VRING_CALL, wire.pack_vring_file(0, has_fd=True), [call.fileno()]
        )
        data, anc, _flags, _addr = backend.recvmsg(64, socket.CMSG_SPACE(4))
        assert data == struct.pack("=IIIQ", 13, 1, 8, 0)
        ((level, kind, raw),) = anc
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        received = array.array("i", raw)[0]
        try:
            os.write(received, struct.pack("=Q", 1))
            assert call.read(0) == 1  # the same eventfd
        finally:
            os.close(received)


def test_a_handed_fd_must_be_a_unix_stream_socket(tmp_path: object) -> None:
    with (
        irqbypass.Eventfd() as not_a_socket,
        pytest.raises(VhostUserError, match="is not a vhost-user connection"),
    ):
        Connection.from_fd(not_a_socket.fileno(), what=WHAT)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(VhostUserError, match="not the UNIX stream socket"):
            Connection.from_fd(udp.fileno(), what=WHAT)
        assert udp.fileno() >= 0  # refused, not taken
    finally:
        udp.close()


def test_a_handed_connection_is_borrowed() -> None:
    ours, theirs = socket.socketpair()
    try:
        conn = Connection.from_fd(ours.fileno(), what=WHAT)
        conn.close()
        os.fstat(ours.fileno())  # still open: the VMM's
        assert not conn.alive()
    finally:
        ours.close()
        theirs.close()


def test_connecting_to_nothing_says_what_to_start(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "none.sock")
    with pytest.raises(BackendGoneError, match="start the back-end first") as caught:
        Connection.connect(path, what=WHAT, timeout=0.05)
    assert caught.value.errno == errno.ENOENT


def test_ctrl_c_in_the_middle_of_a_message_breaks_the_connection(
    pair: tuple[Connection, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _backend = pair

    def interrupted(n: int, name: str, deadline: float) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(conn, "_read_exact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        conn.request(wire.Request.GET_FEATURES)
    monkeypatch.undo()
    # the reply may still arrive: the stream is no longer trusted
    with pytest.raises(ProtocolError, match="interrupted in the middle of VHOST_USER_GET_FEATURES"):
        conn.request(wire.Request.GET_FEATURES)


def test_bytes_waiting_before_a_request_are_a_protocol_error(
    pair: tuple[Connection, socket.socket],
) -> None:
    """Issue 20: a back-end that answers before it is asked was believed, and
    every later synchronous swap was one reply behind."""
    conn, backend = pair
    backend.send(reply(1, struct.pack("=Q", 0)))  # an answer nobody asked for
    with pytest.raises(ProtocolError, match="were waiting before VHOST_USER_GET_FEATURES"):
        conn.request(wire.Request.GET_FEATURES)
    with pytest.raises(ProtocolError, match="unusable since"):
        conn.request(wire.Request.GET_FEATURES)


def test_one_deadline_for_the_whole_reply(pair: tuple[Connection, socket.socket]) -> None:
    """Issue 20: the header and the payload each had a deadline of their own,
    so a back-end answering each just in time stretched a request to a
    multiple of ``timeout``. Here the header comes at 0.7 x timeout and the
    payload at 1.4 x timeout after the request: past the one deadline."""
    conn, backend = pair
    conn.timeout = 0.5
    done = threading.Event()

    def just_in_time() -> None:
        backend.recv(12)  # the request
        if done.wait(0.35):
            return
        backend.send(reply(1, struct.pack("=Q", 0))[:12])
        if done.wait(0.35):
            return
        with contextlib.suppress(OSError):
            backend.send(struct.pack("=Q", 0))

    thread = threading.Thread(target=just_in_time)
    thread.start()
    try:
        with pytest.raises(BackendTimeoutError, match="did not answer VHOST_USER_GET_FEATURES"):
            conn.request(wire.Request.GET_FEATURES)
    finally:
        done.set()
        thread.join(30.0)


@pytest.mark.parametrize("fds", ["one-fd", "dup"])
def test_producers_handed_one_connection_share_its_break(fds: str) -> None:
    """A reply that breaks the stream for one producer breaks it for the other
    on the same socket too: its request fails at once, and nothing is sent."""
    ours, backend = socket.socketpair()
    second = ours.fileno() if fds == "one-fd" else os.dup(ours.fileno())
    try:
        with irqbypass.Eventfd() as token0, irqbypass.Eventfd() as token1:
            first, other = (
                VhostUserProducer(
                    token=token, connection=fd, queue=queue, reply_ack=True, timeout=1.0
                )
                for token, fd, queue in ((token0, ours.fileno(), 0), (token1, second, 1))
            )
            set_call = wire.Request.SET_VRING_CALL
            for producer in (first, other):  # each open's SET_VRING_CALL (20 bytes), acked
                answered = answer(backend, reply(set_call, struct.pack("=Q", 0)), after=20)
                producer.open()
                answered.join()
            try:
                # the stop's SET_VRING_CALL answered as if it were GET_FEATURES
                answered = answer(backend, reply(1, struct.pack("=Q", 0)), after=20)
                with pytest.raises(ProtocolError, match="got VHOST_USER_GET_FEATURES"):
                    first.stop()
                answered.join()
                with pytest.raises(ProtocolError, match="unusable since"):
                    other.stop()
                with pytest.raises(BlockingIOError):
                    backend.recv(1, socket.MSG_DONTWAIT)  # the second was never sent
            finally:
                for producer in (first, other):  # each says the break again, and releases all
                    with contextlib.suppress(ProtocolError):
                        producer.close()
    finally:
        if second != ours.fileno():
            os.close(second)
        ours.close()
        backend.close()


@pytest.mark.usefixtures("guarded_sigint")
def test_ctrl_c_ends_a_wait_for_the_turn_and_takes_nothing(
    pair: tuple[Connection, socket.socket],
) -> None:
    """Another connection to the socket waits on a stalled back-end with the
    turn; a Ctrl-C ends this one's wait for it, in a signal-safe section as a
    producer's stop() is, at once (a plain lock there waits deaf until the
    other's timeout), and leaves neither the turn taken nor the stream broken."""
    first, backend = pair
    first.timeout = 60.0
    other = Connection.from_fd(first.fileno(), what="vhost-user producer 'vq1' (fake)")
    other.turns = first.turns

    @irqbypass.plugin.uninterrupted
    def swap() -> bytes:
        return other.request(wire.Request.GET_FEATURES)

    try:
        asked = threading.Thread(target=first.request, args=(wire.Request.GET_FEATURES,))
        asked.start()
        assert backend.recv(12) == struct.pack("=III", 1, 1, 0)  # first has the turn, stalled

        def interrupt() -> None:
            while not main_thread_in(lambda frame: frame.f_locals.get("self") is other):
                time.sleep(0.001)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            swap()
        interrupter.join()
        assert asked.is_alive()  # the back-end still has not answered the first
        backend.sendall(reply(1, struct.pack("=Q", 0)))
        asked.join(30.0)
        assert not asked.is_alive() and first.broken is None
        answered = answer(backend, reply(1, struct.pack("=Q", 7)))
        assert wire.unpack_u64(other.request(wire.Request.GET_FEATURES)) == 7
        answered.join()
    finally:
        other.close()
