"""Posted-interrupt descriptor files another user planted, a FIFO, a link, a
stale file of a killed run, and Ctrl-C in the teardown (issue 20); a file that
is not ours at the path (issue 32 item 1); a truncation by whoever may write
it (issue 32 item 13)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.plugin
import irqbypass.system
import pytest
from irqbypass_logging import LoggingConsumer
from irqbypass_mock import MockProducer
from irqbypass_posted import RECORD_SIZE, Port, PostedDescriptor, PostedInterruptConsumer


def nobody() -> int:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file another user owns (chown): run as root")
    return pwd.getpwnam("nobody").pw_uid


def planted(path: Path, *, mode: int, uid: int | None = None) -> None:
    """A descriptor file with the magic, as another process could make it."""
    with PostedDescriptor(file=str(path.with_suffix(".src"))):
        data = path.with_suffix(".src").read_bytes()
    path.write_bytes(data)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, uid)


def test_another_users_descriptor_file_is_refused(tmp_path: Path) -> None:
    uid = nobody()
    path = tmp_path / "pi0"
    planted(path, mode=0o666, uid=uid)
    with pytest.raises(irqbypass.system.UnsafePathError, match=f"owned by uid {uid}") as caught:
        PostedDescriptor.attach(str(path))
    assert caught.value.errno == errno.EACCES
    # nor is it reclaimed as stale: the creator is refused with the reason
    with pytest.raises(irqbypass.system.UnsafePathError, match=f"owned by uid {uid}"):
        PostedDescriptor(file=str(path))


def test_a_world_writable_descriptor_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    planted(path, mode=0o666)
    with pytest.raises(irqbypass.system.UnsafePathError, match="writable by group or others"):
        PostedDescriptor.attach(str(path))


def test_a_fifo_does_not_hang_attach(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    os.mkfifo(path, 0o600)
    with pytest.raises(irqbypass.system.UnsafePathError, match="not a regular file"):
        PostedDescriptor.attach(str(path))


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    with PostedDescriptor(file=str(tmp_path / "real")):
        (tmp_path / "pi0").symlink_to(tmp_path / "real")
        with pytest.raises(irqbypass.system.UnsafePathError, match="symbolic link"):
            PostedDescriptor.attach(str(tmp_path / "pi0"))


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(irqbypass.system.UnsafePathError, match="writable by others"):
        PostedDescriptor(file=str(shared / "pi0"))
    assert not (shared / "pi0").exists()


KILLED = """
import os, signal, sys
from irqbypass_posted import PostedDescriptor
d = PostedDescriptor(file=sys.argv[1])
d.post(40)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_file_left_by_a_killed_run_is_reclaimed_with_a_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pi0"
    killed = subprocess.run([sys.executable, "-c", KILLED, str(path)], check=False)
    assert killed.returncode == -signal.SIGKILL and path.exists()
    with (
        caplog.at_level(logging.WARNING, logger="irqbypass.posted"),
        PostedDescriptor(file=str(path)) as descriptor,
    ):
        assert descriptor.sync().posts == {}  # nothing of the dead run survives
        assert path.stat().st_size == RECORD_SIZE
    assert not path.exists()
    assert any(
        "reclaimed" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records
    )


def test_a_file_in_use_is_not_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    with PostedDescriptor(file=str(path)):
        with pytest.raises(irqbypass.DeviceError, match="in use") as caught:
            PostedDescriptor(file=str(path))
        assert caught.value.errno == errno.EEXIST
    # a creator gone (its record left, unlocked) while an attacher still maps its
    # memory: the record is reclaimed, and the attacher keeps the memory it had
    holder = PostedDescriptor(file=str(path))
    attached = PostedDescriptor.attach(str(path))
    holder._drop_record()  # the creator "dies" without removing its record
    holder.close()
    try:
        with PostedDescriptor(file=str(path)) as successor:
            attached.post(40)
            assert attached.sync().posts == {40: 1}
            assert successor.counters()["posted"] == 0  # a new memory, not the old one
    finally:
        attached.close()
    assert not path.exists()


