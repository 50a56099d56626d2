"""Shared fixtures: fd-leak checking and a usable-/dev/kvm probe."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator

import pytest


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used, now closed
    return fds


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves an fd open (or a non-daemon thread running)."""
    gc.collect()
    before = open_fds()
    threads_before = set(threading.enumerate())
    yield
    gc.collect()
    after = open_fds()
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert not leaked, f"fds left open: {leaked}"
    alive = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not alive, f"threads left running: {alive}"
