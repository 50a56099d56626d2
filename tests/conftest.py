"""Shared fixtures: fd-leak checking, a token eventfd, a guarded SIGINT and a
usable-/dev/kvm probe; and the hooks that run the tests marked ``guest`` in the
test guests (tests/guest/guest_results.py)."""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator

import irqbypass
import pytest
from guest_results import (
    guest_kernel,
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_generate_tests,
    pytest_runtest_protocol,
    pytest_sessionfinish,
)

__all__ = [
    "guest_kernel",
    "pytest_collection_finish",
    "pytest_collection_modifyitems",
    "pytest_generate_tests",
    "pytest_runtest_protocol",
    "pytest_sessionfinish",
]

# Hypothesis: `make test` (and CI) is deterministic: the same commit tries the same
# examples on every run and machine, and no example database carries one run's
# finds into the next. `make fuzz` explores instead: random seeds, many examples
# (docs/testing.md). A bare `pytest` takes the deterministic profile too.
# The test guests run no property-based test and leave Hypothesis out (inside.sh
# also disables its pytest plugin): importing it costs a minute under TCG.
if not os.environ.get("IRQBYPASS_IN_GUEST"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
def token() -> Iterator[irqbypass.Eventfd]:
    """A fresh eventfd to pair by, closed after the test."""
    with irqbypass.Eventfd() as eventfd:
        yield eventfd


@pytest.fixture
def guarded_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, with irqbypass's guard in front (as a
    Manager installs it): a signal inside a signal-safe section waits for its
    end. Python's handler and the signal mask are restored after."""
    before = signal.getsignal(signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    irqbypass.guard_signals((signal.SIGINT,))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves an fd open (or a thread running). The
    process's event loop (its epoll fd, wakeup eventfd and two threads) lives as
    long as the process: it is started before the count."""
    irqbypass.event_loop().start()
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
