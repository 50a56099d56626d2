"""A posted-interrupt descriptor used from a fork()ed child (issue 13 item 7)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import irqbypass
import pytest
from fork_support import in_child
from irqbypass_posted import Port, PostedDescriptor

pytestmark = pytest.mark.usefixtures("no_fd_leak")

GUARD_SECONDS = 60.0  # a hang guard, never a speed limit


@pytest.mark.skipif(sys.platform != "linux", reason="fork and flock semantics of Linux")
@pytest.mark.parametrize("backing", ["file", "anonymous"])
def test_descriptor_inherited_by_a_forked_child_refuses_with_a_clear_error(
    backing: str, tmp_path: Path
) -> None:
    """Issue 13 item 7: flock belongs to the open file description, which fork
    shares, so parent and child both 'held' the lock at once and their posts
    raced (lost vectors), although the docs promise none is lost. The child now
    gets a clear error from every use, and its close() leaves the parent's file."""
    path = str(tmp_path / "vcpu0.pid") if backing == "file" else None
    with PostedDescriptor(file=path) as d:
        poster = d.poster(Port(9))
        poster()

        def child() -> int:
            for use in (poster, lambda: d.post(9), d.sync, d.counters, lambda: d.hold(Port(1))):
                try:
                    use()
                except irqbypass.DeviceError as exc:
                    if "fork()ed child" not in str(exc) or "attach" not in str(exc):
                        return 3
                else:
                    return 2  # used without a word
            d.close()
            return 0

        assert in_child(child) == 0
        if path is not None:
            assert os.path.exists(path), "the child's close removed the parent's file"
        assert d.counters()["posted"] == 1  # the parent's descriptor is untouched and usable
        poster()
        assert d.counters()["posted"] == 2


@pytest.mark.skipif(sys.platform != "linux", reason="fork and flock semantics of Linux")
def test_forked_child_that_attaches_posts_without_losing_a_vector(tmp_path: Path) -> None:
    """What the error tells the child to do works: attach() opens its own file
    description, so the flock excludes, and parent and child posting at once
    lose nothing."""
    path = str(tmp_path / "vcpu0.pid")
    posts = 20_000
    with PostedDescriptor(file=path) as d:
        poster = d.poster(Port(9))

        def child() -> int:
            d.close()
            with PostedDescriptor.attach(path) as mine:
                post = mine.poster(Port(9))
                for _ in range(posts):
                    post()
            return 0

        pid_status: list[int] = []
        waiter = threading.Thread(target=lambda: pid_status.append(in_child(child)))
        waiter.start()
        for _ in range(posts):
            poster()
        waiter.join(GUARD_SECONDS * 4)
        assert pid_status == [0]
        assert d.counters()["posted"] == 2 * posts
        d.sync()
        assert d.drained_per_vector() == {9: 2 * posts}


#: the calls an Eventfd's read takes the counter with (preadv: RWF_NOWAIT)
READS = ("read", "preadv")


def test_a_forked_child_can_use_and_close_a_token_another_thread_was_reading() -> None:
    """fork() while another thread was inside a token's read (the loop's
    readers take the count under the Eventfd's guard): in the child that
    thread does not exist, but its hold on the guard was copied, so the
    child's write and close of the token waited for ever. Now the child gets
    every Eventfd's guard free (and the calls in flight over)."""
    token = irqbypass.Eventfd()
    token.write(1)
    inside, leave = threading.Event(), threading.Event()

    def pause_in_the_read(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") in READS and not inside.is_set():
            inside.set()  # inside read(0), the guard held
            leave.wait(GUARD_SECONDS)

    def reader() -> None:
        sys.setprofile(pause_in_the_read)
        try:
            token.read(0)
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        assert inside.wait(GUARD_SECONDS), "the reader is inside its read"

        def child() -> int:
            token.write(2)
            token.close()
            return 0 if token.closed else 3

        assert in_child(child) == 0, "the child hung (-1) or failed"
    finally:
        leave.set()
        thread.join(GUARD_SECONDS)
        token.close()
