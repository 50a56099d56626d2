"""Running a test's body in a fork()ed child, with a hang guard."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

GUARD_SECONDS = 60.0  # a hang guard, never a speed limit


def in_child(body: Callable[[], int]) -> int:
    """Run ``body`` in a fork()ed child; its return value is the exit status.
    A child still running after the hang guard is killed: -1."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 99
        try:
            status = body()
        finally:
            os._exit(status)
    deadline = time.monotonic() + GUARD_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1