# What a typo or a hostile topology can name as `file` (issue 32 item 1): before
# the fix each was truncated to 8192 bytes, rewritten, and deleted at close.
NOT_OURS = {
    "a text file": b"root:x:0:0:root:/root:/bin/bash\n",
    "empty": b"",
    "record-sized without the magic": bytes(RECORD_SIZE),
    "the magic but the wrong size": b"IRQBPIR1" + bytes(RECORD_SIZE),
    "a descriptor of the old layout": bytes(64) + b"IRQBPID1" + bytes(8192 - 72),
}


@pytest.mark.parametrize("content", NOT_OURS.values(), ids=list(NOT_OURS))
def test_a_file_that_is_not_a_record_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(content)
    os.chmod(path, 0o644)
    before = path.stat()
    with pytest.raises(irqbypass.DeviceError, match="not a posted-interrupt descriptor") as caught:
        PostedDescriptor(file=str(path))
    assert caught.value.errno == errno.EEXIST
    with irqbypass.Eventfd() as token:  # nor through the consumer, and its close removes nothing
        consumer = PostedInterruptConsumer(token=token, file=str(path))
        with pytest.raises(irqbypass.DeviceError, match="not a posted-interrupt descriptor"):
            consumer.open()
        consumer.close()
    after = path.stat()
    assert path.read_bytes() == content
    assert (after.st_mode, after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


@pytest.mark.parametrize("content", NOT_OURS.values(), ids=list(NOT_OURS))
def test_check_notices_a_file_that_is_not_a_record(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(content)
    spec = irqbypass.plugin.EndpointSpec(
        name="c", kind="posted-interrupt", side="consumer", token="t", options={"file": str(path)}
    )
    with pytest.raises(irqbypass.ConfigError, match="not a posted-interrupt descriptor record"):
        PostedInterruptConsumer.from_spec(spec)
    assert path.read_bytes() == content


def test_check_accepts_a_free_path_and_a_record(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    spec = irqbypass.plugin.EndpointSpec(
        name="c", kind="posted-interrupt", side="consumer", token="t", options={"file": str(path)}
    )
    PostedInterruptConsumer.from_spec(spec)  # nothing there yet: open creates it
    with PostedDescriptor(file=str(path)):
        PostedInterruptConsumer.from_spec(spec)  # a record (open says whether it is in use)
    assert not path.exists()  # check created nothing


def test_check_notices_a_directory_others_can_change(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    spec = irqbypass.plugin.EndpointSpec(
        name="c",
        kind="posted-interrupt",
        side="consumer",
        token="t",
        options={"file": str(shared / "pi0")},
    )
    with pytest.raises(irqbypass.ConfigError, match="writable by others"):
        PostedInterruptConsumer.from_spec(spec)


def test_a_record_replaced_while_in_use_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    with PostedDescriptor(file=str(path)):
        path.unlink()
        path.write_bytes(b"someone else's\n")
    assert path.read_bytes() == b"someone else's\n"


# Issue 32 item 13: whoever may write the file truncates it. Before the fix the
# file was the mapping, and the next post died of SIGBUS (run in a child so that
# the old code's death fails this test instead of killing pytest).
TRUNCATE = """
import os, sys
from irqbypass_posted import PostedDescriptor
path = sys.argv[1]
with PostedDescriptor(file=path) as d, PostedDescriptor.attach(path) as a:
    d.post(40)
    os.truncate(path, 0)                      # the owner, or root, truncates the file
    refused = []
    for fd in (a._fd, d._fd):                 # an attacher (or the creator) its memory
        try:
            os.ftruncate(fd, 0)
        except OSError as exc:
            refused.append(exc.errno)
    again = os.open(f"/proc/{os.getpid()}/fd/{a._fd}", os.O_RDWR)  # a fresh open of it
    try:
        os.ftruncate(again, 0)
    except OSError as exc:
        refused.append(exc.errno)
    finally:
        os.close(again)
    d.post(41)
    a.post(42)
    print(refused, sorted(a.sync().posts.items()), d.counters()["posts_drained"])
"""


def test_truncating_the_descriptor_does_not_kill_the_vmm(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    child = subprocess.run(
        [sys.executable, "-c", TRUNCATE, str(path)], capture_output=True, text=True, check=False
    )
    assert child.returncode == 0, f"died: {child.returncode} {child.stderr[-2000:]}"
    assert child.stdout.split("\n")[0] == f"{[errno.EPERM] * 3} [(40, 1), (41, 1), (42, 1)] 3"
    assert not path.exists()


def test_attach_refuses_memory_that_is_not_sealed(tmp_path: Path) -> None:
    """A record naming an unsealed memfd (which a truncation could pull from
    under the mapping) is refused before anything is mapped."""
    import struct

    memfd = os.memfd_create("irqbypass-posted", os.MFD_CLOEXEC)
    try:
        os.ftruncate(memfd, 8192)
        path = tmp_path / "pi0"
        record = struct.pack("<8sQQQ16s16x", b"IRQBPIR1", 8192, os.getpid(), memfd, bytes(16))
        path.write_bytes(record)
        os.chmod(path, 0o600)
        with pytest.raises(irqbypass.system.UnsafePathError, match="not sealed") as caught:
            PostedDescriptor.attach(str(path))
        assert caught.value.errno == errno.EPERM
    finally:
        os.close(memfd)


@pytest.mark.usefixtures("guarded_sigint")
@pytest.mark.parametrize("signals", [1, 2], ids=["one-sigint", "two-sigints"])
def test_ctrl_c_in_the_consumers_close_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signals: int
) -> None:
    """A SIGINT as the drainer is cancelled (and, with two, a first one
    as the posting path is withdrawn): the file is removed all the same."""
    path = tmp_path / "pi0"
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, file=str(path), drain=True)
        consumer.open()
        assert path.exists()
        drainer = consumer._drainer
        assert drainer is not None
        handle_class = type(drainer)
        real_cancel = handle_class.cancel

        def cancel_then_interrupt(handle: irqbypass.plugin.LoopHandle) -> None:
            real_cancel(handle)
            signal.raise_signal(signal.SIGINT)  # handled as this call returns

        monkeypatch.setattr(handle_class, "cancel", cancel_then_interrupt)
        if signals == 2:
            real_detach = consumer._detach

            def detach_then_interrupt(partner: irqbypass.Producer) -> None:
                real_detach(partner)
                signal.raise_signal(signal.SIGINT)

            monkeypatch.setattr(consumer, "_detach", detach_then_interrupt)
            consumer._partner = irqbypass.Producer(token=token, name="p")
        with pytest.raises(KeyboardInterrupt):
            consumer.close()
        assert not path.exists(), "the descriptor file was left behind"
        assert consumer.descriptor is None


PEER_HOLDS_THE_FILE_LOCK = r"""
import fcntl, sys
from irqbypass_posted import PostedDescriptor

with PostedDescriptor.attach(sys.argv[1]) as peer:
    fcntl.flock(peer._fd, fcntl.LOCK_EX)  # a vCPU process stopped inside its sync
    print("locked", flush=True)
    sys.stdin.read()  # until the test lets go
"""


@pytest.mark.usefixtures("guarded_sigint")
def test_ctrl_c_ends_a_close_waiting_for_a_peers_file_lock(tmp_path: Path) -> None:
    """An attacher (another process) may hold the memory's flock as long as it
    likes: a Ctrl-C must end the consumer's close, which is uninterrupted, and
    the close must still remove the file and let go of the descriptor."""
    path = tmp_path / "pi0"
    main = threading.get_ident()
    done = threading.Event()
    released: list[bool] = []
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, file=str(path))
        consumer.open()
        peer = subprocess.Popen(
            [sys.executable, "-c", PEER_HOLDS_THE_FILE_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert peer.stdin is not None and peer.stdout is not None
        try:
            assert peer.stdout.readline() == "locked\n"

            def interrupt_until_done() -> None:
                # SIGINT now and then until the close is over; the hang guard:
                # the peer lets go after 60 s, so a deaf close ends, and fails
                for _ in range(600):
                    if done.wait(0.1):
                        return
                    signal.pthread_kill(main, signal.SIGINT)
                released.append(True)
                peer.stdin.close()  # type: ignore[union-attr]

            helper = threading.Thread(target=interrupt_until_done)
            helper.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    consumer.close()
                assert not released, "the close waited for the peer, deaf to Ctrl-C"
            finally:
                done.set()
                helper.join()
            assert consumer.descriptor is None
            assert not path.exists(), "the descriptor file was left behind"
        finally:
            if not peer.stdin.closed:
                peer.stdin.close()
            peer.wait(timeout=60)
            peer.stdout.close()


@pytest.mark.usefixtures("no_fd_leak")
@pytest.mark.parametrize("where", ["anonymous", "file", "file, drain"])
def test_running_out_of_fds_at_any_step_of_open_is_an_irqbypass_error(
    tmp_path: Path,
    where: str,
    open_under_each_fd_limit: Callable[..., Iterator[tuple[int, BaseException, Any]]],
) -> None:
    """Each step of open() that makes an fd (the memfd, the record, the
    notification eventfd, the directory walk) can meet RLIMIT_NOFILE: each time
    the error is an IrqBypassError (EMFILE; a DeviceError saying to raise the
    limit, unless the path walk's UnsafePathError names the directory), and
    nothing is left: no fd, no file; with enough fds the consumer opens."""
    path = tmp_path / "pi0"

    def make(token: irqbypass.Eventfd) -> PostedInterruptConsumer:
        return PostedInterruptConsumer(
            token=token,
            file=None if where == "anonymous" else str(path),
            drain=where.endswith("drain"),
        )

    for left, failure, consumer in open_under_each_fd_limit(make):
        assert isinstance(failure, irqbypass.IrqBypassError), f"{left} fds: {failure!r}"
        assert failure.errno == errno.EMFILE
        if not isinstance(failure, irqbypass.system.UnsafePathError):
            assert "ulimit -n" in str(failure), str(failure)
        assert consumer.descriptor is None
        assert not path.exists()


@pytest.mark.parametrize("side", ["create", "attach"])
def test_a_notification_eventfd_that_blocks_is_refused(side: str, tmp_path: Path) -> None:
    """The notification is written through libc holding Python's lock (no GIL
    ping-pong with the vCPU it wakes), safe only if the write cannot wait. A
    VMM's eventfd made without EFD_NONBLOCK was taken: once the process that
    shares it filled its counter (eventfd_write 0xfffffffffffffffe), the next
    post froze the whole process, every thread and Ctrl-C with it. Now
    refused when given, saying how to make it."""
    raw = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with irqbypass.Eventfd.from_fd(raw) as note:
            with pytest.raises(irqbypass.InvalidEndpointError) as info:
                if side == "create":
                    PostedDescriptor(notification=note).close()
                else:
                    with PostedDescriptor(file=str(tmp_path / "pi")):
                        PostedDescriptor.attach(str(tmp_path / "pi"), notification=note).close()
            assert "EFD_NONBLOCK" in info.value.message
            assert info.value.errno == errno.EINVAL
    finally:
        os.close(raw)
    nonblocking = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        with irqbypass.Eventfd.from_fd(nonblocking) as note, PostedDescriptor(notification=note):
            pass  # taken as before
    finally:
        os.close(nonblocking)


# -- a peer that keeps the file lock, and the process's one event loop ----------

TIMEOUT = 60.0  # only against hangs


@contextlib.contextmanager
def peer_holding_the_file_lock(path: Path) -> Iterator[PostedDescriptor]:
    """An attacher's own open file description of the memory, holding its flock
    (a vCPU process stopped inside its sync, or a hostile one) until the block ends."""
    with PostedDescriptor.attach(str(path)) as peer:
        fcntl.flock(peer._fd, fcntl.LOCK_EX)
        try:
            yield peer
        finally:
            fcntl.flock(peer._fd, fcntl.LOCK_UN)


def wait_while_the_loop_turns(condition: Callable[[], bool], *owners: str) -> None:
    """Wait for ``condition``; fail as soon as the loop's watchdog names a
    callback of one of ``owners`` as blocking the loop (its verdict, not a
    clock of this test's: the deadline is only against hangs)."""
    loop = irqbypass.event_loop()
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        blocked = [
            fault
            for fault in list(loop.faults)
            if fault.kind == "blocked" and any(owner in fault.owner for owner in owners)
        ]
        assert not blocked, f"the event loop waited for the peer: {blocked[0].message}"
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def waiting(descriptor: PostedDescriptor) -> tuple[int, int]:
    """Posts waiting for the peer's lock now, and the retries the loop made
    (read without the locks: the peer holds one)."""
    counters = descriptor.counters(wait=False)
    return counters.get("waiting_for_peer", 0), counters.get("lock_retries", 0)


@pytest.mark.parametrize("way", ["relay", "direct", "drainer"])
def test_a_peer_keeping_the_file_lock_does_not_stop_the_event_loop(
    tmp_path: Path, way: str
) -> None:
    """While a peer holds the memory's flock, a post made on the event loop (the
    relay reading the token, a producer's direct post from its loop timer) or
    the drainer's sync must not wait for it: the loop goes on serving every
    other endpoint (here a mock into a logging consumer); the posts wait,
    counted, and every one is made once the peer lets go."""
    path = tmp_path / f"pi-{way}"
    name = f"vcpu-{way}"
    signalled = 0 if way == "drainer" else 3
    with irqbypass.Eventfd() as token, irqbypass.Eventfd() as other_token:
        consumer = PostedInterruptConsumer(
            token=token, name=name, vector=40, file=str(path), drain=way == "drainer"
        )
        producer: irqbypass.Producer = (
            MockProducer(token=token, name=f"dev-{way}", irq=40, count=3, rate=0.0)
            if way == "direct"
            else irqbypass.Producer(token=token, name=f"dev-{way}", irq=40)  # declines: relayed
        )
        other = MockProducer(token=other_token, name=f"other-{way}", count=0)
        logged = LoggingConsumer(token=other_token, name=f"logged-{way}")
        mgr = irqbypass.Manager()
        with consumer, other, logged:
            mgr.register_consumer(logged)
            mgr.register_producer(other)
            mgr.register_consumer(consumer)
            descriptor = consumer.descriptor
            assert descriptor is not None and descriptor.notification is not None
            mgr.register_producer(producer)  # (pairing stops and starts: not under the peer)
            try:
                with peer_holding_the_file_lock(path):
                    if way == "direct":
                        assert isinstance(producer, MockProducer)
                        producer.open()  # its loop timer posts through the direct path
                    elif way == "relay":
                        token.write(signalled)
                    else:  # as a peer's post that notified: the drainer syncs
                        descriptor.notification.write(1)
                    other.fire(1)
                    wait_while_the_loop_turns(
                        lambda: (
                            logged.stats()["delivered"] == 1
                            and waiting(descriptor)[0] == signalled
                            and waiting(descriptor)[1] >= 1
                        ),
                        name,
                        f"dev-{way}",
                    )
                    assert descriptor.counters(wait=False)["posted"] == 0
                # made by the loop's timer once the peer let go (nothing here takes the locks)
                wait_while_the_loop_turns(
                    lambda: (
                        waiting(descriptor)[0] == 0
                        and descriptor.counters(wait=False)["syncs"] == (way == "drainer")
                    ),
                    name,
                    f"dev-{way}",
                )
                stats = consumer.stats()
                assert (stats["posted"], stats["notified"]) == (signalled, 1 if signalled else 0)
                if way == "drainer":
                    assert stats["syncs"] == 1  # the drain the notification asked for
                else:
                    assert descriptor.sync().posts == {40: signalled}
            finally:
                mgr.unregister_producer(producer)
                if isinstance(producer, MockProducer):
                    producer.close()
                mgr.unregister_consumer(consumer)
                mgr.unregister_producer(other)
                mgr.unregister_consumer(logged)
    assert not path.exists()


def relayed(
    token: irqbypass.Eventfd, path: Path, name: str, **options: Any
) -> tuple[PostedInterruptConsumer, irqbypass.Producer, irqbypass.Manager]:
    """An open file-backed consumer ``name`` (vector 40), paired with a producer
    that declines the direct path: what the token is signalled the loop relays."""
    consumer = PostedInterruptConsumer(token=token, name=name, file=str(path), **options)
    producer = irqbypass.Producer(token=token, name=f"dev-{name}", irq=40)
    mgr = irqbypass.Manager()
    consumer.open()
    mgr.register_consumer(consumer)
    mgr.register_producer(producer)
    return consumer, producer, mgr


@contextlib.contextmanager
def ctrl_c_until_the_end() -> Iterator[None]:
    """A SIGINT to this thread every 0.1 s until the block ends."""
    target, done = threading.get_ident(), threading.Event()

    def interrupt() -> None:
        while not done.wait(0.1):
            signal.pthread_kill(target, signal.SIGINT)

    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        yield
    finally:
        done.set()
        helper.join()


def retry_timers(path: Path) -> list[irqbypass.plugin.LoopHandle]:
    """The loop's timers that try the descriptor's file lock again."""
    owner = f"{path} lock=file> (waiting for a peer's file lock)"
    return [handle for handle in irqbypass.event_loop().handles() if owner in handle.owner]


@pytest.mark.parametrize(
    ("sn", "urgent", "notifies"),
    [(False, False, True), (True, False, False), (True, True, True)],
    ids=["sn-clear", "sn-set", "sn-set-urgent"],
)
def test_posts_kept_for_a_peer_are_all_made_once_it_lets_go(
    tmp_path: Path, sn: bool, urgent: bool, notifies: bool
) -> None:
    """Posts of three vectors made on the loop (a poster, post_many, post_port)
    while a peer holds the file lock: kept as counts behind one timer, tried
    again and again; once the peer lets go the timer makes every one, each
    vector's count exact, with the one notification the rule gives those posts
    (ON clear, and SN clear or one of them urgent), or none."""
    path = tmp_path / "pi0"
    loop = irqbypass.event_loop()
    with PostedDescriptor(file=str(path), sn=sn) as d:
        assert d.notification is not None
        poster = d.poster(Port(40))
        urgent_port = Port(42, urgent=urgent)
        returned: list[object] = []

        def post_on_the_loop() -> None:
            for _ in range(5):
                returned.append(poster())
            returned.append(d.post_many(41, 3))
            returned.append(d.post_port(urgent_port, 2))

        with peer_holding_the_file_lock(path):
            loop.call_later(0.0, post_on_the_loop, owner="test: posts on the loop")
            wait_while_the_loop_turns(
                lambda: waiting(d)[0] == 10 and waiting(d)[1] >= 3, "test: posts on the loop"
            )
            assert returned == [None] * 5 + [False, False]  # no notification yet
            assert len(retry_timers(path)) == 1, "one timer per descriptor, not per post"
            counters = d.counters(wait=False)
            assert (counters["posted"], counters["notified"], d.pir, d.on) == (0, 0, 0, False)
            assert counters["waited_for_peer"] == 10
        wait_while_the_loop_turns(lambda: waiting(d)[0] == 0, "waiting for a peer's")
        assert d.posted_per_vector() == {40: 5, 41: 3, 42: 2}
        assert d.counters()["notified"] == d.notification.read(0) == int(notifies)
        assert d.on == notifies and d.pir == 0b111 << 40
        assert d.sync().posts == {40: 5, 41: 3, 42: 2}
        assert retry_timers(path) == []


@pytest.mark.usefixtures("no_fd_leak", "guarded_sigint")
def test_ctrl_c_ends_a_close_while_posts_wait_for_a_peer(tmp_path: Path) -> None:
    """Closing while relayed posts wait for a peer that keeps the lock: the close
    waits for the peer (as any close does) until a Ctrl-C ends it; the retry
    timer is taken off the loop, the file removed, no fd or thread left, and the
    posts that never reached the descriptor are told in the last stats."""
    path = tmp_path / "pi0"
    with irqbypass.Eventfd() as token:
        consumer, producer, mgr = relayed(token, path, "vcpu-closing")
        descriptor = consumer.descriptor
        assert descriptor is not None
        with peer_holding_the_file_lock(path):
            token.write(3)
            wait_while_the_loop_turns(lambda: waiting(descriptor)[0] == 3, "vcpu-closing")
            assert len(retry_timers(path)) == 1
            with ctrl_c_until_the_end(), pytest.raises(KeyboardInterrupt):
                consumer.close()  # (the peer never lets go: without Ctrl-C, a hang)
            assert consumer.descriptor is None
            assert retry_timers(path) == []
        stats = consumer.stats()
        assert (stats["waiting_for_peer"], stats["waited_for_peer"], stats["posted"]) == (3, 3, 0)
        mgr.unregister_producer(producer)
        mgr.unregister_consumer(consumer)
    assert not path.exists()


@pytest.mark.usefixtures("no_fd_leak")
def test_a_close_makes_the_posts_that_waited_once_the_peer_lets_go(tmp_path: Path) -> None:
    """A close in another thread while posts wait for a peer: once the peer lets
    go (before or while the close waits for it), every post is made and counted
    in the last stats; the retry timer is gone."""
    path = tmp_path / "pi0"
    with irqbypass.Eventfd() as token:
        consumer, producer, mgr = relayed(token, path, "vcpu-let-go", drain=True)
        descriptor = consumer.descriptor
        assert descriptor is not None
        closer = threading.Thread(target=consumer.close)
        with peer_holding_the_file_lock(path):
            token.write(4)
            wait_while_the_loop_turns(lambda: waiting(descriptor)[0] == 4, "vcpu-let-go")
            closer.start()
        closer.join()
        stats = consumer.stats()
        assert (stats["posted"], stats["delivered"], stats["waiting_for_peer"]) == (4, 4, 0)
        assert stats["notified"] == 1
        assert retry_timers(path) == []
        mgr.unregister_producer(producer)
        mgr.unregister_consumer(consumer)
    assert not path.exists()


def someone_waits_for_the_lock_of(peer: PostedDescriptor) -> bool:
    """A flock request of this process blocked on the memory (``/proc/locks``)."""
    inode = os.fstat(peer._fd).st_ino
    with open("/proc/locks") as locks:
        return any(
            "-> FLOCK" in line and f" {os.getpid()} " in line and f":{inode} " in line
            for line in locks
        )


def test_a_thread_waiting_for_the_peer_does_not_stop_the_loop_either(tmp_path: Path) -> None:
    """A thread of ours that waits for the peer's lock (a status reader's
    stats(), a vCPU thread's sync) must not hold the descriptor's thread lock
    meanwhile: the loop's relay would wait for that lock, and so for the peer."""
    path = tmp_path / "pi0"
    with irqbypass.Eventfd() as token:
        consumer, producer, mgr = relayed(token, path, "vcpu-beside")
        with consumer:
            descriptor = consumer.descriptor
            assert descriptor is not None
            seen: list[dict[str, int]] = []
            reader = threading.Thread(target=lambda: seen.append(dict(consumer.stats())))
            try:
                with peer_holding_the_file_lock(path) as peer:
                    reader.start()
                    wait_while_the_loop_turns(lambda: someone_waits_for_the_lock_of(peer))
                    token.write(2)
                    wait_while_the_loop_turns(lambda: waiting(descriptor)[0] == 2, "vcpu-beside")
                    assert not seen
            finally:
                reader.join()
            wait_while_the_loop_turns(lambda: waiting(descriptor)[0] == 0, "vcpu-beside")
            assert len(seen) == 1 and seen[0]["posted"] == 2  # made first by whoever locked first
            assert consumer.stats()["posted"] == 2
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)
    assert not path.exists()
