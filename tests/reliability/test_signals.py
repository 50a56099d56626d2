"""Ctrl-C and SIGTERM at every moment: nothing stays locked, nothing is left behind.

Each test sweeps a signal over every bytecode of the code under test
(``interrupts.sweep``); CPython runs the handler at the next point where a real
signal would be handled. After each run the state must be whole: locks free,
files removed, counts consistent, and the object still usable or closed.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import interrupts
import irqbypass_posted._descriptor as descriptor_module
import irqbypass_posted._layout as layout_module
import irqbypass_posted._poster as poster_module
import irqbypass_posted._posting as posting_module
import pytest
from irqbypass_posted import Port, PostedDescriptor
from rel_support import COUNTERS

pytestmark = pytest.mark.usefixtures("no_fd_leak")

#: the descriptor's code: its life, its posting rules, its posters, its layout
DESCRIPTOR = [
    descriptor_module.__file__,
    posting_module.__file__,
    poster_module.__file__,
    layout_module.__file__,
]


def _flock_is_free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also drops the probe's own lock
    return True


#: each operation is swept on its own (a sweep costs the square of its length)
OPERATIONS: dict[str, Callable[[PostedDescriptor, Port, Callable[[], None]], object]] = {
    "poster": lambda d, port, poster: poster(),
    "poster-held": lambda d, port, poster: (d.hold(port), poster(), d.release_port(port)),
    "post": lambda d, port, poster: d.post(3),
    "post_many-urgent": lambda d, port, poster: d.post_many(3, 2, urgent=True),
    "post_port": lambda d, port, poster: d.post_port(port, 2),
    "hold": lambda d, port, poster: d.hold(port),
    "release_port": lambda d, port, poster: d.release_port(port),
    "sync": lambda d, port, poster: d.sync(),
    "acknowledge": lambda d, port, poster: d.acknowledge(),
    "set_sn": lambda d, port, poster: (d.set_sn(True), d.post(4), d.set_sn(False)),
    "set_nv": lambda d, port, poster: d.set_nv(5),
    "set_ndst": lambda d, port, poster: d.set_ndst(9),
    "counters": lambda d, port, poster: d.counters(),
}


@pytest.mark.parametrize("backing", ["anonymous", "file"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_descriptor_locks_survive_an_interrupt_anywhere(
    operation: str, backing: str, tmp_path: Path
) -> None:
    """Issue 13 item 2: `_acquire` took the thread lock and the flock outside any
    `try`, and `hold`/`set_nv`/`set_ndst` had none at all, so a Ctrl-C right after
    an acquire returned left them held: every later `sync()` in another thread, and
    every `post()` from another process, blocked forever. Also checked: ON is never
    set without its notification (a vCPU would sleep through it), and an
    interrupted sync loses no post."""
    runs = 0
    op = OPERATIONS[operation]

    def make() -> tuple[Callable[[], None], Callable[[BaseException | None], None]]:
        nonlocal runs
        runs += 1
        path = str(tmp_path / f"vcpu{runs}.pid") if backing == "file" else None
        d = PostedDescriptor(file=path)
        port = Port(7)
        poster = d.poster(port)
        poster()  # something in PIR, so sync and acknowledge have work
        d.post(200)
        d.sync()
        poster()

        def check(exc: BaseException | None) -> None:
            lock_free = d._lock.acquire(blocking=False)
            d._lock.release()  # (if it leaked, free it: close() must not hang the test)
            try:
                assert lock_free, "the thread lock was left held"
                if path is not None:
                    assert _flock_is_free(path), "the flock was left held"
                counters = d.counters()  # usable: this would block on a leaked lock
                assert d.notification is not None
                assert counters["notified"] == d.notification.read(0), (
                    "ON was set without its notification, or notified twice"
                )
                d.release_port(port)
                d.sync()  # takes whatever an interrupted sync left
                after = d.counters()
                assert after["pending"] == 0 and after["posts_drained"] == after["posted"]
            finally:
                d.close()
            if path is not None:
                assert not os.path.exists(path)

        return lambda: op(d, port, poster), check

    result = interrupts.sweep(make, DESCRIPTOR)
    COUNTERS["signals: descriptor arrival points"] += result.points
    COUNTERS["signals: descriptor landing points"] += result.landing_points
    assert result.interrupted > 0
