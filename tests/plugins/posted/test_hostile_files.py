"""Posted-interrupt descriptor files another user planted, a FIFO, a link, a
stale file of a killed run, and Ctrl-C in the teardown (issue 20)."""

from __future__ import annotations

import errno
import logging
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import irqbypass
import pytest
from irqbypass_posted import MAPPING_SIZE, PostedDescriptor, PostedInterruptConsumer


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
    with pytest.raises(irqbypass.UnsafePathError, match=f"owned by uid {uid}") as caught:
        PostedDescriptor.attach(str(path))
    assert caught.value.errno == errno.EACCES
    # nor is it reclaimed as stale: the creator is refused with the reason
    with pytest.raises(irqbypass.UnsafePathError, match=f"owned by uid {uid}"):
        PostedDescriptor(file=str(path))


def test_a_world_writable_descriptor_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    planted(path, mode=0o666)
    with pytest.raises(irqbypass.UnsafePathError, match="writable by group or others"):
        PostedDescriptor.attach(str(path))


def test_a_fifo_does_not_hang_attach(tmp_path: Path) -> None:
    path = tmp_path / "pi0"
    os.mkfifo(path, 0o600)
    with pytest.raises(irqbypass.UnsafePathError, match="not a regular file"):
        PostedDescriptor.attach(str(path))


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    with PostedDescriptor(file=str(tmp_path / "real")):
        (tmp_path / "pi0").symlink_to(tmp_path / "real")
        with pytest.raises(irqbypass.UnsafePathError, match="symbolic link"):
            PostedDescriptor.attach(str(tmp_path / "pi0"))


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(irqbypass.UnsafePathError, match="writable by others"):
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
        assert path.stat().st_size == MAPPING_SIZE
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
    # a creator gone but an attacher still there: still in use
    holder = PostedDescriptor(file=str(path))
    attached = PostedDescriptor.attach(str(path))
    holder._unlink = False  # the creator "dies" without removing it
    holder.close()
    try:
        with pytest.raises(irqbypass.DeviceError, match="in use"):
            PostedDescriptor(file=str(path))
    finally:
        attached.close()
    with PostedDescriptor(file=str(path)):  # now nobody holds it: reclaimed
        pass
    assert not path.exists()


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

        def cancel_then_interrupt(handle: irqbypass.LoopHandle) -> None:
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
