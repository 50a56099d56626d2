"""Posted-interrupt descriptor files another user planted, a FIFO, a link, a
stale file of a killed run, and Ctrl-C in the teardown (issue 20); a file that
is not ours at the path (issue 32 item 1); a truncation by whoever may write
it (issue 32 item 13)."""

from __future__ import annotations

import errno
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.plugin
import irqbypass.system
import pytest
from irqbypass_posted import RECORD_SIZE, PostedDescriptor, PostedInterruptConsumer


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
